"""The HTTP API (Starlette): handlers parse, call the application, render; nothing else."""
