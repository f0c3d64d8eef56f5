"""entropi.benchmarks: what head-only vs full fine-tuning costs, and how fast every stage runs.

- :func:`count_step_flops`: FLOPs of one training step (head-only or full, dense or effective-
  sparse), checked against torch's ``FlopCounterMode`` (:func:`flop_counter_step_flops`).
- :func:`measure_step` / :func:`analytic_step`: backprop memory by category, measured with
  ``saved_tensors_hooks`` and counted from shapes.
- :func:`run_bench`: ``entropi bench`` (bench.json, bench.md, bench.png); :func:`run_table2`: the
  paper's Table 2 analog; :func:`summarize`: pytest-benchmark JSON -> ``RESULTS.md``.
"""

from .bench import collect_bench, run_bench
from .flops import CONVENTIONS, FlopReport, count_step_flops, flop_counter_step_flops
from .memory import MemoryBreakdown, MemoryMeasurement, analytic_step, measure_step

__all__ = [
    "CONVENTIONS",
    "FlopReport",
    "MemoryBreakdown",
    "MemoryMeasurement",
    "analytic_step",
    "collect_bench",
    "count_step_flops",
    "flop_counter_step_flops",
    "measure_step",
    "run_bench",
    "run_table2",
    "summarize",
]


def __getattr__(name: str):
    # Loaded on first use, so that `python -m entropi.benchmarks.summarize` / `.table2` run their
    # module once (runpy warns when the package has already imported it).
    if name == "summarize":
        from .summarize import summarize

        return summarize
    if name == "run_table2":
        from .table2 import run_table2

        return run_table2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
