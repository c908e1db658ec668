"""Test helpers shared by the unit and end-to-end suites (import as `helpers.*`; `tests/` is on sys.path)."""
