"""An import inside a function says why it is there.

Imports belong at the top of a module, where a reader sees what the module depends on. One
inside a function stays only where it keeps torch (or another heavy or optional package) out of
a module that must import without it: the device runtime, the config modules, `entropi --help`,
an optional extra such as the exporters, TFLite Micro or the emulator. Each carries its reason
on the line above, ``# lazy: <reason>``; this test fails on one without it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_layers import _tree  # writes a small tree of module files

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("common", "device", "export", "host", "benchmarks")


def unexplained(root: Path) -> dict[str, list[str]]:
    """``path -> ["path:line module", ...]`` of the function-level imports without a
    ``# lazy:`` comment on the line above (or on the import's own line)."""
    found: dict[str, list[str]] = {}
    for layer in LIBRARY:
        folder = root / layer
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            if path.name.startswith("test_") or path.name == "conftest.py":
                continue
            text = path.read_text()
            lines = text.splitlines()
            for fn in ast.walk(ast.parse(text, str(path))):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(fn):
                    if not isinstance(node, ast.Import | ast.ImportFrom):
                        continue
                    own, above = lines[node.lineno - 1], lines[node.lineno - 2]
                    if "# lazy:" in own or above.strip().startswith("# lazy:"):
                        continue
                    rel = path.relative_to(root).as_posix()
                    what = (
                        node.names[0].name
                        if isinstance(node, ast.Import)
                        else "." * node.level + (node.module or "")
                    )
                    found.setdefault(rel, []).append(f"{rel}:{node.lineno} {what}")
    return found


def test_every_lazy_import_says_why():
    found = unexplained(REPO)
    bad = [line for lines in found.values() for line in lines]
    assert not bad, "imports inside functions without a `# lazy: reason` line:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("def f():\n    import json\n", ["device/a.py:2 json"]),
        ("def f():\n    x = 1\n    from .b import y\n", ["device/a.py:3 .b"]),
        ("def f():\n    # lazy: keeps torch out\n    import torch\n", []),
        ("def f():\n    import onnx  # lazy: optional extra\n", []),
        ("import json\n\n\ndef f():\n    return json\n", []),
    ],
)
def test_checker(tmp_path, text, expected):
    root = _tree(tmp_path, {"device/a.py": text, "tests/test_x.py": "def t():\n    import os\n"})
    assert [line for lines in unexplained(root).values() for line in lines] == expected
