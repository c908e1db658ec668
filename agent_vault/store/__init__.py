"""Persistence: the SQLite engine factory, frozen numbered migrations and the single-writer lock."""

from agent_vault.store.engine import Store, make_engine

__all__ = ["Store", "make_engine"]
