"""Export experiment: file sizes vs the information floor, and dense vs compact inference.

    .venv/bin/python scripts/export_bench.py [--repeats 200] [--quick]

writes ``benchmarks/results/export.json`` and ``export.md``. For ResNet18 and MobileNetV3-small
(random weights, random BN statistics) pruned to alpha = 0.01 with one global magnitude mask, in
two variants:

- ``magnitude``: global magnitude pruning only. With random weights few channels lose all their
  weights, so compaction has little to remove.
- ``dead_channels``: first every conv/linear layer loses a random half of its output channels
  (all weights zero), then global magnitude pruning to alpha = 0.01. This imitates what IMP does
  to a trained network at alpha ~ 0.01 (whole channels die); it is a synthetic stand-in. A dead
  channel outputs its BN shift, so about half of them are positive constants after ReLU; the
  compact form removes them too, adding their contribution back as biases and, behind
  zero-padded convs, constant bias maps (see ``entropi.export.compact``).

plus, when ``runs/quickstart`` has a ladder, its selected rung (a real IMP-pruned smallnet).

Sizes: dense ONNX / sparse ONNX / dense TFLite / sparse TFLite / compact ONNX and TFLite, and
the floor = nnz x (4 + 4) bytes (float32 value + int32 index). Latency: one image (batch 1),
median over ``--repeats`` calls after 20 warm-up calls, one thread, each runtime in its own
subprocess that also reports its peak RSS (VmHWM) and the RSS before loading the model.
Speed-up = dense median / compact median in the same runtime.
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

from entropi.common.provenance import cpu_model, versions

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
CASES = [
    ("resnet18", "magnitude"),
    ("resnet18", "dead_channels"),
    ("mobilenetv3_small", "magnitude"),
    ("mobilenetv3_small", "dead_channels"),
]
ALPHA = 0.01
KILL_FRACTION = 0.5


def _worker(runtime: str, path: str, repeats: int) -> None:
    """Child process: load one model, time single-image inference, print JSON."""
    import resource

    def rss_mb() -> float:
        # VmHWM (peak RSS of this process image): ru_maxrss would carry the parent's peak
        # across fork + exec on Linux
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        base = rss_mb()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def call():
            return sess.run(None, {name: x})[0]
    else:
        from ai_edge_litert.interpreter import Interpreter

        base = rss_mb()
        interp = Interpreter(model_path=path, num_threads=1)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

        def call():
            interp.set_tensor(inp, x)
            interp.invoke()
            return interp.get_tensor(out)

    for _ in range(20):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    times_ms = np.array(times) * 1e3
    print(
        json.dumps(
            {
                "median_ms": float(np.median(times_ms)),
                "p10_ms": float(np.percentile(times_ms, 10)),
                "p90_ms": float(np.percentile(times_ms, 90)),
                "repeats": repeats,
                "peak_rss_mb": rss_mb(),
                "rss_before_model_mb": base,
            }
        )
    )


def measure(runtime: str, path: Path, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", runtime, str(path), str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def onnx_breakdown(path: Path) -> dict:
    """Bytes of a sparse ONNX file by kind: sparse weights, dense initializers, the rest."""
    import onnx

    model = onnx.load(path)
    sparse = sum(
        len(t.values.raw_data) + len(t.indices.raw_data) for t in model.graph.sparse_initializer
    )
    dense = sum(len(t.raw_data) + 4 * len(t.float_data) for t in model.graph.initializer)
    return {
        "sparse_values_and_int64_indices": sparse,
        "dense_initializers": dense,
        "graph_and_metadata": path.stat().st_size - sparse - dense,
    }


def build_case(arch: str, variant: str):
    from entropi.benchmarks.synthetic_models import fake_rung_meta, synthetic_encoder

    kill = KILL_FRACTION if variant == "dead_channels" else 0.0
    encoder = synthetic_encoder(arch, alpha=ALPHA, kill=kill)
    return encoder, fake_rung_meta(encoder, arch, source_dataset=f"synthetic ({variant})")


def run_case(name: str, encoder, meta, out: Path, repeats: int, config_sha256=None) -> dict:
    import torch

    from entropi.export import (
        DEFAULT_ATOL,
        DEFAULT_RTOL,
        compare_onnx_torch,
        compare_tflite_torch,
        convert_tflite,
        export_encoder,
        export_onnx,
        fold_batchnorm,
        sparsify_tflite,
    )

    t0 = time.perf_counter()
    result = export_encoder(encoder, meta, out, compact=True, config_sha256=config_sha256)
    export_s = time.perf_counter() - t0
    # the same (pruned) network stored dense, for the size and latency baseline
    folded = fold_batchnorm(encoder)
    example = torch.zeros(1, *result["provenance"]["input_shape"])
    x = np.random.default_rng(3).standard_normal((4, *example.shape[1:])).astype(np.float32)
    tol = {"atol": DEFAULT_ATOL, "rtol": DEFAULT_RTOL}
    onnx_dense, _ = export_onnx(folded, example, sparse=False, metadata={})
    (out / "dense.onnx").write_bytes(onnx_dense)
    compare_onnx_torch(out / "dense.onnx", encoder, x, **tol)
    tfl_dense, _ = sparsify_tflite(convert_tflite(folded, example), sparse=False)
    (out / "dense.tflite").write_bytes(tfl_dense)
    compare_tflite_torch(out / "dense.tflite", encoder, x, **tol)

    files = result["files"]
    floor = result["floor_bytes"]
    sizes = {
        "dense_onnx": len(onnx_dense),
        "sparse_onnx": files["encoder.onnx"]["bytes"],
        "dense_tflite": len(tfl_dense),
        "sparse_tflite": files["encoder.tflite"]["bytes"],
        "compact_onnx": files["encoder_compact.onnx"]["bytes"],
        "compact_tflite": files["encoder_compact.tflite"]["bytes"],
    }
    latency = {}
    breakdown = onnx_breakdown(out / "encoder.onnx")
    for runtime, ext in (("onnxruntime", "onnx"), ("litert", "tflite")):
        for form, fname in (
            ("dense", f"dense.{ext}"),
            ("sparse", f"encoder.{ext}"),
            ("compact", f"encoder_compact.{ext}"),
        ):
            latency[f"{runtime}/{form}"] = measure(runtime, out / fname, repeats)
    speedup = {
        rt: latency[f"{rt}/dense"]["median_ms"] / latency[f"{rt}/compact"]["median_ms"]
        for rt in ("onnxruntime", "litert")
    }
    return {
        "case": name,
        "arch": meta.arch,
        "alpha": result["provenance"]["alpha"],
        "nnz": result["nnz"],
        "n_weights": result["n_weights"],
        "dense_bytes": result["dense_bytes"],
        "floor_bytes": floor,
        "sizes_bytes": sizes,
        "size_over_floor": {k: v / floor for k, v in sizes.items()},
        "sparse_onnx_breakdown_bytes": breakdown,
        "sparse_tensors": {
            k: files[k]["sparse_tensors"] for k in ("encoder.onnx", "encoder.tflite")
        },
        "compact": result["compact"]
        and {
            k: result["compact"][k]
            for k in (
                "params_before",
                "params_after",
                "channels_before",
                "channels_after",
                "constant_channels_kept",
                "fixed_channels_removed",
                "bias_maps",
                "bias_map_floats",
                "channels_kept_for_alignment",
            )
        },
        "verification": {
            k: {"max_abs_diff": v["max_abs_diff"], "max_rel_diff": v["max_rel_diff"]}
            for k, v in files.items()
        },
        "latency": latency,
        "compact_speedup": speedup,
        "export_seconds": export_s,
    }


def _versions() -> dict:
    return versions(
        ["entropi", "torch", "onnx", "onnxruntime", "ai-edge-litert", "litert-torch", "numpy"]
    )


def _machine() -> dict:
    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
    }


def to_markdown(report: dict) -> str:
    lines = [
        "# Export benchmark",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores "
        f"(load average (1 min) at start {report['machine']['load_avg_at_start'][0]:.2f}, "
        f"at end {report['machine']['load_avg_at_end'][0]:.2f}; other processes were running); "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        report["conventions"],
        "",
        "## File sizes (bytes; ratio to the floor)",
        "",
        "| case | nnz | floor | dense ONNX | sparse ONNX | dense TFLite | sparse TFLite "
        "| compact ONNX | compact TFLite |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        s, q = r["sizes_bytes"], r["size_over_floor"]
        cells = [
            f"{s[k]:,} ({q[k]:.2f}x)"
            for k in (
                "dense_onnx",
                "sparse_onnx",
                "dense_tflite",
                "sparse_tflite",
                "compact_onnx",
                "compact_tflite",
            )
        ]
        lines.append(
            f"| {r['case']} | {r['nnz']:,} | {r['floor_bytes']:,} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "## Compaction",
        "",
        "| case | params before | params after | channels before | channels after "
        "| fixed channels removed (folded into biases / maps) | bias maps (floats) "
        "| fixed channels kept (read where also variable) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        c = r["compact"]
        lines.append(
            f"| {r['case']} | {c['params_before']:,} | {c['params_after']:,} | "
            f"{c['channels_before']} | {c['channels_after']} | "
            f"{c['fixed_channels_removed']} | {c['bias_maps']} ({c['bias_map_floats']:,}) | "
            f"{c['constant_channels_kept']} |"
        )
    lines += [
        "",
        "## Single-image latency (ms, median [p10, p90]) and peak RSS (MB), one thread",
        "",
        "| case | runtime | dense | sparse file | compact | speed-up dense/compact "
        "| RSS dense | RSS sparse | RSS compact | RSS before model |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        for rt in ("onnxruntime", "litert"):
            lat = {f: r["latency"][f"{rt}/{f}"] for f in ("dense", "sparse", "compact")}
            cell = {
                f: f"{v['median_ms']:.3f} [{v['p10_ms']:.3f}, {v['p90_ms']:.3f}]"
                for f, v in lat.items()
            }
            lines.append(
                f"| {r['case']} | {rt} | {cell['dense']} | {cell['sparse']} | {cell['compact']} "
                f"| {r['compact_speedup'][rt]:.1f}x | {lat['dense']['peak_rss_mb']:.0f} "
                f"| {lat['sparse']['peak_rss_mb']:.0f} | {lat['compact']['peak_rss_mb']:.0f} "
                f"| {lat['dense']['rss_before_model_mb']:.0f} |"
            )
    lines += [
        "",
        "## Verification (max |file - PyTorch encoder| over 4 random inputs; relative to "
        "max |reference|)",
        "",
        "| case | " + " | ".join(VERIFIED) + " |",
        "|---|" + "---|" * len(VERIFIED),
    ]
    for r in report["cases"]:
        v = r["verification"]
        cells = [
            f"{v[f]['max_abs_diff']:.2e} ({v[f]['max_rel_diff']:.1e})" if f in v else "-"
            for f in VERIFIED
        ]
        lines.append(f"| {r['case']} | " + " | ".join(cells) + " |")
    lines += ["", "## Goals", ""]
    for r in report["cases"]:
        q = r["size_over_floor"]
        lines.append(
            f"- {r['case']}: sparse ONNX {q['sparse_onnx']:.2f}x, sparse TFLite "
            f"{q['sparse_tflite']:.2f}x the floor (goal <= 1.3x); compact speed-up "
            f"{r['compact_speedup']['onnxruntime']:.1f}x (onnxruntime), "
            f"{r['compact_speedup']['litert']:.1f}x (LiteRT) (goal >= 3x)"
        )
    return "\n".join(lines) + "\n"


VERIFIED = ("encoder.onnx", "encoder.tflite", "encoder_compact.onnx", "encoder_compact.tflite")
CONVENTIONS = (
    "Conventions: floor = nnz x (4-byte float32 value + 4-byte int32 index), nnz = non-zero "
    "conv/linear weights; ONNX sparse_initializer must use int64 (8-byte) indices, so sparse "
    "ONNX cannot go below 1.5x this floor; TFLite CSR indices use the narrowest of uint8/uint16/"
    "int32. 'dense' = the same pruned, BN-folded network with every weight stored dense. "
    "Latency: batch 1, median of the timed calls after 20 warm-up calls, one thread "
    "(onnxruntime intra/inter-op threads 1, LiteRT num_threads 1), each file in its own "
    "subprocess; peak RSS = VmHWM of that subprocess (Python + runtime + model). "
    "Speed-up = dense median / compact median. Both runtimes densify sparse weights at load, "
    "so the sparse file runs like the dense one."
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="MobileNetV3 magnitude case only")
    parser.add_argument("--quickstart", default="runs/quickstart", help="run dir to export too")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    machine = _machine()
    cases = CASES[2:3] if args.quick else CASES
    report_cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, variant in cases:
            encoder, meta = build_case(arch, variant)
            name = f"{arch} alpha={ALPHA} {variant}"
            print(f"[export_bench] {name}", file=sys.stderr, flush=True)
            report_cases.append(
                run_case(name, encoder, meta, Path(tmp) / name.replace(" ", "_"), args.repeats)
            )
        qs = Path(args.quickstart)
        if not args.quick and (qs / "rungs").is_dir() and (qs / "results.json").is_file():
            from entropi.host.deployment.rung_export import config_hash
            from entropi.host.ladder.rungs import load_rung

            encoder, meta = load_rung(qs, "selected")
            name = f"quickstart rung {meta.index} ({meta.arch}, alpha={meta.alpha:.4f})"
            print(f"[export_bench] {name}", file=sys.stderr, flush=True)
            report_cases.append(
                run_case(
                    name, encoder, meta, Path(tmp) / "quickstart", args.repeats, config_hash(qs)
                )
            )
    machine["load_avg_at_end"] = os.getloadavg()
    report = {
        "machine": machine,
        "versions": _versions(),
        "conventions": CONVENTIONS,
        "alpha": ALPHA,
        "kill_fraction": KILL_FRACTION,
        "command": "python scripts/export_bench.py " + " ".join(argv or sys.argv[1:]),
        "cases": report_cases,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "export.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
