"""``entropi bench``: the subcommand the benchmarks add to the host CLI (an ``entropi.commands``
entry point, see host/cli.py). Imports nothing heavy, so `entropi --help` stays fast; the
benchmark itself (:func:`entropi.benchmarks.bench.run_bench`) is imported when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .bench_defaults import DEFAULTS

__all__ = ["add_command"]


def _cmd_bench(a: argparse.Namespace) -> int:
    from .bench import BenchError, run_bench

    given = {k: v for k, v in (("archs", a.arch), ("classes", a.classes)) if v}
    given |= {k: getattr(a, k) for k in ("batch", "alpha", "device") if getattr(a, k) is not None}
    if a.run is not None:
        clash = [f"--{k}" for k in ("arch", "alpha") if getattr(a, k) is not None]
        if clash:
            raise BenchError(
                f"{' and '.join(clash)} describe a randomly initialised model; with --run the "
                "rung's own architecture and non-zeros are measured"
            )
        rung = "selected" if a.rung is None else a.rung
        given |= {"run": a.run, "rung": rung, "classes": a.classes or None}
    elif a.rung is not None:
        raise BenchError("--rung needs --run RUNDIR")
    result = run_bench(out_dir=a.out, **given)
    what = f"rung {result['run']['rung']} of {result['run']['run']}: " if a.run else ""
    print(f"{what}{len(result['rows'])} rows; see {Path(a.out) / 'bench.md'}")
    return 0


def add_command(sub) -> dict:
    """Add ``bench`` to the ``entropi`` subparsers; return ``{name: run}``.

    Flags left out are not passed, so :func:`run_bench`'s defaults (:data:`DEFAULTS`) apply.
    """
    from entropi.host.run.rundir import rung_arg

    help_ = (
        "FLOPs and backprop memory of head-only vs full fine-tuning (bench.json/md/png), of "
        "randomly initialised architectures or of a rung of your own run (--run)."
    )
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
        "--run",
        metavar="RUNDIR",
        help="benchmark a rung of this run folder: its architecture, weights (sparse FLOPs from "
        "its own non-zeros), input shape and target classes",
    )
    p.add_argument(
        "--rung",
        type=rung_arg,
        metavar="N",
        help="with --run: 'selected' (default: the rung `entropi select` picked) or an index",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for bench.json, bench.md, bench.png"
    )
    return {"bench": _cmd_bench}
