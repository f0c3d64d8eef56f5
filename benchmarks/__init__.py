"""entropi.benchmarks: what head-only vs full fine-tuning costs, and how fast every stage runs.

- :func:`run_bench` / :func:`collect_bench`: ``entropi bench`` (bench.json, bench.md, bench.png),
  from the cost models of :mod:`entropi.host.analysis` (``flops``: FLOPs of one training step,
  checked against torch's ``FlopCounterMode``; ``memory``: backprop memory by category, measured
  with ``saved_tensors_hooks`` and counted from shapes).
- the pytest-benchmark suite (``test_bench_*.py``), the fuzzers (``fuzz.py``) and the Cortex-M
  emulator of the C head trainer (``mcu_emulator.py``).

The experiments that use these (the paper's Table 2, the export and head-training studies, the
levels ablation, the RESULTS.md summarizer) are scripts in ``scripts/``, outside the package.
"""

from importlib import import_module

# imported on first use, so that `entropi --help` (which loads .command) does not pay for torch
_EXPORTS = {
    "collect_bench": "bench",
    "run_bench": "bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
