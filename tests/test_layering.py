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
                edges += [Edge(importer, a.name, (), path, node.lineno) for a in node.names if a.name.startswith("lhama")]
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
    bad = [str(e) for e in import_edges()
           if in_package(e.imported, "lhama.server") and not in_package(e.importer, "lhama.server")
           and not any(in_package(e.importer, p) for p in SERVER_IMPORTERS_ALLOWED)]
    assert not bad, "server/ is a leaf (DESIGN.md); these modules import it:\n" + "\n".join(bad)
