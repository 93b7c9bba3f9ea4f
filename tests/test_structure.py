"""The package's import structure: no import circles inside ``diffattn/`` and no module importing upward.

Read from the source with ``ast`` (nothing is imported): every ``import`` counts, at module level or inside a
function, except those under ``if TYPE_CHECKING:`` (never run) and under ``if __name__ == "__main__":`` (a
script's entry, not a dependency of the module). Importing ``a.b.c`` runs the ``__init__`` of ``a.b`` too, so those
edges count, except for packages that already hold the importing module (Python has them loaded by then).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffattn"

#: the layers, lowest first: a module may import its own layer and those below, never one above
LAYERS: dict[str, int] = {
    "layout": 0,
    "kernels": 1,
    "tiny": 1,  # random-weight test pipelines: diffusers only
    "methods": 2,
    "models": 2,
    "sim": 3,
    "functional": 3,
    "patch": 4,
    "distributed": 5,
    "pipelines": 6,
    "report": 7,
    "calibration": 7,  # per-module/step plans: may import report/, patch/, methods/, sim
    "testing": 7,
    "cli": 8,
    "demo": 8,
    "__init__": 9,  # the public API
    "tiny_quality": 9,  # a re-export kept at a documented path
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _skipped(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` / ``typing.TYPE_CHECKING`` and ``__name__ == "__main__"`` guards."""
    if isinstance(test, ast.Name | ast.Attribute):
        return (test.id if isinstance(test, ast.Name) else test.attr) == "TYPE_CHECKING"
    if isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__":
        return any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    return False


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _skipped(child.test):
            yield from (n for stmt in child.orelse for n in _imports_in(stmt))
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _imports(child)


def _imports_in(stmt: ast.stmt) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        yield stmt
    yield from _imports(stmt)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (including the ``__init__`` of packages it enters)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = ".".join(filter(None, [base if node.level else "", node.module or ""]))
                # ``from pkg import sub`` imports the submodule; ``from pkg import name`` takes pkg's name
                candidates = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else mod for a in node.names]
            for c in candidates:
                while c and c not in files:  # a name inside a module: the module
                    c = c.rpartition(".")[0]
                if c and c.split(".")[0] == root.name:
                    targets.add(c)
        # entering a package runs its __init__ (unless it already holds the importing module)
        for t in list(targets):
            parts = t.split(".")
            for i in range(1, len(parts)):
                ancestor = ".".join(parts[:i])
                if ancestor in files and not name.startswith(ancestor + ".") and ancestor != name:
                    targets.add(ancestor)
        targets.discard(name)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward(graph: dict[str, set[str]], layers: dict[str, int] = LAYERS) -> list[str]:
    """``"a -> b"`` for every import of a module on a higher layer."""
    return sorted(
        f"{m} ({layer(m)}) -> {t} ({layer(t)})"
        for m, targets in graph.items()
        for t in targets
        if layers[layer(t)] > layers[layer(m)]
    )


GRAPH = import_graph()


def test_every_top_level_module_has_a_layer():
    assert {layer(m) for m in GRAPH} - {"weights"} <= set(LAYERS), sorted({layer(m) for m in GRAPH} - set(LAYERS))


def test_no_import_circles():
    assert circles(GRAPH) == []


def test_no_module_imports_upward():
    assert upward(GRAPH) == []


SAME_LAYER = {"__init__": 9, "a": 0, "b": 0, "sub": 0}


@pytest.mark.parametrize(
    "files, layers, expected_circles, expected_upward",
    [
        ({"a.py": "from . import b", "b.py": "from .a import x"}, SAME_LAYER, [["pkg.a", "pkg.b"]], []),
        ({"a.py": "def f():\n    from .b import y", "b.py": "import pkg.a"}, SAME_LAYER, [["pkg.a", "pkg.b"]], []),
        ({"a.py": "import typing\nif typing.TYPE_CHECKING:\n    from .b import y", "b.py": "from .a import x"},
         SAME_LAYER, [], []),  # fmt: skip
        ({"a.py": "if __name__ == '__main__':\n    from .b import y", "b.py": "from .a import x"}, SAME_LAYER, [], []),
        ({"sub/__init__.py": "from .c import z", "sub/c.py": "from ..a import x", "a.py": "from .sub.c import z"},
         SAME_LAYER, [["pkg.a", "pkg.sub", "pkg.sub.c"]], []),  # fmt: skip
        ({"sub/__init__.py": "from . import c", "sub/c.py": "from . import d", "sub/d.py": "x = 1"},
         SAME_LAYER, [], []),  # fmt: skip
        ({"a.py": "from .b import y", "b.py": "x = 1"}, {**SAME_LAYER, "b": 1}, [], ["pkg.a (a) -> pkg.b (b)"]),
    ],
    ids=["direct", "in-function", "type-checking-only", "main-guard", "through-a-package-init", "siblings-in-a-package",
         "upward"],  # fmt: skip
)
def test_the_checks_catch_what_they_look_for(tmp_path, files, layers, expected_circles, expected_upward):
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    graph = import_graph(root)
    assert circles(graph) == expected_circles
    assert upward(graph, layers) == expected_upward
