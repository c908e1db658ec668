"""Persistence: the engine factory (SQLite or PostgreSQL), frozen numbered migrations, the writer lock."""

from agent_vault.store.engine import Store, make_engine

__all__ = ["Store", "make_engine"]
