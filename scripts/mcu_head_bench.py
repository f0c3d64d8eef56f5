"""The C head trainer on an emulated Cortex-M4F: footprint, instructions per step, speed, accuracy.

Run: ``.venv/bin/python scripts/mcu_head_bench.py`` (writes ``benchmarks/results/mcu_head.json``,
about 5 minutes on one core; ``--quick`` for a short smoke run). Needs the ``mcu`` extra and a
host C compiler. For two heads, each with the device runtime's default settings and a 256 KB
budget:

- ``quickstart``: 256 features x 100 classes (the quickstart's head), SGD with momentum 0.9;
- ``resnet18``: 512 features x 100 classes. With momentum its plan needs 430 KB (the momentum
  buffer alone is 200 KB), which the planner refuses at 256 KB, so it runs without momentum
  (the fused update: no gradient buffer), as the numpy runtime would have to.

Per head: flash (.text, .rodata, .ARM.exidx, .data's initial values) and static RAM (.data +
.bss) from the ELF sections, the stack's high-water mark (painted SRAM) after training steps and
a predict, instructions per training step (a unicorn code hook on one step: exact), the time
per step at 80 MHz *estimated* at one instruction per cycle, and single-thread samples/s of the
host-compiled C trainer (gcc -O2, no -march) against the numpy runtime's step loop
(:class:`entropi.device.trainer.StepLoop` with the same plan; OpenBLAS on one thread).

``must_show``: the quickstart-sized head trained inside the emulated Cortex-M4 in exactly 256 KB
of mapped SRAM, against the numpy runtime (``train_head``, the same settings, the same batches
in its order) on the same features: synthetic, class-dependent Gaussians (256-d, 100 classes,
30 training and 20 test samples a class, learnable but not separable: about 67% test accuracy).
Both without a held-out split or early stopping (in C that is the firmware's; see the README
``write_mcu_trainer`` writes). Reported: both test accuracies, their difference in points, the
largest weight difference, and whether the predictions agree. ``--features RUN/features``
(``must_show_real_features``) does the same on a finished quickstart run's cached target
features of one rung (read only; 80/20 seeded split, the quickstart's 30 epochs).
"""

from __future__ import annotations

import os

os.environ.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from entropi.benchmarks.mcu_emulator import (  # noqa: E402
    CLOCK_HZ,
    HostTrainer,
    TrainerOnMcu,
    build_elf,
    build_host,
    numpy_batches,
)
from entropi.common.files import atomic_write_json  # noqa: E402
from entropi.common.provenance import cpu_model, versions  # noqa: E402
from entropi.device.blas import find_gemm  # noqa: E402
from entropi.device.budget import UFUNC_BUFSIZE  # noqa: E402
from entropi.device.config import TrainConfig  # noqa: E402
from entropi.device.mcu_trainer import mcu_plan, write_mcu_trainer  # noqa: E402
from entropi.device.trainer import StepLoop, train_head  # noqa: E402

HERE = Path(__file__).resolve().parent
C = 100
HEADS = {
    "quickstart": (256, TrainConfig()),
    "resnet18": (512, TrainConfig(momentum=0.0)),
}


def gaussians(d: int, per_class: int, seed: int, scale: float = 0.25, centers=None):
    """``per_class`` rows of each of C classes: a class centre (N(0, scale^2) per feature, drawn
    once) plus unit Gaussian noise; rows shuffled."""
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = (rng.standard_normal((C, d)) * scale).astype(np.float32)
    y = np.repeat(np.arange(C), per_class)
    rng.shuffle(y)
    x = centers[y] + rng.standard_normal((len(y), d), dtype=np.float32)
    return x, y, centers


def _built(d: int, cfg: TrainConfig, root: Path, n_train: int | None = None):
    t = mcu_plan(d, C, cfg, n_train=n_train)
    folder = write_mcu_trainer(root / f"mcu{d}", cfg, feature_dim=d, num_classes=C, n_train=n_train)
    return t, folder, build_elf(folder, root / f"head{d}.elf")


def footprint(d: int, cfg: TrainConfig, root: Path, *, steps: int = 3, exact: bool = True) -> dict:
    """The emulated image of one head: flash, static RAM, stack, instructions per step."""
    t, _, elf = _built(d, cfg, root)
    run = TrainerOnMcu.load(t, elf)
    b = t.plan.batch_size
    x, y, _ = gaussians(d, 1, 0)
    run.init(100, 10)
    for k in range(steps):
        run.train_step(x[k * b : (k + 1) * b], y[k * b : (k + 1) * b])
    count = run.emu.count_instructions if exact else run.emu.count_instructions_fast
    instructions = count(lambda: run.train_step(x[:b], y[:b]))
    run.predict(x[: 2 * b + 1])
    img, stack = run.emu.image, run.emu.stack_high_water
    return {
        "feature_dim": d,
        "classes": C,
        "momentum": cfg.momentum,
        "budget_bytes": t.budget_bytes,
        "sram_mapped_bytes": run.emu.sram_bytes,
        "batch_size": b,
        "block_rows": t.plan.block_rows,
        "fused_update": t.plan.fused_update,
        "plan_analytic_bytes": t.plan.analytic_bytes,
        "flash_bytes": img.flash_bytes,
        "sections": {k: n for k, (_, n) in img.sections.items()},
        "static_ram_bytes": img.static_ram_bytes,
        "stack_high_water_bytes": stack,
        "ram_used_bytes": img.static_ram_bytes + stack,
        "ram_used_of_budget": round((img.static_ram_bytes + stack) / t.budget_bytes, 4),
        "instructions_per_step": instructions,
        "instructions_counted_by": "code hook (exact)" if exact else "block hook (upper bound)",
        "instructions_per_sample": round(instructions / b),
        "estimated_ms_per_step_at_80mhz": round(1000 * instructions / CLOCK_HZ, 2),
    }


def host_speed(d: int, cfg: TrainConfig, root: Path, *, steps: int, repeats: int) -> dict:
    """Single-thread samples/s: the host-compiled C trainer against the numpy step loop."""
    t = mcu_plan(d, C, cfg)
    folder = write_mcu_trainer(root / f"host{d}", cfg, feature_dim=d, num_classes=C)
    host = HostTrainer(t, build_host(folder, root / f"host{d}.so"))
    b = t.plan.batch_size
    x, y, _ = gaussians(d, max(1, -(-steps * b // C)), 1)
    n = steps * b
    batches = list(numpy_batches(x[:n], y[:n], n, b, 0, 1))
    best_c = best_np = float("inf")
    gemm = find_gemm(np.float32) if t.plan.fused_update else None
    for _ in range(repeats):
        host.init(steps, steps)
        t0 = time.perf_counter()
        for xb, yb in batches:
            host.train_step(xb, yb)
        best_c = min(best_c, time.perf_counter() - t0)
        loop = StepLoop(x[:n], y[:n].astype(np.intp), n, C, cfg, t.plan, gemm)
        old = np.setbufsize(UFUNC_BUFSIZE)
        try:
            t0 = time.perf_counter()
            loop.run_epoch_steps(0, 0, steps, 0, lambda s: cfg.lr, lambda s: None)
            best_np = min(best_np, time.perf_counter() - t0)
        finally:
            np.setbufsize(old)
    return {
        "steps": steps,
        "host_c_samples_per_s": round(n / best_c),
        "numpy_samples_per_s": round(n / best_np),
        "c_over_numpy": round(best_np / best_c, 3),
        "numpy_update": "fused BLAS gemm" if gemm is not None else "blocked matmul",
    }


def train_both(x, y, xt, yt, epochs: int, root: Path) -> dict:
    """The numpy runtime and the C trainer in the emulated Cortex-M4 (exactly 256 KB of SRAM) on
    the same rows in the same order, default settings without a held-out split; test accuracy
    of both on ``xt``, ``yt``."""
    d, n = x.shape[1], len(x)
    cfg = TrainConfig(epochs=epochs, val_fraction=0.0, patience=0)
    t0 = time.perf_counter()
    ref = train_head(x, y, cfg, num_classes=C, measure_memory=False)
    numpy_s = time.perf_counter() - t0
    t, _, elf = _built(d, cfg, root, n_train=n)
    assert ref.plan == t.plan, "the numpy runtime planned differently"
    b = t.plan.batch_size
    spe = n // b
    run = TrainerOnMcu.load(t, elf)
    run.init(epochs * spe, spe)
    t0 = time.perf_counter()
    for xb, yb in numpy_batches(x, y, n, b, cfg.seed, epochs):
        run.train_step(xb, yb)
    emu_s = time.perf_counter() - t0
    w, _ = run.head()
    pred_mcu = run.predict(xt)
    pred_np = (xt @ ref.weights + ref.bias).argmax(1)
    acc_mcu, acc_np = float((pred_mcu == yt).mean()), float((pred_np == yt).mean())
    return {
        "config": cfg.to_dict(),
        "n_train": n,
        "n_test": len(xt),
        "batch_size": b,
        "block_rows": t.plan.block_rows,
        "steps": epochs * spe,
        "sram_mapped_bytes": run.emu.sram_bytes,
        "stack_high_water_bytes": run.emu.stack_high_water,
        "test_accuracy_mcu": acc_mcu,
        "test_accuracy_numpy": acc_np,
        "difference_points": round(100 * (acc_mcu - acc_np), 3),
        "within_half_a_point": abs(acc_mcu - acc_np) <= 0.005,
        "predictions_equal": float((pred_mcu == pred_np).mean()),
        "max_abs_weight_difference": float(np.abs(w - ref.weights).max()),
        "max_abs_weight": float(np.abs(ref.weights).max()),
        "emulated_seconds": round(emu_s, 1),
        "numpy_seconds": round(numpy_s, 2),
    }


def must_show(root: Path, *, train_per_class: int, test_per_class: int, epochs: int) -> dict:
    """:func:`train_both` on synthetic Gaussians (256-d, 100 classes)."""
    x, y, centers = gaussians(256, train_per_class, 2)
    xt, yt, _ = gaussians(256, test_per_class, 3, centers=centers)
    data = (
        f"synthetic Gaussians: {C} classes x {train_per_class} train / {test_per_class} test, "
        "256 features, centres N(0, 0.25^2)"
    )
    return {"data": data, **train_both(x, y, xt, yt, epochs, root / "must")}


def must_show_real(root: Path, features: Path, rung: int, epochs: int, test: float = 0.2) -> dict:
    """:func:`train_both` on a finished run's cached target features (``features/rung_NNN.npy``
    and ``labels.npy``, read only): a seeded split, ``test`` of the rows held out."""
    x = np.load(features / f"rung_{rung:03d}.npy").astype(np.float32)
    y = np.load(features / "labels.npy").astype(np.int64)
    if x.shape[1] != 256 or y.max() + 1 != C:
        raise SystemExit(f"{features}: expected 256 features and {C} classes, got {x.shape}")
    order = np.random.default_rng(0).permutation(len(x))
    k = round(len(x) * (1 - test))
    tr, te = order[:k], order[k:]
    data = (
        f"{features}/rung_{rung:03d}.npy (the run's cached target training features, {len(x)} "
        f"rows): {k} train / {len(x) - k} held out (seeded permutation)"
    )
    return {"data": data, **train_both(x[tr], y[tr], x[te], y[te], epochs, root / "real")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (fast counts, 1 epoch)")
    p.add_argument(
        "--out",
        default=str(HERE.parent / "benchmarks" / "results" / "mcu_head.json"),
        help="the results file",
    )
    p.add_argument(
        "--features",
        type=Path,
        help="a finished run's features/ folder: also train both on its cached features",
    )
    p.add_argument("--rung", type=int, default=1, help="which rung's features (--features)")
    p.add_argument("--epochs", type=int, default=30, help="epochs on --features (default 30)")
    a = p.parse_args(argv)
    q = a.quick
    with tempfile.TemporaryDirectory(prefix="entropi-mcu-bench-") as tmp:
        root = Path(tmp)
        heads = {}
        for name, (d, cfg) in HEADS.items():
            heads[name] = footprint(d, cfg, root, steps=1 if q else 3, exact=not q)
            heads[name] |= host_speed(d, cfg, root, steps=20 if q else 200, repeats=1 if q else 5)
        shown = must_show(
            root,
            train_per_class=3 if q else 30,
            test_per_class=2 if q else 20,
            epochs=1 if q else 10,
        )
        real = None
        if a.features is not None:
            real = must_show_real(root, a.features, a.rung, 1 if q else a.epochs)
    result = {
        "command": " ".join(["python scripts/mcu_head_bench.py", *(argv or sys.argv[1:])]),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "versions": versions(["numpy", "ziglang", "unicorn", "pyelftools"]),
        "target": "thumb-freestanding-eabihf, -mcpu=cortex_m4+vfp4d16sp, -O2 (ziglang cc)",
        "clock_hz": CLOCK_HZ,
        "time_estimate": "instructions / 80 MHz at about 1 instruction per cycle: an estimate, "
        "not a measurement (flash wait states and FPU stalls are not modelled)",
        "heads": heads,
        "must_show": shown,
    }
    if real is not None:
        result["must_show_real_features"] = real
    atomic_write_json(a.out, result)
    ok = shown["within_half_a_point"] and (real is None or real["within_half_a_point"])
    print(json.dumps({k: v for k, v in result.items() if k in ("heads", "must_show")}, indent=2))
    print(f"wrote {a.out}; must-show {'holds' if ok else 'FAILS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
