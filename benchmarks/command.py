"""``entropi bench``: the subcommand the benchmarks add to the host CLI (an ``entropi.commands``
entry point, see host/cli.py). Imports nothing heavy, so `entropi --help` stays fast; the
benchmark itself (:func:`entropi.benchmarks.bench.run_bench`) is imported when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["DEFAULTS", "add_command"]

DEFAULTS = {
    "archs": ("resnet18", "mobilenetv3_small"),
    "classes": (5, 100),
    "batch": 32,
    "alpha": 0.01,
}
"""The defaults of :func:`~entropi.benchmarks.bench.run_bench` (its signature reads them)."""


def _cmd_bench(a: argparse.Namespace) -> int:
    from .bench import run_bench

    given = {k: v for k, v in (("archs", a.arch), ("classes", a.classes)) if v}
    given |= {k: getattr(a, k) for k in ("batch", "alpha", "device") if getattr(a, k) is not None}
    result = run_bench(out_dir=a.out, **given)
    print(f"{len(result['rows'])} rows; see {Path(a.out) / 'bench.md'}")
    return 0


def add_command(sub) -> dict:
    """Add ``bench`` to the ``entropi`` subparsers; return ``{name: run}``.

    Flags left out are not passed, so :func:`run_bench`'s defaults (:data:`DEFAULTS`) apply.
    """
    help_ = "FLOPs and backprop memory of head-only vs full fine-tuning (bench.json/md/png)."
    p = sub.add_parser("bench", help=help_, description=help_)
    p.add_argument(
        "--arch",
        action="append",
        metavar="ARCH",
        help=f"an architecture; repeat for several (default {', '.join(DEFAULTS['archs'])})",
    )
    p.add_argument(
        "--classes",
        action="append",
        type=int,
        help=f"repeat; default {' and '.join(map(str, DEFAULTS['classes']))}",
    )
    p.add_argument("--batch", type=int, help=f"batch size (default {DEFAULTS['batch']})")
    p.add_argument(
        "--alpha",
        type=float,
        help=f"kept fraction for the effective-sparse FLOPs (default {DEFAULTS['alpha']})",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="where the full fine-tuning step is measured (default: CUDA if present)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for bench.json, bench.md, bench.png"
    )
    return {"bench": _cmd_bench}
