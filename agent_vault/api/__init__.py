"""The control API (FastAPI): routers per noun translate HTTP to domain calls."""
