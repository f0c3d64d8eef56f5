"""pytest-benchmark: the C head trainer's training step, host-compiled and on an emulated
Cortex-M4F, against the numpy runtime's step, for the quickstart head (256 x 100, momentum) and
a ResNet18-sized head (512 x 100: without momentum, the only plan that fits 256 KB).

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_mcu.py`` (``--benchmark-disable`` for a
fast correctness-only pass). The emulated benchmark records the image's flash, static RAM,
stack high-water mark and instructions per step (block-hook count, an upper bound within 0.1%)
in ``extra_info``; ``scripts/mcu_head_bench.py`` writes the exact counts and the accuracy check
to ``benchmarks/results/mcu_head.json``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from entropi.benchmarks.mcu_emulator import CLOCK_HZ, HostTrainer, build_host
from entropi.device.blas import find_gemm
from entropi.device.budget import UFUNC_BUFSIZE
from entropi.device.config import TrainConfig
from entropi.device.mcu_trainer import mcu_plan, write_mcu_trainer
from entropi.device.trainer import StepLoop

C, STEPS = 100, 4
HEADS = {"quickstart": (256, TrainConfig()), "resnet18": (512, TrainConfig(momentum=0.0))}

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


@pytest.fixture(scope="module", params=list(HEADS))
def head(request, tmp_path_factory):
    d, cfg = HEADS[request.param]
    root = tmp_path_factory.mktemp(f"mcu-{request.param}")
    t = mcu_plan(d, C, cfg)
    folder = write_mcu_trainer(root / "mcu", cfg, feature_dim=d, num_classes=C)
    rng = np.random.default_rng(0)
    n = STEPS * t.plan.batch_size
    y = rng.integers(0, C, n)
    x = (rng.standard_normal((C, d), dtype=np.float32) * 0.25)[y]
    x += rng.standard_normal((n, d), dtype=np.float32)
    return request.param, t, folder, root, x, y


def _batches(t, x, y):
    b = t.plan.batch_size
    return [(x[k * b : (k + 1) * b], y[k * b : (k + 1) * b]) for k in range(STEPS)]


def test_bench_host_c_steps(benchmark, head):
    name, t, folder, root, x, y = head
    host = HostTrainer(t, build_host(folder, root / "host.so"))
    batches = _batches(t, x, y)

    def steps():
        host.init(STEPS, STEPS)
        for xb, yb in batches:
            host.train_step(xb, yb)

    benchmark(steps)
    benchmark.extra_info["samples"] = STEPS * t.plan.batch_size
    w, _ = host.head()
    assert np.isfinite(w).all() and np.abs(w).max() > 0


def test_bench_numpy_steps(benchmark, head):
    name, t, folder, root, x, y = head
    cfg = t.config
    gemm = find_gemm(np.float32) if t.plan.fused_update else None
    loop = StepLoop(x, y.astype(np.intp), len(x), C, cfg, t.plan, gemm)
    old = np.setbufsize(UFUNC_BUFSIZE)
    try:
        benchmark(loop.run_epoch_steps, 0, 0, STEPS, 0, lambda s: cfg.lr, lambda s: None)
    finally:
        np.setbufsize(old)
    benchmark.extra_info["samples"] = STEPS * t.plan.batch_size
    assert np.isfinite(loop.W).all() and np.abs(loop.W).max() > 0


def test_bench_emulated_step(benchmark, head):
    pytest.importorskip("unicorn")
    pytest.importorskip("elftools")
    pytest.importorskip("ziglang")
    from entropi.benchmarks.mcu_emulator import TrainerOnMcu, build_elf

    name, t, folder, root, x, y = head
    run = TrainerOnMcu.load(t, build_elf(folder, root / "head.elf"))
    batches = _batches(t, x, y)
    run.init(STEPS, STEPS)
    count = run.emu.count_instructions_fast(lambda: run.train_step(*batches[0]))
    benchmark.pedantic(run.train_step, batches[1], rounds=1, iterations=1)
    img, stack = run.emu.image, run.emu.stack_high_water
    benchmark.extra_info |= {
        "flash_bytes": img.flash_bytes,
        "static_ram_bytes": img.static_ram_bytes,
        "stack_high_water_bytes": stack,
        "budget_bytes": t.budget_bytes,
        "instructions_per_step_upper_bound": count,
        "estimated_ms_per_step_at_80mhz": 1000 * count / CLOCK_HZ,
    }
    assert run.emu.sram_bytes == t.budget_bytes == 256 * 1024
    assert img.static_ram_bytes + stack <= t.budget_bytes - t.plan.reserve_bytes + 1024
    b, d = t.plan.batch_size, t.feature_dim
    assert 2 * b * d * C < count < 12 * b * d * C  # logits and gradient: 2 MACs per weight-sample
    host = HostTrainer(t, build_host(folder, root / "check.so"))
    host.init(STEPS, STEPS)
    for xb, yb in batches[:2]:
        host.train_step(xb, yb)
    assert np.array_equal(run.head()[0], host.head()[0])  # the M4 computed what the host did
