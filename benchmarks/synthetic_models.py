"""The synthetic pruned encoders of ``tests/synthetic.py``, for the benchmarks.

That module is a test helper, not part of the package; the benchmarks (a source checkout's, like
the tests) reach it by putting the checkout's tests/ folder on ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1] / "tests"
if not (_TESTS / "synthetic.py").is_file():  # pragma: no cover - an installed wheel
    raise ImportError(
        f"the synthetic encoders live in the source checkout's tests/synthetic.py, which is not "
        f"at {_TESTS}; run the benchmarks from a checkout of entropi"
    )
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from synthetic import (  # noqa: E402
    fake_rung_meta,
    kill_channels_,
    magnitude_prune_,
    randomize_batchnorm_,
    synthetic_encoder,
)

__all__ = [
    "fake_rung_meta",
    "kill_channels_",
    "magnitude_prune_",
    "randomize_batchnorm_",
    "synthetic_encoder",
]
