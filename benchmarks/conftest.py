"""Shared set-up of the pytest-benchmark suite (``pytest benchmarks``).

Every benchmark runs on one thread by default (``--bench-threads N`` to change; set
``OMP_NUM_THREADS`` too for numpy's BLAS), with fixed seeds, and asserts that what it times is
correct, so ``pytest benchmarks --benchmark-disable -q`` (one call each, no timing) is a fast
smoke test that keeps the suite from rotting. Machine and library versions are added to the
``--benchmark-json`` output, which ``python scripts/summarize.py`` turns into
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from entropi.common.provenance import cpu_model, versions


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-threads",
        type=int,
        default=1,
        help="torch intra-op threads for the benchmarks (default 1: one core)",
    )
    parser.addoption(
        "--bench-keep-data",
        action="store_true",
        help="keep every round's timing in --benchmark-json (default: statistics only, so the "
        "committed file stays small)",
    )


@pytest.fixture(autouse=True)
def _deterministic(request: pytest.FixtureRequest):
    threads = torch.get_num_threads()
    torch.set_num_threads(request.config.getoption("--bench-threads"))
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield
    torch.set_num_threads(threads)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["entropi"] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "bench_threads": config.getoption("--bench-threads"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions(
            [
                "entropi",
                "torch",
                "numpy",
                "onnxruntime",
                "ai-edge-litert",
                "onnx",
                "pytest-benchmark",
            ]
        ),
    }


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list, output_json: dict
) -> None:
    if config.getoption("--bench-keep-data"):
        return
    for bench in output_json.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
