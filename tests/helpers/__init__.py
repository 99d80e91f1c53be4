"""Shared helpers of the test suite (importable as `helpers` from test modules)."""
