"""The console: a support agent's and an auditor's pages, server-rendered (Starlette + Jinja2),
mounted at /console. Signed in with an audit or admin REST key; it reads only that key's app."""
