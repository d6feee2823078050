"""Optional parts of lhama: importing one that is missing says which extra to install.

``pip install lhama`` installs what serving and chat need; the rest are extras declared in
pyproject.toml (ray, eval, train, pg, bench, safety, test). Every import of an optional package
goes through :func:`require`, so a command that needs a missing one fails with one line that
names the ``pip install 'lhama[EXTRA]'`` to run instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lhama.errors import MissingExtraError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (a dotted name) or raise :class:`MissingExtraError` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None) or module
        top = module.split(".")[0]
        # A dependency of the package may be the missing piece: say which, the fix is the same.
        reason = None if missing.split(".")[0] == top else f"{module} cannot import {missing}"
        raise MissingExtraError(module, extra, reason) from e
