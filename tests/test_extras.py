"""Optional parts: an import of a missing extra is one typed error naming the pip command, from
the helper and from a real command (``lhama batch --ray`` with Ray unimportable)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lhama.errors import LhamaError, MissingExtraError
from lhama.extras import require


def test_require_returns_the_module():
    import json

    assert require("json", "none") is json


def test_a_missing_module_names_the_extra_to_install():
    with pytest.raises(MissingExtraError) as e:
        require("lhama_no_such_module.sub", "ray")
    assert isinstance(e.value, LhamaError) and isinstance(e.value, ImportError)
    assert str(e.value) == (
        "this needs lhama's 'ray' extra (lhama_no_such_module.sub is not installed): pip install 'lhama[ray]'"
    )
    assert (e.value.module, e.value.extra, e.value.http_status) == ("lhama_no_such_module.sub", "ray", 501)


def test_a_missing_dependency_of_the_package_is_named(monkeypatch, tmp_path):
    (tmp_path / "lhama_fake_pkg.py").write_text("import lhama_fake_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError) as e:
        require("lhama_fake_pkg", "pg")
    assert str(e.value) == (
        "this needs lhama's 'pg' extra (lhama_fake_pkg cannot import lhama_fake_dep): pip install 'lhama[pg]'"
    )


def test_run_batch_ray_without_ray_says_which_extra(monkeypatch, tmp_path):
    from lhama.parallel.ray_batch import ModelSpec, run_batch_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "in.jsonl").write_text("")
    with pytest.raises(MissingExtraError, match=r"pip install 'lhama\[ray\]'"):
        run_batch_ray(ModelSpec(model="tiny-llama3"), tmp_path / "in.jsonl", tmp_path / "out.jsonl")


def test_lhama_batch_ray_without_ray_is_one_line(tmp_path):
    (tmp_path / "in.jsonl").write_text(
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"messages": [{"role": "user", "content": "hi"}]}}\n'
    )
    code = "import sys; sys.modules['ray'] = None\nfrom lhama.cli import main\nsys.exit(main(sys.argv[1:]))"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "batch",
            str(tmp_path / "in.jsonl"),
            str(tmp_path / "out.jsonl"),
            "--ray",
            "--model",
            "tiny-llama3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: this needs lhama's 'ray' extra (ray is not installed): pip install 'lhama[ray]'"
    ]


def test_import_lhama_and_the_helper_load_no_torch():
    code = "import sys, lhama, lhama.extras; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "[]"
