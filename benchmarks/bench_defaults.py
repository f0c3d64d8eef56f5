"""The defaults of ``entropi bench``, torch-free: the CLI generates its flags (and their help)
from :class:`BenchDefaults`, and :func:`~entropi.benchmarks.bench.run_bench` reads
:data:`DEFAULTS` in its signature."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["DEFAULTS", "BenchDefaults"]


@dataclass(frozen=True)
class BenchDefaults:
    """What ``entropi bench`` measures unless told otherwise."""

    archs: tuple[str, ...] = ("resnet18", "mobilenetv3_small")
    """architectures, randomly initialised."""
    classes: tuple[int, ...] = (5, 100)
    """target classes (the head's outputs)."""
    batch: int = 32
    """batch size of the measured training step."""
    alpha: float = 0.01
    """kept fraction for the effective-sparse FLOPs."""


DEFAULTS = dataclasses.asdict(BenchDefaults())
"""The defaults of :func:`~entropi.benchmarks.bench.run_bench` (its signature reads them)."""
