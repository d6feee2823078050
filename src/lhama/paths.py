"""Where lhama keeps state on disk, named once so the server, its Ray replicas and the CLI agree."""

from __future__ import annotations

from pathlib import Path


def server_data_dir() -> Path:
    """The server's files, batches and vector stores (``lhama serve --data-dir`` overrides it)."""
    return Path.home() / ".local" / "share" / "lhama" / "server"
