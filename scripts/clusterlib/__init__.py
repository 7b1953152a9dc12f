"""`scripts/cluster`: several engine hosts, one PostgreSQL and HAProxy in network namespaces."""
