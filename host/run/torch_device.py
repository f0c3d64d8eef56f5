"""The compute device a run trains on: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import ConfigError

__all__ = ["DeviceUnavailableError", "cpu_threads", "pick_device"]


class DeviceUnavailableError(ConfigError, RuntimeError):
    """The configured compute device is unknown or not present on this machine (a config error:
    :func:`~entropi.host.run.rundir.open_run` checks it before it creates anything)."""


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise DeviceUnavailableError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "device = 'cuda' but no CUDA device is visible to torch on this machine; set "
            'device = "auto" or "cpu" in the config (or --set device=cpu)'
        )
    return torch.device(name)


@contextmanager
def cpu_threads(threads: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``threads`` on the CPU (0 or a
    CUDA device: leave it as it is), and restore it after.

    Training on the CPU sums each weight gradient over the batch in per-thread partial sums, so
    the thread count changes the last bits of every step, and after a few hundred steps the
    ladder (measured on the quickstart: OMP_NUM_THREADS=1 and 2 trained ladders whose picks
    differed). A fixed count trains the same weights bit for bit on every machine with the same
    CPU kind and libraries, whatever its core count or ``OMP_NUM_THREADS``.
    """
    if not threads or torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
