"""The server tests' helpers live in tests/serving.py (one helper for every package; the shared
session ``server`` and ``client`` fixtures are in tests/conftest.py). Re-exported here for the
modules that import them from this file."""

from __future__ import annotations

from tests.serving import MODEL, READY, ServerProcess, wait_for

__all__ = ["MODEL", "READY", "ServerProcess", "wait_for"]
