"""Training throughput of :func:`entropi.host.ladder.train.train` on 1 and 2 CPU processes (DDP,
gloo).

    nice -n 10 python scripts/ddp_throughput.py --out benchmarks/results/ddp_throughput.json

Metric: images/s = (epochs x training images) / wall seconds of one ``train()`` call (the
``TrainStats.samples_per_second`` it returns; it includes the DDP setup of that call), the
median of ``--repeats`` calls after one warm-up call, each setting in a fresh process group:

- ``1 process x 1 thread`` and ``1 process x 2 threads``: plain ``train()``;
- ``2 processes x 1 thread``: ``torchrun --standalone --nproc-per-node 2`` running the same
  ``train()``, every process on its half of each global batch (same global batch, same LR).

``speedup_2proc`` = images/s of 2 processes x 1 thread / images/s of 1 process x 1 thread (the
same cores per process); ``vs_2_threads`` compares with one process using both cores. The data
is synthetic (seeded uniform uint8 32x32 images, 10 classes): throughput does not depend on the
pixel values. On a shared machine the numbers are noisy; the spread of the repeats is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = {  # name -> (processes, threads per process)
    "1 process x 1 thread": (1, 1),
    "1 process x 2 threads": (1, 2),
    "2 processes x 1 thread": (2, 1),
}


def worker(args: argparse.Namespace) -> None:
    """One setting: ``--repeats`` timed ``train()`` calls; rank 0 writes ``--result``."""
    import torch

    from entropi.host.data import CIFAR10_MEAN, CIFAR10_STD
    from entropi.host.ladder.models import build_model
    from entropi.host.ladder.train import train
    from entropi.host.run import distributed
    from entropi.host.run.config import PretrainConfig

    torch.set_num_threads(args.threads)
    distributed.init()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 32, 32, 3), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)
    cfg = PretrainConfig(arch=args.arch, epochs=args.epochs, batch_size=args.batch, lr=0.05)
    torch.manual_seed(0)
    model = build_model(args.arch, 10)
    norm = {"mean": CIFAR10_MEAN, "std": CIFAR10_STD}
    warm = PretrainConfig(arch=args.arch, epochs=1, batch_size=args.batch, lr=0.05)
    train(model, x[: 2 * args.batch], y[: 2 * args.batch], warm, **norm, desc="warm-up")
    rates = [
        train(model, x, y, cfg, **norm, seed=k, desc="timed").samples_per_second
        for k in range(args.repeats)
    ]
    if distributed.is_main():
        Path(args.result).write_text(json.dumps(rates))
    distributed.shutdown()


def run_setting(procs: int, threads: int, args: argparse.Namespace, tmp: Path) -> list[float]:
    result = tmp / f"p{procs}t{threads}.json"
    worker_args = [
        str(HERE / "ddp_throughput.py"), "--worker", "--threads", str(threads),
        "--arch", args.arch, "--images", str(args.images), "--batch", str(args.batch),
        "--epochs", str(args.epochs), "--repeats", str(args.repeats), "--result", str(result),
    ]  # fmt: skip
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc-per-node", str(procs), *worker_args]
    else:
        cmd = [sys.executable, *worker_args]
    env = {**os.environ, "ENTROPI_QUIET": "1", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stderr[-4000:]}")
    return json.loads(result.read_text())


def measure(args: argparse.Namespace) -> dict:
    from entropi.common.provenance import cpu_model, versions

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (procs, threads) in SETTINGS.items():
            rates = run_setting(procs, threads, args, Path(tmp))
            results[name] = {
                "processes": procs,
                "threads_per_process": threads,
                "images_per_second": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "repeats": rates,
            }
    one = results["1 process x 1 thread"]["images_per_second"]
    two = results["2 processes x 1 thread"]["images_per_second"]
    both = results["1 process x 2 threads"]["images_per_second"]
    return {
        "command": "nice -n 10 python scripts/ddp_throughput.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metric": "images/s = epochs x images / wall seconds of one train() call (median of "
        "repeats, after a warm-up call)",
        "workload": {
            "arch": args.arch,
            "images": args.images,
            "input": "32x32x3 uint8, synthetic",
            "global_batch": args.batch,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "backend": "gloo (CPU)",
        },
        "machine": {
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "note": "shared machine (other jobs ran at the same time): noisy",
        },
        "versions": versions(["torch", "numpy", "entropi"]),
        "settings": results,
        "speedup_2proc": two / one,
        "vs_2_threads": two / both,
    }


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="smallnet")
    p.add_argument("--images", type=int, default=1024, help="training images per epoch")
    p.add_argument("--batch", type=int, default=64, help="global batch size")
    p.add_argument("--epochs", type=int, default=1, help="epochs per timed train() call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/ddp_throughput.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return None
    from entropi.common.files import atomic_write_json

    doc = measure(args)
    atomic_write_json(Path(args.out), doc)
    for name, r in doc["settings"].items():
        print(f"{name:<24} {r['images_per_second']:8.1f} images/s ({r['min']:.1f}-{r['max']:.1f})")
    print(f"2 processes / 1 process (1 thread each): {doc['speedup_2proc']:.2f}x; {args.out}")
    return doc


if __name__ == "__main__":
    main()
