"""Peak RSS of `entropi-device train` on an image folder: 1,000 vs 10,000 files.

Run: ``.venv/bin/python scripts/device_rss.py`` (writes ``benchmarks/results/device_rss.json``).
Writes, in a temp folder, a synthetic ``<root>/<class>/*.png`` folder of N images of mixed sizes
(28x28, 40x30, 32x32, 50x17, 64x48) and modes (a third grayscale, some RGBA), and a bundle with a
random-init smallnet ONNX encoder (exported in a separate process) that takes 32x32; then runs
``entropi-device train --bundle B --data FOLDER --out H --epochs 1`` in a fresh process per N
and reads that process's VmHWM (peak RSS since exec) from ``/proc/self/status``. The device
streams the folder (only the file list is held, images are decoded a chunk at a time and
resized with the bundle's preprocessing), so the peak should not grow with N: the issue asks
for the 10k peak within 10% of the 1k peak.
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

from entropi.benchmarks.machine import DEVICE_CLI_PEAK_RSS, ONE_THREAD

HERE = Path(__file__).resolve().parent
SIZES = [(28, 28), (40, 30), (32, 32), (50, 17), (64, 48)]  # (H, W)
CLASSES = 10
_EXPORT = (
    "import sys, torch\n"
    "from entropi.host.ladder.models import build_encoder\n"
    "torch.manual_seed(0)\n"
    "enc = build_encoder('smallnet').eval()\n"
    "torch.onnx.export(enc, (torch.randn(2, 3, 32, 32),), sys.argv[1], dynamo=True,\n"
    "    external_data=False, dynamic_shapes=({0: torch.export.Dim('n')},))\n"
)


def write_folder(root: Path, n: int, seed: int = 0) -> Path:
    """``root/<class>/NNNNN.png``: ``n`` PNGs, class-coloured noise, mixed sizes and modes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (root / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % CLASSES
        h, w = SIZES[i % len(SIZES)]
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        img[..., c % 3] += np.uint8(120 + 10 * (c // 3))
        pil = Image.fromarray(img)
        if i % 3 == 0:
            pil = pil.convert("L")
        elif i % 7 == 1:
            pil = pil.convert("RGBA")
        pil.save(root / f"c{c:02d}" / f"{i:05d}.png", compress_level=1)
    return root


def make_bundle(d: Path) -> Path:
    from entropi.device.bundle import write_bundle

    subprocess.run(
        [sys.executable, "-c", _EXPORT, str(d / "enc.onnx")], check=True, capture_output=True
    )
    return write_bundle(
        d / "bundle",
        encoder_files={"encoder.onnx": d / "enc.onnx"},
        input_shape=[3, 32, 32],
        normalization={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        feature_dim=256,
        provenance={"note": "random-init smallnet, benchmark only"},
    )


def peak_rss(bundle: Path, data: Path, out: Path, epochs: int = 1) -> dict:
    """VmHWM (bytes) and wall time of one `entropi-device train` process."""
    argv = ["train", "--bundle", str(bundle), "--data", str(data), "--out", str(out)]
    argv += ["--epochs", str(epochs)]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_CLI_PEAK_RSS, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **ONE_THREAD},
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    report = json.loads((out / "train.json").read_text())
    return {
        "peak_rss_bytes": int(proc.stdout.strip().splitlines()[-1]) * 1024,
        "wall_seconds": round(wall, 2),
        "feature_seconds": round(report["feature_seconds"], 2),
        "n_train": report["n_train"],
        "n_val": report["n_val"],
    }


def measure(sizes: list[int], work: Path) -> dict:
    """Peak RSS per folder size (one bundle), and the ratio of the largest to the smallest."""
    bundle = make_bundle(work)
    runs = {}
    for n in sizes:
        t0 = time.perf_counter()
        folder = write_folder(work / f"folder_{n}", n)
        write_s = time.perf_counter() - t0
        run = peak_rss(bundle, folder, work / f"head_{n}")
        runs[str(n)] = {**run, "write_seconds": round(write_s, 2)}
    lo, hi = runs[str(min(sizes))], runs[str(max(sizes))]
    return {
        "runs": runs,
        "ratio_largest_to_smallest": hi["peak_rss_bytes"] / lo["peak_rss_bytes"],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="folder sizes")
    p.add_argument("--out", default=str(HERE.parent / "benchmarks" / "results" / "device_rss.json"))
    a = p.parse_args(argv)
    import numpy as np
    import PIL

    from entropi.common.provenance import cpu_model, package_version

    with tempfile.TemporaryDirectory() as d:
        res = measure(sorted(a.sizes), Path(d))
    import onnxruntime

    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "versions": {
            "entropi": package_version(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "setup": {
            "images": "synthetic PNGs, sizes (HxW) "
            + ", ".join(f"{h}x{w}" for h, w in SIZES)
            + "; every 3rd grayscale, some RGBA",
            "classes": CLASSES,
            "encoder": "random-init smallnet ONNX, input 32x32, preprocess resize/bilinear",
            "epochs": 1,
            "threads": 1,
        },
        **res,
        "within_10_percent": res["ratio_largest_to_smallest"] <= 1.10,
        "command": "python scripts/device_rss.py"
        + ("" if a.sizes == [1000, 10000] else " --sizes " + " ".join(map(str, a.sizes))),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
