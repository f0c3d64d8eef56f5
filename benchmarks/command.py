"""``entropi bench``: the subcommand the benchmarks add to the host CLI (an ``entropi.commands``
entry point, see host/cli.py). Imports nothing heavy, so `entropi --help` stays fast; the
benchmark itself (:func:`entropi.benchmarks.bench.run_bench`) is imported when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from entropi.common.cliargs import add_dataclass_arguments, rung_arg

from .bench_defaults import BenchDefaults

__all__ = ["add_command"]


def _cmd_bench(a: argparse.Namespace) -> int:
    # lazy: keeps `entropi --help` from importing torch
    from .bench import BenchError, run_bench

    given = {k: getattr(a, k) for k in ("archs", "classes") if getattr(a, k)}
    given |= {k: getattr(a, k) for k in ("batch", "alpha", "device") if getattr(a, k) is not None}
    if a.run is not None:
        clash = [flag for flag, k in (("--arch", "archs"), ("--alpha", "alpha")) if k in given]
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

    Its measuring flags are generated from :class:`.BenchDefaults`, each unset: flags left out
    are not passed, so :func:`run_bench`'s defaults (the same dataclass) apply.
    """
    help_ = (
        "FLOPs and backprop memory of head-only vs full fine-tuning (bench.json/md/png), of "
        "randomly initialised architectures or of a rung of your own run (--run)."
    )
    p = sub.add_parser("bench", help=help_, description=help_)
    repeat = {"also": "Repeat for several."}
    add_dataclass_arguments(
        p,
        BenchDefaults,
        unset=True,
        options={"archs": {"flag": "--arch", "metavar": "ARCH", **repeat}, "classes": repeat},
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
