"""Device head-training experiment: memory at 256 KB, single-core speed, process RSS.

Run: ``.venv/bin/python scripts/device_head_bench.py`` (writes
``benchmarks/results/device_head.json``; ``--quick`` for a short smoke run). Measures, for
512 features x 100 classes (CIFAR-100 on a ResNet18 encoder; synthetic features):

- the 256 KB run: planned batch/blocks, analytic floor, tracemalloc peak, peak / floor;
- single-thread speed at batch 32 (unblocked): samples/s of the training step (wall and CPU
  time, best of repeats), and the fraction of one core's sgemm rate at the same shapes
  (achieved GEMM FLOP/s of the step: 2 GEMMs x 2*B*D*C FLOPs, over numpy sgemm's FLOP/s);
- peak RSS (VmHWM) of a whole ``entropi-device train`` process on a smallnet TFLite bundle, on
  real CIFAR-100 written as an uncompressed ``.npz`` in ``--data-dir`` (default /tmp): the
  quickstart subset (5,000 train / 2,000 test images) and the full set (50,000 / 10,000). The
  ``.npz`` files are made once from ``--datasets`` (the official CIFAR-100 python files) with the
  host reader and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from entropi.benchmarks.machine import DEVICE_CLI_PEAK_RSS, ONE_THREAD
from entropi.common.provenance import cpu_model

HERE = Path(__file__).resolve().parent
D, C, B = 512, 100, 32
_CONVERT = (
    "import sys, torch, litert_torch\n"
    "from entropi.host.ladder.models import build_encoder\n"
    "torch.manual_seed(0)\n"
    "enc = build_encoder('smallnet').eval()\n"
    "litert_torch.convert(enc, (torch.randn(32, 3, 32, 32),)).export(sys.argv[1])\n"
)


def _features(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    x = rng.standard_normal((C, D)).astype(np.float32)[y] * 0.5
    x += rng.standard_normal((n, D), dtype=np.float32)
    return x, y


def memory_256kb(n: int, epochs: int) -> dict:
    from entropi.device import TrainConfig, train_head

    x, y = _features(n)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.npy"
        np.save(path, x)
        mm = np.load(path, mmap_mode="r")
        cfg = TrainConfig(
            epochs=epochs,
            lr=0.05,
            momentum=0.0,
            weight_decay=0.0,
            budget="256KB",
            checkpoint_every=200,
            patience=3,
        )
        r = train_head(mm, y, cfg, num_classes=C, workdir=Path(d) / "work")
    return {
        "budget_bytes": r.plan.budget_bytes,
        "batch_size": r.plan.batch_size,
        "block_rows": r.plan.block_rows,
        "analytic_bytes": r.plan.analytic_bytes,
        "peak_bytes": r.peak_bytes,
        "peak_over_analytic": r.peak_bytes / r.plan.analytic_bytes,
        "within_budget": r.peak_bytes <= r.plan.budget_bytes,
        "buffers": r.plan.buffers,
        "val_accuracy": r.val_accuracy,
        "samples_per_second_traced": r.samples_per_second,
        "n_samples": n,
        "epochs_run": r.epochs_run,
        "note": "features in a memmap; checkpoints every 200 steps and early stopping on",
    }


def _time_loop(loop, steps: int, repeats: int) -> tuple[list[float], list[float]]:
    noop = lambda s: None  # noqa: E731
    lr = lambda s: 0.01  # noqa: E731
    loop.run_epoch_steps(0, 0, 200, 0, lr, noop)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        loop.run_epoch_steps(0, 0, steps, 0, lr, noop)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _speed_child(steps: int, repeats: int) -> dict:
    """Runs in a child with one BLAS thread: the fused-BLAS step and the numpy-only step."""
    from entropi.device import TrainConfig, plan_memory
    from entropi.device.blas import find_gemm
    from entropi.device.budget import UFUNC_BUFSIZE
    from entropi.device.trainer import StepLoop

    x, y = _features(50_000)
    y = y.astype(np.intp)
    gemm = find_gemm(np.float32)
    np.setbufsize(UFUNC_BUFSIZE)
    runs = {}
    for name, fused in (("numpy", False), ("blas", gemm is not None)):
        plan = plan_memory(D, C, None, max_batch_size=B, fused_update=fused)
        cfg = TrainConfig(momentum=0.0, weight_decay=0.0, budget="unlimited")
        loop = StepLoop(x, y, len(x), C, cfg, plan, gemm if fused else None)
        runs[name] = _time_loop(loop, steps, repeats)
    # sgemm at the same shapes: forward (B x D) @ (D x C), weight gradient (D x B) @ (B x C)
    xb = x[:B].copy()
    w = np.zeros((D, C), np.float32)
    z = np.empty((B, C), np.float32)
    g = np.empty((D, C), np.float32)
    for _ in range(500):
        np.matmul(xb, w, z)
        np.matmul(xb.T, z, g)
    gemm_t = []
    for _ in range(repeats):
        c0 = time.process_time()
        for _ in range(steps):
            np.matmul(xb, w, z)
            np.matmul(xb.T, z, g)
        gemm_t.append(time.process_time() - c0)
    flops_per_step = 2 * 2 * B * D * C
    best_gemm = min(gemm_t)
    best = "blas" if gemm is not None else "numpy"
    wall, cpu = runs[best]
    out = {
        "batch_size": B,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "update": "fused BLAS gemm (W = W - x^T z)" if best == "blas" else "numpy",
        "samples_per_second_cpu": steps * B / min(cpu),
        "samples_per_second_wall": steps * B / min(wall),
        "samples_per_second_wall_median": steps * B / sorted(wall)[len(wall) // 2],
        "us_per_step_cpu": min(cpu) / steps * 1e6,
        "sgemm_gflops": flops_per_step * steps / best_gemm / 1e9,
        "step_gemm_gflops": flops_per_step * steps / min(cpu) / 1e9,
        "sgemm_fraction": best_gemm / min(cpu),
        "goal_samples_per_second": 330_000,
    }
    for name, (wall, cpu) in runs.items():
        out[f"samples_per_second_cpu_{name}"] = steps * B / min(cpu)
        out[f"samples_per_second_wall_median_{name}"] = steps * B / sorted(wall)[len(wall) // 2]
    return out


def speed(steps: int, repeats: int) -> dict:
    env = {**os.environ, **ONE_THREAD}
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import device_head_bench as b;"
        f" print(json.dumps(b._speed_child({steps}, {repeats})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def cifar100_npz(
    path: Path, datasets: Path, train_per_class: int | None, test_per_class: int | None
):
    """Write CIFAR-100 (x_/y_train, x_/y_test, class_names) to ``path`` once (uncompressed).

    ``*_per_class``: keep the first N images of each class (None: all). Never commit the file.
    """
    if path.exists():
        return path
    from entropi.host.data import load_dataset

    arrays = {}
    for split, k in (("train", train_per_class), ("test", test_per_class)):
        ds = load_dataset("cifar100", split, datasets, progress=False)
        keep = np.arange(len(ds.y))
        if k is not None:
            keep = np.sort(np.concatenate([np.flatnonzero(ds.y == c)[:k] for c in range(100)]))
        arrays[f"x_{split}"] = np.ascontiguousarray(ds.x[keep])
        arrays[f"y_{split}"] = ds.y[keep].astype(np.int64)
        names = ds.classes
    arrays["class_names"] = np.asarray(names)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def process_rss(data: Path, epochs: int) -> dict:
    """Peak RSS of `entropi-device train` with a smallnet TFLite bundle (LiteRT loaded)."""
    from entropi.device.bundle import write_bundle

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        # Convert in a separate process: a process that has run the converter holds ~600 MB,
        # and a child spawned from it reported that as its own peak RSS.
        subprocess.run(
            [sys.executable, "-c", _CONVERT, str(d / "enc.tflite")], check=True, capture_output=True
        )
        bundle = write_bundle(
            d / "bundle",
            encoder_files={"encoder.tflite": d / "enc.tflite"},
            input_shape=[3, 32, 32],
            normalization={"mean": [0.507, 0.487, 0.441], "std": [0.267, 0.256, 0.276]},
            feature_dim=256,
            provenance={"note": "random-init smallnet, benchmark only"},
        )
        with np.load(data) as z:
            n_images = {k: z[k].shape[0] for k in z.files if k.startswith("y_")}
        t0 = time.perf_counter()
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    DEVICE_CLI_PEAK_RSS,
                    "train",
                    "--bundle",
                    str(bundle),
                    "--data",
                    str(data),
                    "--budget",
                    "256KB",
                    "--momentum",
                    "0",
                    "--weight-decay",
                    "0",
                    "--epochs",
                    str(epochs),
                    "--out",
                    str(d / "head"),
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, **ONE_THREAD},
            )
            stdout, _ = proc.communicate()
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                err.seek(0)
                raise RuntimeError(err.read().decode())
        rss_kb = int(stdout.decode().strip().splitlines()[-1])
        from entropi.device.app import TrainReport

        summary = TrainReport.read(d / "head").summary()

    return {
        "peak_rss_bytes": rss_kb * 1024,
        "peak_rss_mb": rss_kb / 1024,
        "rss_measured_with": "VmHWM of the process running entropi.device.cli.main (the "
        "entropi-device entry point), read from /proc/self/status at exit",
        "goal_mb": 64,
        "encoder": "smallnet (256 features), TFLite via litert-torch, fixed batch 32",
        "data": str(data),
        "data_bytes": data.stat().st_size,
        "images": n_images,
        "epochs": epochs,
        "wall_seconds": wall,
        "train_json": summary,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument(
        "--out", default=str(HERE.parent / "benchmarks" / "results" / "device_head.json")
    )
    p.add_argument("--datasets", default="/work/shared/datasets", help="holds cifar-100-python")
    p.add_argument("--data-dir", default="/tmp", help="where the CIFAR-100 .npz files go")
    p.add_argument("--only-rss", action="store_true", help="only the process RSS runs")
    a = p.parse_args(argv)
    q = a.quick
    dd, ds = Path(a.data_dir), Path(a.datasets)
    quick_npz = cifar100_npz(dd / "entropi_cifar100_quickstart.npz", ds, 50, 20)
    full_npz = cifar100_npz(dd / "entropi_cifar100_full.npz", ds, None, None)
    rss = {
        "quickstart_5000": process_rss(quick_npz, 2 if q else 10),
        "full_50000": process_rss(full_npz, 1 if q else 3),
    }
    if a.only_rss:
        print(json.dumps(rss, indent=2))
        return 0
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "load_average": os.getloadavg(),
        },
        "shapes": {"feature_dim": D, "classes": C},
        "memory_256kb": memory_256kb(2000 if q else 10_000, 2 if q else 5),
        "speed_one_thread": speed(300 if q else 3000, 3 if q else 7),
        "process": rss,
        "command": "python scripts/device_head_bench.py" + (" --quick" if q else ""),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
