"""Crash consistency, measured: SIGKILL `entropi run` and `entropi-device train` at seeded random
moments, resume, and compare with an uninterrupted run.

    python scripts/crash_sweep.py --points 20 --out benchmarks/results/crash_sweep.json

For each command an uninterrupted reference run is timed first. Each kill point is then a fresh
run killed (SIGKILL, no chance to clean up) after ``u x T`` seconds, ``u`` drawn uniformly from
[0.02, 0.98] with ``--seed`` and ``T`` the reference's wall time. Right after the kill every
artifact under its final name must be whole (each ``.json`` parses, each ``.npz``/``.npy``
loads, each ``.pt`` loads with ``weights_only``); then the run is resumed to the end and must
match the reference: the same rung table (alphas, nnz, source and probe accuracies, every
criterion), the same selection and bit-identical head weights, with no temporary files left
(``.NAME.*.tmp``/``.old``). The stage a kill hit is the last line of ``progress.log`` (host) or
whether a checkpoint existed (device).

The data is made here (a tiny three-class image folder) and the host config is the test suite's
tiny one, so one kill point costs two short runs; ``tests/test_crash.py`` runs a few points of
both commands in CI, this script the full sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TEMP_SUFFIXES = (".tmp", ".old")


def write_images(root: Path, *, classes=3, train_per_class=16, test_per_class=6, seed=0) -> Path:
    """``root/{train,test}/<class>/*.png``, the colour of an image its class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                img = rng.integers(0, 80, (32, 32, 3))
                img[..., c % 3] += 120
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i:04d}.png")
    return root


def write_config(path: Path, images: Path) -> Path:
    """The tiny host config of the tests (2 pretraining epochs, 4 rungs, ONNX, 64 KB head)."""
    from entropi.host.run.config import config_from_dict, config_to_toml

    cfg = config_from_dict(
        {
            "name": "crash",
            "seed": 0,
            "device": "cpu",
            "data": {"source": f"imagefolder:{images}", "target": f"imagefolder:{images}"},
            "pretrain": {"arch": "smallnet", "epochs": 2, "batch_size": 16, "lr": 0.05},
            "prune": {"keep_per_round": 0.5, "alpha_min": 0.1, "retrain_epochs": 1},
            "probe": {"epochs": 3, "batch_size": 16, "repeats": 2},
            "select": {"resamples": 4},
            "export": {"formats": ["onnx"], "verify_images": 4},
            "device_train": {"epochs": 3, "budget": "64KB", "batch_size": 8},
        }
    )
    path.write_text(config_to_toml(cfg))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ENTROPI_QUIET": "1"}


def host_command(config: Path, out: Path, *, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "entropi.host.cli", "run", str(config), "--out", str(out)]
    return cmd + (["--resume"] if resume else [])


def device_command(
    bundle: Path, data: Path, out: Path, *, resume: bool = False, epochs: int = 300
) -> list[str]:
    cmd = [sys.executable, "-m", "entropi.device.cli", "train", "--bundle", str(bundle)]
    cmd += ["--data", str(data), "--out", str(out), "--epochs", str(epochs)]
    cmd += ["--checkpoint-every", "5", "--patience", "0"]  # length set by epochs alone
    return cmd + (["--resume"] if resume else [])


def run_to_end(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return time.perf_counter() - t0


def kill_after(cmd: list[str], seconds: float) -> bool:
    """Start ``cmd``, SIGKILL it after ``seconds``; False when it had already finished."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        p.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        return True


def temporaries(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name.endswith(TEMP_SUFFIXES)
    )


def broken_artifacts(folder: Path) -> list[str]:
    """Files under their final names that do not load (a half-written file would be here)."""
    import torch

    bad = []
    for p in folder.rglob("*"):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    for k in z.files:
                        z[k]
            elif p.suffix == ".npy":
                np.load(p, allow_pickle=False, mmap_mode="r")
            elif p.suffix == ".pt":
                torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            bad.append(f"{p.relative_to(folder)}: {type(e).__name__}")
    return bad


RUNG_KEYS = ("alpha", "nnz", "source_accuracy", "probe_accuracy", "criteria")


def host_outcome(run: Path) -> dict:
    """What an uninterrupted and a resumed run must agree on."""
    from entropi.host.run.records import load_results

    res = load_results(run / "results.json")
    with np.load(run / "head" / "head.npz", allow_pickle=False) as z:
        head = {k: z[k] for k in z.files}
    return {
        "rungs": [{k: getattr(r, k) for k in RUNG_KEYS} for r in res.rungs],
        "selected_index": res.selected_index,
        "head": head,
    }


def device_outcome(out: Path) -> dict:
    with np.load(out / "head.npz", allow_pickle=False) as z:
        head = {k: z[k] for k in z.files}
    report = json.loads((out / "train.json").read_text())
    return {"head": head, "history": report.get("history")}


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def _host_stage(run: Path) -> str:
    log = run / "progress.log"
    if not log.is_file() or not log.read_text().strip():
        return "start"
    last = log.read_text().strip().splitlines()[-1].split(" ", 2)[-1]
    return last.split(":", 1)[0]


def _sweep(work, name, command, outcome, stage, resumable, points, seed, log) -> dict:
    """Reference run of ``command(out, resume)``, then ``points`` killed-and-resumed runs, each
    compared with it by ``outcome(out)``; ``stage(out)`` names where a kill landed and
    ``resumable(out)`` whether a killed run left something to resume."""
    ref = work / f"{name}-ref"
    seconds = run_to_end(command(ref, False))
    want = outcome(ref)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(points):
        out = work / f"{name}-{k:02d}"
        delay = float(rng.uniform(0.02, 0.98)) * seconds
        killed = kill_after(command(out, False), delay)
        row = {
            "point": k,
            "kill_after_s": round(delay, 2),
            "killed": killed,
            "stage": stage(out) if killed else "finished",
            "broken_after_kill": broken_artifacts(out) if out.exists() else [],
        }
        run_to_end(command(out, resumable(out)))
        row["identical"] = same(outcome(out), want)
        row["temporaries_left"] = temporaries(out)
        rows.append(row)
        log(f"{name} point {k}: {row}")
    return {"reference_seconds": seconds, "points": rows, "ref": ref}


def sweep_host(work: Path, points: int, seed: int, log=print) -> dict:
    images = write_images(work / "images")
    config = write_config(work / "crash.toml", images)
    out = _sweep(
        work,
        "host",
        lambda out, resume: host_command(config, out, resume=resume),
        host_outcome,
        _host_stage,
        lambda out: (out / "config.toml").is_file(),
        points,
        seed,
        log,
    )
    return {"command": "entropi run", **out}


def sweep_device(
    work: Path, bundle: Path, data: Path, points: int, seed: int, log=print, epochs: int = 300
):
    def has_checkpoint(out: Path) -> bool:
        return (out / ".work" / "checkpoint.npz").is_file()

    out = _sweep(
        work,
        "device",
        lambda out, resume: device_command(bundle, data, out, resume=resume, epochs=epochs),
        device_outcome,
        lambda out: "training" if has_checkpoint(out) else "features",
        has_checkpoint,
        points,
        seed,
        log,
    )
    out.pop("ref")
    return {"command": "entropi-device train", **out}


def device_inputs(host_ref: Path, work: Path) -> tuple[Path, Path]:
    """The reference run's bundle and its target images as an ``.npz`` for the device."""
    from PIL import Image

    bundle = next(p.parent for p in host_ref.rglob("manifest.json"))
    xs, ys = [], []
    root = work / "images" / "train"
    for c, d in enumerate(sorted(root.iterdir())):
        for f in sorted(d.iterdir()):
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(c)
    # ten noisy copies of each image: long enough a training that most kills land in it
    rng = np.random.default_rng(0)
    x = np.repeat(np.stack(xs), 10, axis=0).astype(np.int16)
    x = np.clip(x + rng.integers(-20, 21, x.shape), 0, 255).astype(np.uint8)
    data = work / "device.npz"
    np.savez(data, x_train=x, y_train=np.repeat(np.array(ys, np.int64), 10))
    return bundle, data


def summarize(sweeps: list[dict]) -> list[dict]:
    table = []
    for s in sweeps:
        stages: dict[str, list[dict]] = {}
        for r in s["points"]:
            stages.setdefault(r["stage"], []).append(r)
        for stage, rows in stages.items():
            table.append(
                {
                    "command": s["command"],
                    "stage": stage,
                    "kill_points": len(rows),
                    "identical": sum(r["identical"] for r in rows),
                    "broken_after_kill": sum(bool(r["broken_after_kill"]) for r in rows),
                    "temporaries_left": sum(bool(r["temporaries_left"]) for r in rows),
                }
            )
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=20, help="kill points per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/crash-sweep", help="scratch folder (emptied)")
    ap.add_argument("--out", default="benchmarks/results/crash_sweep.json")
    a = ap.parse_args(argv)
    import shutil

    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    host = sweep_host(work, a.points, a.seed)
    bundle, data = device_inputs(host.pop("ref"), work)
    dev = sweep_device(work, bundle, data, a.points, a.seed)
    import torch

    doc = {
        "points_per_command": a.points,
        "seed": a.seed,
        "table": summarize([host, dev]),
        "sweeps": [host, dev],
        "seconds": time.perf_counter() - t0,
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }
    from entropi.common.files import atomic_write_json

    atomic_write_json(a.out, doc)
    for row in doc["table"]:
        print(row)
    ok = all(
        r["identical"] and not r["broken_after_kill"] and not r["temporaries_left"]
        for s in (host, dev)
        for r in s["points"]
    )
    print(f"{'all identical' if ok else 'MISMATCH'}; {doc['seconds']:.0f}s; written {a.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
