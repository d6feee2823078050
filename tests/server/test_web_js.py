"""The web chat's logic modules (SSE parsing, conversation storage, settings, request building)
under node's built-in test runner, so `make test` runs them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests import needs

WEB = Path(__file__).resolve().parents[2] / "web"


def test_web_chat_js_unit_tests():
    node = needs.binary("node", "nodejs")
    proc = subprocess.run([node, "--test", "tests/"], check=False, cwd=WEB, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fail 0" in proc.stdout and "# pass " in proc.stdout
