"""entropi.benchmarks: what head-only vs full fine-tuning costs, and how fast every stage runs.

- :func:`count_step_flops`: FLOPs of one training step (head-only or full, dense or effective-
  sparse), checked against torch's ``FlopCounterMode`` (:func:`flop_counter_step_flops`).
- :func:`measure_step` / :func:`analytic_step`: backprop memory by category, measured with
  ``saved_tensors_hooks`` and counted from shapes.
- :func:`run_bench`: ``entropi bench`` (bench.json, bench.md, bench.png).

The experiments that use these (the paper's Table 2, the export and head-training studies, the
levels ablation, the RESULTS.md summarizer) are scripts in ``scripts/``, outside the package.
"""

from importlib import import_module

# imported on first use, so that `entropi --help` (which loads .command) does not pay for torch
_EXPORTS = {
    "CONVENTIONS": "flops",
    "FlopReport": "flops",
    "count_step_flops": "flops",
    "flop_counter_step_flops": "flops",
    "MemoryBreakdown": "memory",
    "MemoryMeasurement": "memory",
    "analytic_step": "memory",
    "measure_step": "memory",
    "collect_bench": "bench",
    "run_bench": "bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
