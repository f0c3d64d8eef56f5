"""What a result records about where it came from: entropi's version, the machine, the libraries.

One place for every layer (the device runtime, the exporter, the run folder, the benchmarks and
the scripts). Imports nothing beyond the standard library; torch and numpy are reported only when
the caller has already imported them, so the device runtime never pays for torch here.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["cpu_model", "hardware", "library_versions", "package_version", "provenance", "versions"]


def package_version() -> str:
    """The installed entropi version, or ``"0+unknown"`` when running from an uninstalled tree."""
    try:
        return importlib.metadata.version("entropi")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def versions(dists: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def hardware() -> dict[str, Any]:
    """CPU model and core count; torch's thread count and the GPU when torch is loaded."""
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    return out


def library_versions() -> dict[str, str | None]:
    """python, entropi, and torch / numpy when loaded."""
    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "entropi": versions(["entropi"])["entropi"],
    }
    for name in ("torch", "numpy"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = mod.__version__
    return out


def provenance(command: list[str] | None = None) -> dict[str, Any]:
    """The command line, the hardware and the library versions, as a result file records them."""
    return {
        "command": list(sys.argv if command is None else command),
        "hardware": hardware(),
        "versions": library_versions(),
    }
