"""The C head trainer on an emulated Cortex-M4F (benchmarks/mcu_emulator.py): cross-compiled by
ziglang, loaded by pyelftools into unicorn with flash and exactly the budget's SRAM mapped.

The emulated trainer must give the host-compiled trainer's head bit for bit (both are IEEE
float32 with the same operation order, -ffp-contract=off), hence the numpy runtime's within
its tolerance; the budget is proven by the address space (an access past the SRAM faults, an
image too big for it fails the link with a clear message). A few seconds in all.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("unicorn")
pytest.importorskip("elftools")
pytest.importorskip("ziglang")

from entropi.benchmarks.mcu_emulator import (  # noqa: E402
    CLOCK_HZ,
    HostTrainer,
    McuBuildError,
    McuError,
    McuFault,
    TrainerOnMcu,
    build_elf,
    build_host,
    emulate_training,
    numpy_batches,
)
from entropi.device.config import TrainConfig  # noqa: E402
from entropi.device.mcu_trainer import SRAM_ORIGIN, mcu_plan, write_mcu_trainer  # noqa: E402
from entropi.device.trainer import train_head  # noqa: E402

D, C, N, N_TEST = 48, 7, 260, 140
CFG = TrainConfig(epochs=2, val_fraction=0.0, patience=0, budget="33KB", batch_size=20)


def _data(seed=0, d=D, c=C, n=N + N_TEST):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    return (centers[y] + rng.normal(scale=1.5, size=(n, d))).astype(np.float32), y


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcu-emu")
    out = write_mcu_trainer(root / "mcu", CFG, feature_dim=D, num_classes=C, n_train=N)
    return mcu_plan(D, C, CFG, n_train=N), out, build_elf(out, root / "head.elf")


def test_emulated_training_matches_the_host_and_numpy(small, tmp_path):
    t, folder, elf = small
    assert t.plan.block_rows < D  # the blocked update runs
    x, y = _data()
    b = t.plan.batch_size
    spe = N // b
    batches = list(numpy_batches(x[:N], y[:N], N, b, CFG.seed, CFG.epochs))
    run = emulate_training(t, elf, batches, total_steps=CFG.epochs * spe, steps_per_epoch=spe)
    w, bias = run.head()
    host = HostTrainer(t, build_host(folder, tmp_path / "host.so"))
    host.init(CFG.epochs * spe, spe)
    for xb, yb in batches:
        host.train_step(xb, yb)
    hw, hb = host.head()
    assert np.array_equal(w, hw) and np.array_equal(bias, hb)  # the M4 computes what the host does
    res = train_head(x[:N], y[:N], CFG, num_classes=C, measure_memory=False)
    scale = float(np.abs(res.weights).max())
    np.testing.assert_allclose(w, res.weights, rtol=0, atol=1e-5 * scale)
    pred = run.predict(x[N:])
    assert np.array_equal(pred, (x[N:] @ res.weights + res.bias).argmax(1))
    assert (pred == y[N:]).mean() > 0.8


def test_measured_footprint_and_instruction_count(small):
    t, _, elf = small
    run = TrainerOnMcu.load(t, elf)
    img = run.emu.image
    assert 1000 < img.flash_bytes < 64 * 1024
    assert sum(t.buffers.values()) <= img.static_ram_bytes <= t.static_bytes + 64  # alignment
    assert img.static_ram_bytes + t.plan.reserve_bytes <= t.budget_bytes
    x, y = _data()
    b = t.plan.batch_size
    run.init(10, 10)
    run.train_step(x[b : 2 * b], y[b : 2 * b])  # translated before the hook is added
    run.init(10, 10)
    count = run.emu.count_instructions(lambda: run.train_step(x[:b], y[:b]))
    assert run.emu.count_instructions(lambda: None) == 0
    macs = 2 * b * D * C  # logits and gradient
    assert 2 * macs < count < 20 * macs
    run.init(10, 10)  # the same step again, counted per block: an upper bound within 0.1%
    fast = run.emu.count_instructions_fast(lambda: run.train_step(x[:b], y[:b]))
    assert count <= fast <= 1.001 * count
    stack = run.emu.stack_high_water
    assert 0 < stack < 1024  # a few hundred bytes: far inside the plan's reserve
    assert count / CLOCK_HZ < 0.1  # seconds per step at 80 MHz, ~1 IPC (an estimate)


def test_the_quickstart_head_runs_in_exactly_256kb(tmp_path):
    """256 features x 100 classes with momentum, the default 256 KB budget: the image is linked
    for and run in exactly 256 KB of mapped SRAM, and its steps equal the host's."""
    cfg = TrainConfig()
    t = mcu_plan(256, 100, cfg)
    out = write_mcu_trainer(tmp_path / "mcu", cfg, feature_dim=256, num_classes=100)
    elf = build_elf(out, tmp_path / "q.elf")
    x, y = _data(1, 256, 100, 3 * t.plan.batch_size)
    b = t.plan.batch_size
    batches = [(x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]) for i in range(3)]
    run = emulate_training(t, elf, batches, total_steps=100, steps_per_epoch=10)
    assert run.emu.sram_bytes == 256 * 1024
    host = HostTrainer(t, build_host(out, tmp_path / "q.so"))
    host.init(100, 10)
    for xb, yb in batches:
        host.train_step(xb, yb)
    assert np.array_equal(run.head()[0], host.head()[0])
    assert run.emu.image.static_ram_bytes + run.emu.stack_high_water < 256 * 1024


def test_an_access_outside_the_sram_faults(small):
    t, _, elf = small
    run = TrainerOnMcu.load(t, elf)
    run.init(10, 10)
    assert t.budget_bytes % 4096  # not whole pages: the last page's tail must fault too
    for past in (SRAM_ORIGIN + t.budget_bytes, SRAM_ORIGIN + (1 << 20)):
        with pytest.raises(McuFault, match=f"0x{past:08x}, outside the mapped memory"):
            run.emu.call("eh_predict", past, 1, run.buffers["labels_buffer"])
    with pytest.raises(McuFault, match="outside the mapped memory"):
        run.emu.call("eh_train_step", 0x1000, run.buffers["labels_buffer"])
    run.init(10, 10)  # the emulator still works after a fault


def test_an_image_that_does_not_fit_the_sram_fails_the_link(tmp_path):
    big = TrainConfig(budget="512KB")  # the quickstart head planned for 512 KB, linked for 256
    out = write_mcu_trainer(tmp_path / "mcu", big, feature_dim=256, num_classes=100)
    with pytest.raises(McuBuildError, match=r"does not fit the SRAM: section \.bss overflows"):
        build_elf(out, tmp_path / "big.elf", sram_bytes=256 * 1024)
    t = mcu_plan(256, 100, big)
    with pytest.raises(McuBuildError, match="less than 1024 B of SRAM for the stack"):
        build_elf(out, tmp_path / "tight.elf", sram_bytes=t.static_bytes + 512)
    assert not (tmp_path / "big.elf").exists() and not (tmp_path / "tight.elf").exists()


def test_an_sram_smaller_than_the_image_is_refused_at_load(small):
    t, _, elf = small
    with pytest.raises(McuError, match="does not load into"):
        TrainerOnMcu.load(t, elf, sram_bytes=4 * 1024)


def test_a_stack_that_runs_into_the_static_data_is_a_fault(small):
    """Loaded into an SRAM with 64 B above the static data, the stack (about 170 B) overflows."""
    t, _, elf = small
    run = TrainerOnMcu.load(t, elf)
    tight = run.emu.image.static_end - SRAM_ORIGIN + 64
    run = TrainerOnMcu.load(t, elf, sram_bytes=tight)  # the accessors' calls need no stack
    x, y = _data()
    b = t.plan.batch_size
    run.init(10, 10)
    # the overflow corrupts the static data: the run faults or returns, named either way
    with pytest.raises(McuFault, match="eh_train_step overflowed the stack: it used all 64 B"):
        run.train_step(x[:b], y[:b])


def test_a_missing_cross_compiler_is_a_clear_error(small, tmp_path, monkeypatch):
    _, folder, _ = small
    monkeypatch.setattr("sys.executable", shutil.which("false") or "/bin/false")
    monkeypatch.setitem(os.environ, "ZIG_GLOBAL_CACHE_DIR", str(tmp_path))
    with pytest.raises(McuBuildError, match="cross-compiling"):
        build_elf(folder, tmp_path / "x.elf")


def test_the_bench_scripts_must_show_on_a_small_run(tmp_path):
    """scripts/mcu_head_bench.py's accuracy check, on a few steps (the full run is minutes)."""
    from scripts_loader import load_script

    shown = load_script("mcu_head_bench").must_show(
        tmp_path, train_per_class=2, test_per_class=1, epochs=1
    )
    assert shown["sram_mapped_bytes"] == 256 * 1024 and shown["steps"] >= 10
    assert shown["predictions_equal"] == 1.0 and shown["within_half_a_point"]
    assert shown["max_abs_weight_difference"] <= 1e-5 * shown["max_abs_weight"]
