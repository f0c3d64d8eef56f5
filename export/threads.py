"""torch's CPU thread count for a block: one mechanism for every layer that pins it (int8
calibration here, the probe and every source training in the host)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["cpu_threads"]


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
