"""`entropi` command line: a thin layer over the Python API, one function per subcommand.

Subcommands beyond the pipeline's come from plugins: a package names a function
``add(subparsers) -> {name: run}`` in the ``entropi.commands`` entry-point group (the benchmarks
add ``entropi bench`` this way, so the host never imports the layer above it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

__all__ = ["main"]

PLUGIN_GROUP = "entropi.commands"


class LazyChoices:
    """argparse ``choices`` read from a registry on first use (keeps `entropi --help` fast:
    the registries live in modules that import torch)."""

    def __init__(self, names: Callable[[], list[str]]) -> None:
        self._names = names

    def __contains__(self, item: object) -> bool:
        return item in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def _archs() -> list[str]:
    from .models import ARCHITECTURES

    return sorted(ARCHITECTURES)


def _formats() -> list[str]:
    from entropi.export.formats import FORMATS

    return list(FORMATS)


def _forms() -> list[str]:
    from .bundle import FORMS

    return list(FORMS)


def _overrides(a: argparse.Namespace) -> list[str]:
    """``--set`` plus the ``--source`` / ``--target`` shorthands, in that order."""
    sets = list(a.set or [])
    sets += [f"data.{k}={getattr(a, k)}" for k in ("source", "target") if getattr(a, k, None)]
    return sets


def _load(a: argparse.Namespace):
    from .config import load_config

    return load_config(a.config, _overrides(a))


def _cmd_run(a: argparse.Namespace) -> int:
    from .config import ConfigError
    from .pipeline import run_all

    cfg = _load(a) if a.config else None
    if cfg is None and not (a.resume and a.out):
        raise ConfigError("a CONFIG is needed unless --resume continues an existing --out RUNDIR")
    if cfg is None and _overrides(a):
        raise ConfigError("--set/--source/--target need a CONFIG (a resumed run keeps its own)")
    out = a.out or f"runs/{cfg.name}"
    results = run_all(cfg, out, resume=a.resume)
    _print_summary(results, out)
    if results.get("report"):
        print(f"report: {Path(out) / results['report']}")
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
    from .rundir import open_run
    from .train import pick_device

    cfg, run = open_run(None, a.run, resume=True)
    return cfg, run, pick_device(cfg.device)


def _cmd_pretrain(a: argparse.Namespace) -> int:
    from .rundata import load_source
    from .rundir import open_run
    from .stages import stage_pretrain
    from .train import pick_device

    cfg, run = open_run(_load(a), a.out, resume=a.resume)
    device = pick_device(cfg.device)
    stage_pretrain(cfg, run, load_source(cfg, device), device)
    return 0


def _cmd_prune(a: argparse.Namespace) -> int:
    from .rundata import load_source
    from .stages import stage_prune

    cfg, run, device = _open(a)
    stage_prune(cfg, run, load_source(cfg, device), device)
    return 0


def _cmd_probe(a: argparse.Namespace) -> int:
    from .rundata import load_target
    from .stages import reuse_ladder, stage_score, stage_select

    cfg, run, device = _open(a)
    overrides = _overrides(a)
    if not overrides and not a.out:
        scores = stage_score(cfg, run, load_target(cfg), device)
        print(json.dumps(scores, indent=2))
        return 0
    # score RUNDIR's ladder, as it is, on another target: a new run folder sharing its rungs
    cfg, new = reuse_ladder(cfg, run, a.out, overrides)
    stage_score(cfg, new, load_target(cfg), device)
    _print_summary(stage_select(cfg, new), new.root)
    return 0


def _cmd_select(a: argparse.Namespace) -> int:
    from .stages import stage_select

    cfg, run, _ = _open(a)
    _print_summary(stage_select(cfg, run), run.root)
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
    from .bundle import export_rung

    formats = tuple(a.format or _formats())
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

    formats = tuple(a.format or _formats())
    path = bundle_rung(
        a.run, a.out, rung=a.rung, form=a.form, formats=formats, overwrite=a.overwrite
    )
    print(f"bundle written to {path}")
    return 0


def _rung_arg(value: str) -> str | int:
    return value if value == "selected" else int(value)


def _add_config_args(p: argparse.ArgumentParser, *, source: bool = True) -> None:
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config key, validated like the file (repeat), e.g. pretrain.epochs=2",
    )
    if source:
        p.add_argument("--source", metavar="SPEC", help="source dataset (--set data.source=)")
    p.add_argument("--target", metavar="SPEC", help="target dataset (same as --set data.target=)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUNDIR", help="run directory made by `entropi run`/`pretrain`")


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    from entropi.device.io import package_version

    from .config import EntropyConfig

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
    _add_config_args(p)

    p = add("pretrain", _cmd_pretrain, "Train the dense source model (rung 0).")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("--out", metavar="RUNDIR", required=True)
    p.add_argument("--resume", action="store_true")
    _add_config_args(p)

    _add_run_args(add("prune", _cmd_prune, "Build the pruning ladder of a pretrained run."))
    p = add(
        "probe",
        _cmd_probe,
        "Entropy and linear-probe accuracy of every rung on the target data; with --target / "
        "--set and --out DIR, score RUNDIR's ladder (reused as it is) on another target in DIR.",
    )
    _add_run_args(p)
    p.add_argument("--out", metavar="DIR", help="new run folder for scores on another target")
    _add_config_args(p, source=False)
    _add_run_args(
        add("select", _cmd_select, "Pick the rung by the config's criterion; write results.json.")
    )

    formats = LazyChoices(_formats)
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
        choices=formats,
        metavar="FORMAT",
        help="onnx or tflite; repeat for several (default: every format)",
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
        choices=LazyChoices(_forms),
        metavar="FORM",
        default="compact",
        help="compact (fastest on the device, default) or sparse (smallest file)",
    )
    p.add_argument("--format", action="append", choices=formats, metavar="FORMAT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--out", required=True, metavar="BUNDLE")

    p = add("entropy", _cmd_entropy, "Quantized-state entropy of a features .npy (nats, JSON).")
    p.add_argument("features", metavar="FEATURES.npy", help="2-D float array, samples x units")
    levels = EntropyConfig.levels
    p.add_argument(
        "--levels", type=int, default=levels, help=f"quantization levels M (default {levels})"
    )

    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        table.update(ep.load()(sub))
    return parser, table


def main(argv: list[str] | None = None) -> int:
    from entropi.device.errors import EntropiError

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
    except (EntropiError, OSError) as e:
        print(f"entropi: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
