"""Fixtures shared by every test package: the exported tiny-llava artifacts (tests/export/fixtures.py)."""

pytest_plugins = ("tests.export.fixtures",)
