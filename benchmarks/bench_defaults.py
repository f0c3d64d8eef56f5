"""The defaults of ``entropi bench``, torch-free: the CLI shows them in ``--help`` and
:func:`~entropi.benchmarks.bench.run_bench` reads them in its signature."""

from __future__ import annotations

__all__ = ["DEFAULTS"]

DEFAULTS = {
    "archs": ("resnet18", "mobilenetv3_small"),
    "classes": (5, 100),
    "batch": 32,
    "alpha": 0.01,
}
"""The defaults of :func:`~entropi.benchmarks.bench.run_bench` (its signature reads them)."""
