"""The agent-vault benchmark harness; entry point: bench/run.py."""
