"""Process plumbing: logs, runtime settings, and the read models' own process."""
