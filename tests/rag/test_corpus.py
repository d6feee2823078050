"""The RAG evaluation corpus is a copy of lhama's docs: the modules, names and scripts it
mentions must exist, or retrieval is scored on answers that would mislead a user."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from tests.rag.conftest import CORPUS

ROOT = Path(__file__).resolve().parents[2]


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_the_corpus_names_only_modules_names_and_scripts_that_exist():
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.md")))
    names = set(re.findall(r"\blhama(?:\.[A-Za-z_][A-Za-z_0-9]*)+", text))
    assert len(names) > 10
    assert not sorted(n for n in names if not _resolves(n))
    scripts = set(re.findall(r"\b((?:bench|src|tests)/[\w/.-]+\.py)\b", text))
    assert not sorted(s for s in scripts if not (ROOT / s).is_file())
