"""No import loops between the package's modules, whether the import sits at the top of a module
or inside a function (an import inside a function hides a loop from a reader but not from this
test); ``if TYPE_CHECKING:`` imports are annotations only and do not count.

The graph has one node per module of ``entropi.*`` (the top-level folders); ``from pkg import
name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``. A package's
``__init__`` is its own node, and importing ``a.b.c`` does not count as importing ``a`` or
``a.b`` (Python runs those ``__init__`` files, but a lazy ``__init__`` that imports nothing
cannot close a loop). The checker is tested on trees with a deliberate loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_layers import _tree  # writes a small tree of module files

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "device", "export", "host", "benchmarks")


def _modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under the package folders of ``root``."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else ():
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(["entropi", *parts])] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under an ``if TYPE_CHECKING:`` block."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for sub in node.body:
                    skip.update(id(n) for n in ast.walk(sub))
    return skip


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in the module, TYPE_CHECKING aside)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for t in targets:
                if t in modules and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~200)
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_module_imports_itself_through_others():
    loops = cycles(import_graph(REPO))
    assert not loops, "import loops:\n" + "\n".join(" <-> ".join(c) for c in loops)


@pytest.mark.parametrize(
    "files, loop",
    [
        (  # a loop hidden inside a function
            {
                "host/a.py": "from .b import x\n",
                "host/b.py": "def f():\n    from .a import y\n",
            },
            ["entropi.host.a", "entropi.host.b"],
        ),
        (  # three modules, absolute and relative, across sub-packages
            {
                "host/run/a.py": "from ..ladder import b\n",
                "host/ladder/b.py": "import entropi.host.selection.c\n",
                "host/selection/c.py": "from entropi.host.run.a import z\n",
            },
            ["entropi.host.ladder.b", "entropi.host.run.a", "entropi.host.selection.c"],
        ),
    ],
)
def test_checker_finds_a_deliberate_loop(tmp_path, files, loop):
    assert cycles(import_graph(_tree(tmp_path, files))) == [loop]


def test_checker_ignores_type_checking_imports_and_one_way_imports(tmp_path):
    root = _tree(
        tmp_path,
        {
            "host/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from .b import B\n",
            "host/b.py": "from .a import x\nimport numpy\n",
            "host/c.py": "from . import a, b\n",
        },
    )
    graph = import_graph(root)
    assert graph["entropi.host.c"] == {"entropi.host.a", "entropi.host.b"}
    assert cycles(graph) == []
