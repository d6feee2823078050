"""``load_model("default")`` imports only what the default path uses: PyYAML (which the gguf
package's init imports), jinja2 (chat templates), tiktoken and SentencePiece's protobuf wait
until something needs them, and then work as usual."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import json, sys
from lhama.loader import load_model
lm = load_model("default")
real = lambda name: name in sys.modules and "__getattr__" not in vars(sys.modules[name])
before = {m: real(m) for m in ("yaml", "jinja2", "tiktoken", "sentencepiece.sentencepiece_model_pb2")}
ids = lm.chat_format.encode_dialog([{"role": "user", "content": "Hi"}])  # compiles the template
import yaml
after = {"yaml": yaml.safe_load("a: [1, 2]"), "yaml_real": real("yaml"), "jinja2": real("jinja2"), "ids": len(ids)}
print(json.dumps({"before": before, "after": after}))
"""


def test_the_default_load_defers_what_it_does_not_use():
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["before"] == {m: False for m in out["before"]}
    assert out["after"] == {"yaml": {"a": [1, 2]}, "yaml_real": True, "jinja2": True, "ids": out["after"]["ids"]}
    assert out["after"]["ids"] > 3
