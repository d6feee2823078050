"""`lhama rag` as a user runs it: real subprocesses on a store in a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.rag.conftest import write_pdf


def lhama(*args, store, check=True):
    env = dict(os.environ, LHAMA_RAG_STORE=str(store))
    p = subprocess.run(
        [sys.executable, "-m", "lhama.cli", "rag", *args], capture_output=True, text=True, env=env, timeout=300
    )
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_rag_cli_add_search_list_remove_drop(tmp_path, capsys):
    store = tmp_path / "kb" / "rag.db"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "llamas.md").write_text(
        "# Llamas\n\n## Diet\n\nA llama eats grass and hay.\n\n## Range\n\nLlamas live in the Andes mountains.\n"
    )
    write_pdf(docs / "fish.pdf", ["The zebrafish regenerates its heart."])
    (docs / "broken.pdf").write_bytes(b"%PDF-1.5 broken")
    p = lhama("add", str(docs), "--json", store=store)
    rep = json.loads(p.stdout)
    assert sorted(rep["added"]) == ["fish.pdf", "llamas.md"]
    assert rep["failed"][0]["file"] == "broken.pdf" and "PDF" in rep["failed"][0]["error"]

    hits = json.loads(lhama("search", "where do llamas live", "-k", "3", "--json", store=store).stdout)
    assert hits[0]["location"] == "llamas.md § Llamas > Range"
    assert "fish.pdf, page 1" in [h["location"] for h in hits]

    # the rest needs no embedder: run in-process (the same main() the console script runs)
    from lhama.cli import main

    def run(*args):
        capsys.readouterr()
        code = main(["rag", *args, "--store", str(store)])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = run("list", "--json")
    info = json.loads(out)
    assert info["embedder"] == "minilm" and {f["name"] for f in info["files"]} == {"fish.pdf", "llamas.md"}
    assert "removed" in run("remove", str(docs / "fish.pdf"))[1]
    code, _, err = run("remove", str(docs / "fish.pdf"))
    assert code == 1 and "not in the store" in err
    assert run("drop", "--yes")[0] == 0
    assert not store.exists()
    code, _, err = run("list")
    assert code == 2 and "no store at" in err


@pytest.mark.slow
def test_rag_ask_cli_with_smollm2(tmp_path):
    """`lhama rag ask` end to end in a subprocess with the real default model."""
    store = tmp_path / "rag.db"
    doc = tmp_path / "llamas.md"
    doc.write_text("# Llamas\n\n## Diet\n\nA llama eats grass and hay.\n")
    lhama("add", str(doc), store=store)
    out = json.loads(
        lhama("ask", "What does a llama eat?", "-k", "1", "--max-tokens", "24", "--json", store=store).stdout
    )
    assert out["sources"][0]["location"] == "llamas.md § Llamas > Diet" and out["answer"].strip()
    assert set(out["cited"]) <= {1}
