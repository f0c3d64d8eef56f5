"""`entropi` command line: a thin layer over the Python API, one function per subcommand."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]


def _cmd_run(a: argparse.Namespace) -> int:
    from .config import load_config
    from .pipeline import run_all

    cfg = load_config(a.config) if a.config else None
    if cfg is None and not (a.resume and a.out):
        raise ValueError("a CONFIG is needed unless --resume continues an existing --out RUNDIR")
    out = a.out or f"runs/{cfg.name}"
    results = run_all(cfg, out, resume=a.resume)
    _print_summary(results, out)
    return 0


def _print_summary(results: dict, out) -> None:
    print(f"{'rung':>4} {'alpha':>9} {'nnz':>9} {'src acc':>8} {'entropy':>8} {'probe':>7}")
    for r in results["rungs"]:
        mark = " <- selected" if r["index"] == results["selected_index"] else ""
        mark += " (best probe)" if r["index"] == results["best_probe_index"] else ""
        print(
            f"{r['index']:>4} {r['alpha']:>9.5f} {r['nnz']:>9} {r['source_accuracy']:>8.4f} "
            f"{r['entropy']:>8.4f} {r['probe_accuracy']:>7.4f}{mark}"
        )
    print(f"regret {results['regret']:.4f}; results in {Path(out) / 'results.json'}")


def _open(a: argparse.Namespace):
    """Reopen RUNDIR with its saved config."""
    from .pipeline import open_run
    from .train import pick_device

    cfg, rundir = open_run(None, a.run, resume=True)
    return cfg, rundir, pick_device(cfg.device)


def _cmd_pretrain(a: argparse.Namespace) -> int:
    from .config import load_config
    from .pipeline import load_source, open_run, stage_pretrain
    from .train import pick_device

    cfg, rundir = open_run(load_config(a.config), a.out, resume=a.resume)
    device = pick_device(cfg.device)
    stage_pretrain(cfg, rundir, load_source(cfg, device), device)
    return 0


def _cmd_prune(a: argparse.Namespace) -> int:
    from .pipeline import load_source, stage_prune

    cfg, rundir, device = _open(a)
    stage_prune(cfg, rundir, load_source(cfg, device), device)
    return 0


def _cmd_probe(a: argparse.Namespace) -> int:
    from .pipeline import load_target, stage_score

    cfg, rundir, device = _open(a)
    scores = stage_score(cfg, rundir, load_target(cfg), device)
    print(json.dumps(scores, indent=2))
    return 0


def _cmd_select(a: argparse.Namespace) -> int:
    from .pipeline import stage_select

    cfg, rundir, _ = _open(a)
    _print_summary(stage_select(cfg, rundir), rundir)
    return 0


def _cmd_entropy(a: argparse.Namespace) -> int:
    import numpy as np

    from .entropy import FeatureError, state_entropy

    path = Path(a.features)
    if not path.is_file():
        raise FileNotFoundError(f"features file {path} does not exist")
    try:
        feats = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise FeatureError(f"{path} is not a .npy array file: {e}") from e
    print(json.dumps(state_entropy(feats, a.levels).as_dict(), indent=2))
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from entropi.export import export_rung

    formats = tuple(a.format or ("onnx", "tflite"))
    info = export_rung(a.run, a.rung, formats=formats, compact=a.compact, out_dir=a.out)
    for name, f in info["files"].items():
        print(
            f"{name}: {f['bytes']} bytes, max |diff| {f['max_abs_diff']:.2e}, "
            f"max rel {f['max_rel_diff']:.2e}"
        )
    print(
        f"nnz {info['nnz']}, dense {info['dense_bytes']} B, floor {info['floor_bytes']} B; "
        f"details in {Path(a.out) / 'export.json'}"
    )
    return 0


def _cmd_bundle(a: argparse.Namespace) -> int:
    from .bundle import bundle_rung

    formats = tuple(a.format or ("onnx", "tflite"))
    path = bundle_rung(
        a.run, a.out, rung=a.rung, form=a.form, formats=formats, overwrite=a.overwrite
    )
    print(f"bundle written to {path}")
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from entropi.benchmarks.bench import run_bench

    result = run_bench(
        archs=a.arch or ("resnet18", "mobilenetv3_small"),
        classes=a.classes or (5, 100),
        batch=a.batch,
        alpha=a.alpha,
        out_dir=a.out,
        device=a.device,
    )
    print(f"{len(result['rows'])} rows; see {Path(a.out) / 'bench.md'}")
    return 0


def _rung_arg(value: str) -> str | int:
    return value if value == "selected" else int(value)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUNDIR", help="run directory made by `entropi run`/`pretrain`")


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    from .pipeline import package_version

    parser = argparse.ArgumentParser(
        prog="entropi",
        description="ENTROPI: entropy-based pruning for transfer learning on tiny devices.",
    )
    parser.add_argument("--version", action="version", version=f"entropi {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    table: dict[str, Callable] = {}

    def add(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        table[name] = fn
        return sub.add_parser(name, help=help, description=help)

    p = add("run", _cmd_run, "Run the whole pipeline: pretrain, prune, score, select.")
    p.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help="TOML config file or shipped config name (quickstart, paper, ...)",
    )
    p.add_argument("--out", metavar="RUNDIR", help="run directory (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")

    p = add("pretrain", _cmd_pretrain, "Train the dense source model (rung 0).")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("--out", metavar="RUNDIR", required=True)
    p.add_argument("--resume", action="store_true")

    _add_run_args(add("prune", _cmd_prune, "Build the pruning ladder of a pretrained run."))
    _add_run_args(
        add(
            "probe",
            _cmd_probe,
            "Entropy and linear-probe accuracy of every rung on the target data.",
        )
    )
    _add_run_args(
        add(
            "select", _cmd_select, "Pick the highest-entropy rung; write results.json and the plot."
        )
    )

    p = add(
        "export",
        _cmd_export,
        "Export a rung to ONNX / TFLite (pruned weights stored sparse), verified.",
    )
    p.add_argument("--run", required=True, metavar="RUNDIR")
    p.add_argument(
        "--rung", type=_rung_arg, default="selected", help="'selected' (default) or a rung index"
    )
    p.add_argument(
        "--format",
        action="append",
        choices=("onnx", "tflite"),
        help="repeat for several (default: onnx and tflite)",
    )
    p.add_argument(
        "--compact",
        action="store_true",
        help="also export the compact form (dead channels removed)",
    )
    p.add_argument("--out", required=True, metavar="DIR")

    p = add("bundle", _cmd_bundle, "Package an exported encoder for the device runtime.")
    p.add_argument("--run", required=True, metavar="RUNDIR")
    p.add_argument("--rung", type=_rung_arg, default="selected")
    p.add_argument(
        "--form",
        choices=("compact", "sparse"),
        default="compact",
        help="compact (fastest on the device, default) or sparse (smallest file)",
    )
    p.add_argument("--format", action="append", choices=("onnx", "tflite"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--out", required=True, metavar="BUNDLE")

    p = add(
        "bench",
        _cmd_bench,
        "FLOPs and backprop memory of head-only vs full fine-tuning (bench.json/md/png).",
    )
    p.add_argument(
        "--arch",
        action="append",
        choices=("mobilenetv3_small", "resnet18", "smallnet"),
        help="repeat; default resnet18, mobilenetv3_small",
    )
    p.add_argument("--classes", action="append", type=int, help="repeat; default 5 and 100")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--alpha",
        type=float,
        default=0.01,
        help="kept fraction for the effective-sparse FLOPs (default 0.01)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="where the full fine-tuning step is measured (default: CUDA if present)",
    )
    p.add_argument("--out", required=True, metavar="DIR")

    p = add("entropy", _cmd_entropy, "Quantized-state entropy of a features .npy (nats, JSON).")
    p.add_argument("features", metavar="FEATURES.npy", help="2-D float array, samples x units")
    p.add_argument("--levels", type=int, default=4, help="quantization levels M (default 4)")
    return parser, table


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError

    parser, table = _build_parser()
    args = parser.parse_args(argv)
    try:
        return table[args.command](args)
    except KeyboardInterrupt:
        print(
            "\nentropi: interrupted; continue with `entropi run --out RUNDIR --resume`",
            file=sys.stderr,
        )
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError, ImportError) as e:
        print(f"entropi: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
