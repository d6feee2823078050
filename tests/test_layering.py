"""The import layering of src/lhama (DESIGN.md): ``server/`` is a leaf that nothing else imports.

Every import is read with ``ast`` - module level and inside functions alike, since a
function-local import is still a dependency - and resolved to a dotted ``lhama...`` module.
``import_edges()`` is the one walk; each rule is a small test over its edges.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
# The command table is the program's entry point: ``lhama serve`` has to start the server.
SERVER_IMPORTERS_ALLOWED = ("lhama.cli",)


@dataclass(frozen=True)
class Edge:
    importer: str  # dotted module that imports
    imported: str  # dotted module it imports (``from a import b`` gives ``a.b`` when b is a module)
    names: tuple[str, ...]  # names taken with ``from ... import``
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if not level:
        return module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_edges(src: Path = SRC) -> list[Edge]:
    """Every import of an ``lhama`` module in every file of ``src/lhama``."""
    files = sorted((src / "lhama").rglob("*.py"))
    modules = {module_name(p, src) for p in files}
    edges = []
    for path in files:
        importer = module_name(path, src)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges += [
                    Edge(importer, a.name, (), path, node.lineno) for a in node.names if a.name.startswith("lhama")
                ]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(importer, path.name == "__init__.py", node.level, node.module)
                if not target.startswith("lhama"):
                    continue
                names = tuple(a.name for a in node.names)
                submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                edges += [Edge(importer, m, (m.rsplit(".", 1)[1],), path, node.lineno) for m in submodules]
                rest = tuple(n for n in names if f"{target}.{n}" not in modules)
                if rest or not submodules:
                    edges.append(Edge(importer, target, rest, path, node.lineno))
    return edges


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_walk_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "lhama" / "a"
    pkg.mkdir(parents=True)
    (tmp_path / "lhama" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from lhama.server.app import create_app\n")
    edges = {(e.importer, e.imported) for e in import_edges(tmp_path)}
    assert ("lhama.a", "lhama.a.b") in edges and ("lhama.a.b", "lhama.server.app") in edges


def test_nothing_outside_server_imports_server():
    bad = [
        str(e)
        for e in import_edges()
        if in_package(e.imported, "lhama.server")
        and not in_package(e.importer, "lhama.server")
        and not any(in_package(e.importer, p) for p in SERVER_IMPORTERS_ALLOWED)
    ]
    assert not bad, "server/ is a leaf (DESIGN.md); these modules import it:\n" + "\n".join(bad)


def _owner(module: str, modules: set[str]) -> str:
    """The module itself when it is a file of the tree, else the closest package that is."""
    while module and module not in modules:
        module = module.rpartition(".")[0]
    return module


def _graph() -> dict[str, set[str]]:
    edges = import_edges()
    modules = {e.importer for e in edges} | {module_name(p, SRC) for p in (SRC / "lhama").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        target = _owner(e.imported, modules)
        if target and target != e.importer:
            graph[e.importer].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = strongly_connected(_graph())
    assert not cycles, "import cycles (function-local imports count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _top_package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_private_names_across_packages():
    bad = [
        f"{e} (takes {n})"
        for e in import_edges()
        for n in e.names
        if n.startswith("_") and not n.startswith("__") and _top_package(e.importer) != _top_package(e.imported)
    ]
    assert not bad, "private names imported from another package:\n" + "\n".join(bad)


# Lower floors never import higher ones (DESIGN.md's data flow).
FORBIDDEN = [
    (
        ("lhama.model", "lhama.checkpoints", "lhama.loader", "lhama.engine", "lhama.generate", "lhama.quant"),
        "lhama.train",
    ),
    (("lhama.model", "lhama.quant", "lhama.tokenizer"), "lhama.engine"),
    (("lhama.engine", "lhama.generate", "lhama.model"), "lhama.openai"),
    (
        tuple(
            f"lhama.{p}"
            for p in (
                "model",
                "checkpoints",
                "tokenizer",
                "generate",
                "quant",
                "engine",
                "openai",
                "tools",
                "safety",
                "rag",
                "train",
                "eval",
                "parallel",
            )
        ),
        "lhama.cli",
    ),
]


def test_lower_floors_never_import_higher_ones():
    bad = [
        f"{e}"
        for e in import_edges()
        for lows, high in FORBIDDEN
        if any(in_package(e.importer, low) for low in lows) and in_package(e.imported, high)
    ]
    assert not bad, "\n".join(bad)
