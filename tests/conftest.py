"""Fixtures shared by every test package: the exported tiny-llava artifacts (tests/export/fixtures.py).

`make test` runs two passes: every test not marked `real_width` on two pytest-xdist workers, one
module per worker at a time (`--dist loadfile`: a module's module-scoped exports happen once; the
workers share the session's tiny-llava artifacts through a file lock), then the `real_width` tests
alone: each exports a model at real width (~10 GB) that must not meet another test's memory.
"""

pytest_plugins = ("tests.export.fixtures",)
