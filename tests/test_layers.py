"""The layers import one way: common <- device (numpy only) <- export <- host <- benchmarks <-
scripts.

An AST walk over every module of the package (no import-linter: the package is a namespace
mapped from top-level folders, which import-linter's module discovery does not follow). Three
rules:

1. a layer imports only layers at or below it;
2. no module imports another layer's private module or name (a path part starting with ``_``);
3. nothing imports a CLI module (``entropi.<layer>.cli``): CLIs only parse, call and print.

The checker is tested on a deliberately violating tree, so a test that cannot fail is ruled out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("common", "device", "export", "host", "benchmarks", "scripts")
"""Lowest first; the folder name is the layer (``entropi.<folder>``; scripts are not a package)."""


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """Absolute dotted name of a ``from ... import`` in ``module`` (a dotted module path)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")[: -node.level] if node.level else []
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(module: str, tree: ast.AST):
    """``(lineno, dotted name)`` of every import, names of ``from x import y`` as ``x.y``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


def layer_violations(root: Path) -> list[str]:
    """Every rule violation under ``root`` (a tree with the layer folders), as readable lines."""
    problems = []
    for rank, layer in enumerate(LAYERS):
        folder = root / layer
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            module = ".".join(["entropi", layer, *parts])
            if path.name == "__init__.py":
                module += ".__init__"  # relative imports resolve against the package itself
            tree = ast.parse(path.read_text(), str(path))
            for line, name in _imports(module, tree):
                where = f"{path.relative_to(root)}:{line} imports {name}"
                bits = name.split(".")
                if bits[0] != "entropi" or len(bits) < 2:
                    continue
                other = bits[1]
                if other not in LAYERS:
                    continue
                if LAYERS.index(other) > rank:
                    problems.append(f"{where}: {layer} may not import the {other} layer above it")
                if other != layer and any(b.startswith("_") for b in bits[2:]):
                    problems.append(f"{where}: private to the {other} layer")
                if (
                    len(bits) > 2
                    and bits[2] == "cli"
                    and not module.startswith(f"entropi.{other}.cli")
                ):
                    problems.append(f"{where}: a CLI module; import the library it calls")
    return problems


def test_the_package_imports_one_way():
    problems = layer_violations(REPO)
    assert not problems, "\n".join(problems)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "rel, text, message",
    [
        ("device/a.py", "from entropi.host import models\n", "may not import the host layer"),
        (
            "export/b.py",
            "from entropi.host.ladder.models import build\n",
            "may not import the host",
        ),
        ("device/c.py", "import entropi.export.rung\n", "may not import the export layer"),
        (
            "common/x.py",
            "from entropi.device.errors import DeviceError\n",
            "may not import the dev",
        ),
        ("export/d.py", "from entropi.device._blas import gemm\n", "private to the device"),
        ("host/e.py", "from entropi.common.files import _umask\n", "private to the common"),
        ("host/f.py", "from entropi.device.cli import train\n", "a CLI module"),
        ("host/sub/g.py", "from ...export import _errors\n", "private to the export layer"),
        ("benchmarks/h.py", "from entropi.device import cli\n", "a CLI module"),
    ],
)
def test_checker_catches_a_deliberate_violation(tmp_path, rel, text, message):
    root = _tree(tmp_path, {rel: text})
    problems = layer_violations(root)
    assert len(problems) == 1 and message in problems[0], problems


def test_checker_allows_what_the_rules_allow(tmp_path):
    root = _tree(
        tmp_path,
        {
            "device/a.py": "from . import _npz\nfrom ._blas import gemm\nimport numpy\n",
            "device/__init__.py": "from .a import x\n",
            "export/b.py": "from entropi.common.files import atomic_write\nfrom ._errors import E",
            "host/c.py": "from entropi.export import rung\nfrom .data import _base\n",
            "host/cli.py": "from .cli import main\n",
            "benchmarks/d.py": "from entropi.host.ladder.models import build\n",
            "scripts/e.py": "from entropi.benchmarks import flops\n",
        },
    )
    assert layer_violations(root) == []
