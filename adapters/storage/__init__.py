"""Storage: the event log on SQLite or PostgreSQL, and how the engine writes and reads it."""
