"""What the tests need that `make test` installs (Python extras, Debian packages). A missing piece
fails the test with the command that installs it: a suite that skips what it cannot run passes
without testing it. Only tests that need a CUDA GPU skip."""

from __future__ import annotations

import importlib
import shutil
from types import ModuleType

import pytest

PIP = "pip install -e '.[test]'"


def module(name: str) -> ModuleType:
    """Import ``name`` (a test extra) or fail with the command that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.fail(f"{name} is missing ({e}): {PIP}, or run make test", pytrace=False)


def binary(command: str, package: str) -> str:
    """The path of ``command`` (from Debian's ``package``) or fail with the command that installs it."""
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} is missing: apt-get install -y {package}, or run make test", pytrace=False)
    return path
