"""Launch tests (a package so `test_cli.py` does not collide with tests/artifacts/test_cli.py)."""
