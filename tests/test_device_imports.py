"""Every module of entropi.device imports with numpy alone (torch, onnx, converters blocked)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("torch", "onnx", "litert_torch", "tensorflow", "torchvision")

SCRIPT = textwrap.dedent(
    f"""
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = {BLOCKED!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    import entropi.device as dev
    names = [m.name for m in pkgutil.walk_packages(dev.__path__, "entropi.device.")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print(len(names))
    """
)


def test_device_imports_without_torch_onnx_or_converters():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 10  # every module was imported


def test_blocker_really_blocks():
    script = SCRIPT.replace("import entropi.device as dev", "import torch")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode != 0 and "blocked import of torch" in out.stderr
