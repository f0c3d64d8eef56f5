"""Progress bars for long work (tqdm to stderr; silent when ENTROPI_QUIET=1, and on every rank
of a torchrun job but rank 0: the ranks share one terminal, and rank 0 shows the job's work)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(*, total: int, desc: str, unit: str = "it") -> tqdm:
    quiet = os.environ.get("ENTROPI_QUIET", "") not in ("", "0")
    quiet = quiet or os.environ.get("RANK", "0") != "0"  # torchrun sets RANK
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=quiet,
        leave=False,
        dynamic_ncols=True,
        mininterval=1.0,
    )
