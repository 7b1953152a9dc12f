"""The pure domain: aggregates, facts, the catalogue and the entitlement rules. No I/O here."""
