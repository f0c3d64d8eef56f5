"""int8 against float32 on the device: file size, feature error, head accuracy, latency, RSS.

Run: ``.venv/bin/python scripts/int8_deploy.py --run runs/quickstart`` (after
``entropi run host/configs/quickstart.toml``); writes ``benchmarks/results/int8_deploy.json``.

1. The quickstart run's selected rung: ``entropi bundle --quantize`` of the compact form, float32
   and int8 (TFLite + ONNX), the export's feature error of the int8 files on real target test
   images, the downstream probe accuracy on float vs int8 features (export.json
   ``downstream``), and the device head trained on each bundle in the run's ``[device_train]``
   budget (256 KB) on the same data, evaluated on the same test split.
2. Latency and peak RSS of the device encoder, float-compact vs int8-compact TFLite, for that
   rung and for ResNet18 and MobileNetV3-small pruned to alpha 0.01 (random init, randomized
   batch-norm statistics, global magnitude pruning; calibrated on uniform random pixels): a
   fresh process per file opens it with the device's ``EncoderRunner`` (one thread) and runs
   ``--images`` one-image calls; it reports the median call time and its RSS before opening
   the file and at the end (VmRSS, VmHWM from /proc/self/status), next to the RAM the graph
   says it needs (``entropi select``'s rule: activation peak + densified weights; the RSS delta
   also holds the interpreter's code pages and the dense copy of every weight it prepares).
   The RAM check (``ram_check``): each delta less that of a one-layer file (the interpreter's
   fixed cost, ``interpreter_fixed_rss_bytes``) against the graph's rule.
   Float and int8 processes
   alternate, ``--repeats`` times; the table gives medians and the int8 / float ratio (same
   machine, same run: the ratio is what to read on this shared, noisy host).
3. ``forms``: the same measures for the compact form (remaining pruned weights stored sparse,
   rebuilt by DENSIFY at load) against the compact-dense form (stored dense, read in place),
   float32 and int8, for the quickstart rung and each synthetic encoder; their processes
   alternate too (``compact_dense_over_compact``: the ratios).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "benchmarks" / "results" / "int8_deploy.json"

_PROBE = r"""
import json, sys, time
import numpy as np
def status():
    d = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            d[k] = int(v.split()[0]) * 1024
    return d
from entropi.device.encoder import EncoderRunner
path, fmt, dim, n, quant = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
quant = json.loads(quant) if quant != "-" else None
x = np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)
before = status()
runner = EncoderRunner(path, fmt, dim, num_threads=1, quantization=quant)
runner(x[:1])
times = []
for i in range(n):
    t0 = time.perf_counter()
    runner(x[i : i + 1])
    times.append(time.perf_counter() - t0)
after = status()
times.sort()
print(json.dumps({"median_ms": 1000 * times[len(times) // 2], "rss_before": before["VmRSS"],
                  "rss_after": after["VmRSS"], "hwm": after["VmHWM"]}))
"""


def measure(path: Path, dim: int, quant, n: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            str(path),
            "tflite",
            str(dim),
            str(n),
            json.dumps(quant) if quant else "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def paired(files: dict[str, tuple[Path, int, dict | None]], n: int, repeats: int) -> dict:
    """Alternate the files' processes ``repeats`` times; medians per file."""
    runs: dict[str, list[dict]] = {k: [] for k in files}
    for _ in range(repeats):
        for key, (path, dim, quant) in files.items():
            runs[key].append(measure(path, dim, quant, n))
    from entropi.export.footprint import tflite_footprint

    out = {}
    for key, rs in runs.items():
        fp = tflite_footprint(files[key][0])
        out[key] = {
            "file_bytes": files[key][0].stat().st_size,
            "graph_activation_peak_bytes": fp["activation_peak_bytes"],
            "graph_densified_bytes": fp["densified_bytes"],
            "latency_ms": statistics.median(r["median_ms"] for r in rs),
            "rss_delta_bytes": int(statistics.median(r["rss_after"] - r["rss_before"] for r in rs)),
            "peak_rss_bytes": int(statistics.median(r["hwm"] for r in rs)),
            "runs": rs,
        }
    return out


def quickstart(run: Path, work: Path) -> dict:
    from entropi.device.app import train_on_bundle
    from entropi.host.deployment.rung_export import (
        bundle_rung,
        ensure_export,
        int8_downstream,
        run_target,
    )
    from entropi.host.run.config import load_config
    from entropi.host.run.rundir import RunDir

    cfg = load_config(run / "config.toml")
    rd = RunDir(run)
    tgt = run_target(rd)
    bundles = {}
    for dtype in ("float32", "int8"):
        bundles[dtype] = bundle_rung(
            run, work / f"bundle-{dtype}", form="compact", dtype=dtype, overwrite=True
        )
    export_dir, info = ensure_export(run, "selected", quantize="int8", forms=FORMS)
    if not isinstance(info.get("downstream"), dict):
        info["downstream"] = int8_downstream(export_dir, info, tgt, cfg.probe, seed=cfg.seed)
        rd.write_json(export_dir / "export.json", info)
    heads = {}
    for dtype, bundle in bundles.items():
        report = train_on_bundle(bundle, rd.target_data, work / f"head-{dtype}", cfg.head_training)
        r = report.to_dict()
        heads[dtype] = {
            k: r[k]
            for k in (
                "accuracy",
                "accuracy_split",
                "peak_bytes",
                "budget_bytes",
                "samples_per_second",
            )
        }
    files = {k: v for k, v in info["files"].items()}
    dense_float = info["dense_bytes"]
    int8_file = files["encoder_compact_int8.tflite"]["bytes"]
    return {
        "rung": info["provenance"]["rung_index"],
        "alpha": info["provenance"]["alpha"],
        "dense_float_bytes": dense_float,
        "files": {
            k: {
                kk: v[kk] for kk in ("bytes", "dtype", "feature_error", "sparse_tensors") if kk in v
            }
            for k, v in files.items()
        },
        "int8_tflite_over_dense_float": int8_file / dense_float,
        "downstream": info["downstream"],
        "device_head": heads,
        "head_delta_points": 100 * (heads["int8"]["accuracy"] - heads["float32"]["accuracy"]),
        "bundles": {k: str(v) for k, v in bundles.items()},
    }


def synthetic_export(arch: str, alpha: float, work: Path) -> Path:
    """``arch`` random init, batch norms randomized, global magnitude pruned to ``alpha``
    (:func:`entropi.benchmarks.synthetic_models.synthetic_encoder`), exported compact and
    compact-dense (float + int8 TFLite)."""
    from entropi.benchmarks.synthetic_models import fake_rung_meta, synthetic_encoder
    from entropi.export import export_encoder

    enc = synthetic_encoder(arch, alpha=alpha, seed=0)
    info = fake_rung_meta(enc, arch, alpha_target=alpha)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    out = work / f"export-{arch}"
    export_encoder(
        enc,
        info,
        out,
        formats=["tflite"],
        forms=FORMS,
        verify_images=pixels[:16],
        quantize="int8",
        calibration_images=pixels[16:],
        min_cosine=0.9,
    )
    return out


FORMS = ("sparse", "compact", "compact-dense")
DTYPES = ("float32", "int8")


def forms_rows(export: Path, n: int, repeats: int) -> dict:
    """compact vs compact-dense of the export in ``export``, float32 and int8 (:func:`paired`:
    the four processes alternate)."""
    meta = json.loads((export / "export.json").read_text())
    files, dim = meta["files"], meta["provenance"]["feature_dim"]
    from entropi.export.formats import ENCODER_FORMS, FORMATS

    todo = {}
    for form in ("compact", "compact-dense"):
        name = {d: FORMATS["tflite"].filename(ENCODER_FORMS[form].stem, d) for d in DTYPES}
        todo[f"{form} float32"] = (export / name["float32"], dim, None)
        todo[f"{form} int8"] = (export / name["int8"], dim, files[name["int8"]]["quantization"])
    rows = paired(todo, n, repeats)
    rows["compact_dense_over_compact"] = {
        dtype: {
            key: rows[f"compact-dense {dtype}"][key] / rows[f"compact {dtype}"][key]
            for key in ("file_bytes", "latency_ms", "rss_delta_bytes")
        }
        for dtype in DTYPES
    }
    return rows


def fixed_cost_file(work: Path) -> Path:
    """A one-layer TFLite file (1x1 conv 3 -> 4, global average pool) of the same input shape:
    its RSS delta is what the interpreter costs whatever the model (code pages, XNNPACK's
    delegate, allocator), subtracted from each file's delta before comparing it to the graph."""
    import torch

    from entropi.export import convert_tflite

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    path = work / "fixed_cost.tflite"
    path.write_bytes(convert_tflite(net, torch.zeros(1, 3, 32, 32)))
    return path


def rss_check(row: dict, fixed: int) -> dict:
    """The graph's RAM rule (activation peak + densified weights) against the RSS delta less
    the interpreter's fixed cost."""
    graph = row["graph_activation_peak_bytes"] + row["graph_densified_bytes"]
    model_rss = row["rss_delta_bytes"] - fixed
    return {
        "graph_ram_bytes": graph,
        "rss_delta_less_fixed_bytes": model_rss,
        "rss_over_graph": model_rss / max(1, graph),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/quickstart")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--archs", nargs="*", default=["resnet18", "mobilenetv3_small"])
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    import os

    from entropi.common.provenance import cpu_model, versions

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="entropi-int8-") as tmp:
        work = Path(tmp)
        qs = quickstart(Path(a.run), work)
        manifest = json.loads((Path(qs["bundles"]["int8"]) / "manifest.json").read_text())
        quant = manifest["encoders"]["encoder_compact_int8.tflite"]["quantization"]
        export = Path(a.run) / "export"
        dim = manifest["feature_dim"]
        latency = {
            "quickstart": paired(
                {
                    "float32": (export / "encoder_compact.tflite", dim, None),
                    "int8": (export / "encoder_compact_int8.tflite", dim, quant),
                },
                a.images,
                a.repeats,
            )
        }
        from entropi.export import ExportError

        for arch in a.archs:
            try:
                out = synthetic_export(arch, 0.01, work)
            except ExportError as e:  # e.g. not full-integer: recorded, not measured
                latency[arch] = {"refused": str(e)}
                print(f"{arch}: int8 export refused: {e}")
                continue
            meta = json.loads((out / "export.json").read_text())
            q = meta["files"]["encoder_compact_int8.tflite"]["quantization"]
            fdim = meta["provenance"]["feature_dim"]
            latency[arch] = paired(
                {
                    "float32": (out / "encoder_compact.tflite", fdim, None),
                    "int8": (out / "encoder_compact_int8.tflite", fdim, q),
                },
                a.images,
                a.repeats,
            )
            latency[arch]["alpha"] = meta["provenance"]["alpha"]
            latency[arch]["int8_feature_error"] = meta["files"]["encoder_compact_int8.tflite"][
                "feature_error"
            ]
        forms = {"quickstart": forms_rows(export, a.images, a.repeats)}
        for arch in a.archs:
            if "refused" not in latency[arch]:
                forms[arch] = forms_rows(work / f"export-{arch}", a.images, a.repeats)
        fixed_path = fixed_cost_file(work)
        fixed_runs = [measure(fixed_path, 4, None, a.images) for _ in range(a.repeats)]
        fixed = int(statistics.median(r["rss_after"] - r["rss_before"] for r in fixed_runs))
        for row in latency.values():
            if "refused" in row:
                continue
            for dtype in ("float32", "int8"):
                row[dtype]["ram_check"] = rss_check(row[dtype], fixed)
            row["int8_over_float"] = {
                "latency": row["int8"]["latency_ms"] / row["float32"]["latency_ms"],
                "rss_delta": row["int8"]["rss_delta_bytes"]
                / max(1, row["float32"]["rss_delta_bytes"]),
                "file": row["int8"]["file_bytes"] / row["float32"]["file_bytes"],
            }
        for rows in forms.values():
            for key, row in rows.items():
                if key != "compact_dense_over_compact":
                    row["ram_check"] = rss_check(row, fixed)
        qs.pop("bundles")
    result = {
        "command": "python scripts/int8_deploy.py " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "python": platform.python_version(),
        "versions": versions(
            ["entropi", "numpy", "torch", "ai-edge-litert", "litert-torch", "onnxruntime"]
        ),
        "seconds": time.time() - t0,
        "quickstart": qs,
        "latency_rss": latency,
        "forms": forms,
        "interpreter_fixed_rss_bytes": fixed,
        "conventions": __doc__,
    }
    from entropi.common.files import atomic_write_json

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(a.out), result)
    print(
        json.dumps(
            {
                "quickstart": {
                    k: qs[k] for k in ("rung", "int8_tflite_over_dense_float", "head_delta_points")
                },
                "ratios": {
                    k: v.get("int8_over_float", v.get("refused")) for k, v in latency.items()
                },
                "compact_dense_over_compact": {
                    k: v["compact_dense_over_compact"] for k, v in forms.items()
                },
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
