"""``entropi finetune`` and ``entropi analyze cka``: the subcommands that compare head-only
training with Layer FT, SCL FT and full fine-tuning on a rung, with their FLOPs and backprop
memory (:mod:`.finetune_cost`), and the layer-by-layer CKA of two models (:mod:`.finetune`,
:mod:`.cka`). Nothing heavy is imported until a command runs, so ``entropi --help`` stays fast.

``finetune.json``: per mode the target test accuracy (mean and sample std over seeds), train
accuracy, NC1 of the target training features before and after, trainable parameters, FLOPs of
one step (dense and effective-sparse, frozen prefix forward separate) and measured backprop
memory at the training batch size; the per-seed rows; provenance (command, versions, hardware).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entropi.common.cliargs import (
    add_dataclass_arguments,
    add_field_argument,
    dataclass_from_args,
    rung_arg,
)
from entropi.common.files import atomic_write_json, atomic_write_text
from entropi.common.lock import lock_folder
from entropi.common.provenance import provenance

from ..run.config import DataConfig, RunConfig
from .finetune_config import FinetuneConfig, FinetuneError

__all__ = ["CKA", "CkaOptions", "add_command", "run_cka", "run_finetune"]


def _provenance() -> dict[str, Any]:
    # lazy: keeps `entropi --help` from importing torch
    import torch  # noqa: F401 - loaded, so the provenance records its version and threads

    return provenance()


def _mode_costs(model, batch: int, input_shape) -> dict[str, Any]:
    # lazy: keeps `entropi --help` from importing torch
    from .finetune_cost import step_flops, step_memory

    # lazy: keeps `entropi --help` from importing torch
    from .memory import head_device_memory

    f = step_flops(model, batch, input_shape)
    mem = step_memory(model, batch, input_shape)
    out = {
        "cost_batch": batch,
        "flops_step_dense": f.step(matmul=True),
        "flops_step_sparse": f.step(sparse=True, matmul=True),
        "flops_frozen_forward_dense": f.frozen_forward(matmul=True),
        "flops_frozen_forward_sparse": f.frozen_forward(sparse=True, matmul=True),
        "flops_breakdown": f.as_dict(),
        "memory_bytes": mem.total,
        "memory_breakdown": mem.as_dict(),
    }
    if model.mode.kind == "head":  # what the device itself spends on the same step
        dev = head_device_memory(model.feature_dim, model.head.out_features, batch)
        out["memory_bytes_device_runtime"] = dev["measured"]
    return out


def run_finetune(
    run: str | os.PathLike,
    *,
    modes: Sequence[str],
    out_dir: str | os.PathLike,
    rung: str | int = "selected",
    target: str | None = None,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] = (0, 1),
    cfg=None,
    device: str = "auto",
    save_models: bool = True,
    log=print,
) -> dict[str, Any]:
    """Fine-tune rung ``rung`` of ``run`` on its target (or ``target``) in every mode x seed;
    write ``finetune.json``, ``finetune.md`` and (``save_models``) ``models/MODE-sSEED/model.pt``
    into ``out_dir``. Returns the ``finetune.json`` content."""

    # lazy: keeps `entropi --help` from importing torch
    from entropi.host.analysis.finetune import (
        finetune_rung,
        load_run_target,
        load_rung_model,
        parse_mode,
        save_finetuned,
    )

    # lazy: keeps `entropi --help` from importing torch
    from entropi.host.run.torch_device import pick_device

    # lazy: keeps `entropi --help` from importing torch
    from .finetune_cost import __doc__ as cost_doc

    # lazy: keeps `entropi --help` from importing torch
    from .flops import CONVENTIONS as FLOP_CONVENTIONS

    t0 = time.perf_counter()
    loaded = load_rung_model(run, rung)
    for m in modes:  # refuse a bad mode before loading any data
        parse_mode(m, loaded.model.encoder)
    run_cfg, data = load_run_target(run, target, overrides)
    cfg = cfg or FinetuneConfig()
    dev = pick_device(device)
    out = Path(out_dir)
    lock = lock_folder(out, what="finetune folder")
    try:
        result, runs = finetune_rung(loaded, modes, data, cfg, seeds=seeds, device=dev, log=log)
        input_shape = tuple(loaded.info.input_shape)
        for name, entry in result["modes"].items():
            model = next(r.model for r in runs if r.mode == name)
            entry.update(_mode_costs(model, cfg.batch_size, input_shape))
        if save_models:
            for r in runs:
                meta = {
                    "arch": loaded.info.arch,
                    "normalization": loaded.normalization,
                    "source": {"run": str(Path(run)), "rung": loaded.rung},
                    "target": run_cfg.data.target,
                    "seed": r.seed,
                    "test_accuracy": r.test_accuracy,
                }
                slug = r.model.mode.slug
                save_finetuned(out / "models" / f"{slug}-s{r.seed}" / "model.pt", r.model, meta)
        result = {
            "target": run_cfg.data.target,
            **result,
            "conventions": {"flops": FLOP_CONVENTIONS, "memory": _plain(cost_doc)},
            **_provenance(),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        atomic_write_json(out / "finetune.json", result)
        atomic_write_text(out / "finetune.md", render_markdown(result))
    finally:
        lock.release()
    return result


def _plain(doc: str) -> str:
    """A docstring as one line of Markdown: Sphinx roles (``:mod:`.flops```) as code spans."""

    text = re.sub(r":[a-z]+:`~?\.?([^`]+)`", r"`\1`", " ".join(doc.split()))
    return text.replace("``", "`")


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def mode_table(result: dict[str, Any]) -> list[str]:
    """Markdown rows of the modes: accuracy, NC1, parameters, FLOPs and memory per step."""
    lines = [
        "| mode | test acc % (mean +- std) | train acc % | NC1 before -> after | trainable params "
        "| step MFLOPs dense | step MFLOPs sparse | frozen fwd MFLOPs | step memory MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in result["modes"].items():
        lines.append(
            f"| {name} | {_pct(e['test_accuracy'])} +- {_pct(e['test_accuracy_std'])} "
            f"| {_pct(e['train_accuracy'])} | {_num(e['nc1_before'])} -> {_num(e['nc1_after'])} "
            f"| {e['trainable_params']:,} | {e['flops_step_dense'] / 1e6:,.1f} "
            f"| {e['flops_step_sparse'] / 1e6:,.1f} "
            f"| {e['flops_frozen_forward_dense'] / 1e6:,.1f} | {e['memory_bytes'] / 1e6:,.2f} |"
        )
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    # lazy: keeps `entropi --help` from importing torch
    from .memory import conventions_lines

    src, cfg = result["source"], result["config"]
    lines = [
        f"# entropi finetune: {src['arch']} rung {src['rung']} (alpha {src['alpha']:.4g}) "
        f"-> {result['target']}",
        "",
        f"{result['n_train']} training / {result['n_test']} test images, "
        f"{result['num_classes']} classes; seeds {result['seeds']}; {cfg['epochs']} epochs, "
        f"batch {cfg['batch_size']}, SGD lr {cfg['lr']} (head) / {cfg['encoder_lr']} (encoder), "
        f"augment {cfg['augment']}. FLOPs and memory per step at batch {cfg['batch_size']} "
        "(MFLOPs = 1e6, MB = 1e6 bytes).",
        "",
        *mode_table(result),
        "",
        *conventions_lines(result),
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class CkaOptions:
    """What ``entropi analyze cka`` compares, unless told otherwise: :func:`run_cka`'s defaults
    and its flags'."""

    split: str = "test"
    """the target split whose images are compared: test or train."""
    images: int = 0
    """the first N images of the split (0 = all)."""
    kernels: tuple[str, ...] = ("linear", "rbf")
    """CKA kernels: linear and / or rbf."""
    batch_size: int = 256
    """CKA minibatch size."""


CKA = CkaOptions()


def run_cka(
    a: str,
    b: str,
    *,
    out_dir: str | os.PathLike,
    target: str | None = None,
    overrides: Sequence[str] = (),
    split: str = CKA.split,
    images: int = CKA.images,
    kernels: Sequence[str] = CKA.kernels,
    batch_size: int = CKA.batch_size,
    device: str = "auto",
) -> dict[str, Any]:
    """Layer-by-layer minibatch CKA of models ``a`` and ``b`` (``RUNDIR[:RUNG]`` or a fine-tuned
    model folder) on the target images of ``split`` (the first ``images``; 0 = all); writes
    ``cka.json`` and ``cka.png`` into ``out_dir``."""

    # lazy: keeps `entropi --help` from importing torch
    from entropi.host.analysis.cka import compare_models, diagonal, plot_cka

    # lazy: keeps `entropi --help` from importing torch
    from entropi.host.analysis.finetune import load_model_spec, load_run_target

    # lazy: keeps `entropi --help` from importing torch
    from entropi.host.run.torch_device import pick_device

    if split not in ("train", "test"):
        raise FinetuneError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 0:
        raise FinetuneError(f"images must be an integer >= 0 (0 = all), got {images!r}")
    t0 = time.perf_counter()
    ma, mb = load_model_spec(a), load_model_spec(b)
    run = ma.run or mb.run
    if run is None:
        raise FinetuneError("neither model names a run folder whose config gives the target data")
    run_cfg, data = load_run_target(run, target, overrides)
    x = data.x_test if split == "test" else data.x_train
    if images:
        x = x[:images]
    result = compare_models(
        ma.model,
        mb.model,
        x,
        norm_a=ma.normalization,
        norm_b=mb.normalization,
        kernels=kernels,
        batch_size=batch_size,
        device=pick_device(device),
    )
    result |= {
        "a": a,
        "b": b,
        "label_a": ma.label,
        "label_b": mb.label,
        "target": run_cfg.data.target,
        "split": split,
        "diagonal": {k: diagonal(result, k) for k in result["cka"]},
        **_provenance(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(out_dir)
    lock = lock_folder(out, what="analysis folder")
    try:
        atomic_write_json(out / "cka.json", result)
        plot_cka(result, out / "cka.png", title=f"{ma.label} vs {mb.label} on {result['target']}")
    finally:
        lock.release()
    return result


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise FinetuneError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise FinetuneError(f"--seeds must name distinct seeds, got {text!r}")
    return seeds


def _cmd_finetune(a: argparse.Namespace) -> int:
    result = run_finetune(
        a.run,
        modes=a.mode,
        out_dir=a.out,
        rung=a.rung,
        target=a.target,
        overrides=a.set or [],
        seeds=_seeds(a.seeds),
        cfg=dataclass_from_args(FinetuneConfig, a),
        device=a.device,
        save_models=not a.no_models,
    )
    print("\n".join(mode_table(result)))
    print(f"see {Path(a.out) / 'finetune.json'}")
    return 0


def _cmd_analyze(a: argparse.Namespace) -> int:
    result = run_cka(
        a.a,
        a.b,
        out_dir=a.out,
        target=a.target,
        overrides=a.set or [],
        split=a.split,
        images=a.images,
        kernels=a.kernels or CKA.kernels,
        batch_size=a.batch_size,
        device=a.device,
    )
    for k, diag in result["diagonal"].items():
        print(f"{k} CKA per layer: " + ", ".join(f"{n} {v:.3f}" for n, v in diag.items()))
    print(f"see {Path(a.out) / 'cka.json'} and cka.png")
    return 0


def _data_args(p: argparse.ArgumentParser) -> None:
    add_field_argument(p, DataConfig, "target", metavar="SPEC", unset="the run's target")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a key of the run's config for loading the target, e.g. "
        "data.target_train_per_class=100 (repeat)",
    )
    add_field_argument(
        p,
        RunConfig,
        "device",
        help='where to compute: "auto" (CUDA when present), "cpu" or "cuda"',
        choices=("auto", "cpu", "cuda"),
    )


def add_command(sub) -> dict:
    """Add ``finetune`` and ``analyze`` to the ``entropi`` subparsers; return ``{name: run}``.
    The training flags of ``finetune`` are generated from :class:`.FinetuneConfig`."""
    help_ = (
        "Fine-tune a rung on the target in modes head, layer:BLOCK, scl:BLOCK, full; accuracy, "
        "NC1, trainable parameters, FLOPs and backprop memory per step (finetune.json/md)."
    )
    p = sub.add_parser("finetune", help=help_, description=help_)
    p.add_argument("run", metavar="RUNDIR", help="run directory made by `entropi run`")
    p.add_argument(
        "--rung", type=rung_arg, default="selected", help="'selected' (default) or an index"
    )
    p.add_argument(
        "--mode",
        action="append",
        required=True,
        metavar="MODE",
        help="head, full, layer:BLOCK or scl:BLOCK (blocks as the encoder names its children, "
        "e.g. smallnet 0-3, 4-7, 8-11, 12-16; an unknown block lists them); repeat",
    )
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    add_dataclass_arguments(
        p.add_argument_group("training (FinetuneConfig)"),
        FinetuneConfig,
        only=("epochs", "batch_size", "lr", "encoder_lr", "weight_decay", "augment"),
        options={"augment": {"action": "store_true"}},
    )
    p.add_argument("--no-models", action="store_true", help="do not save the fine-tuned models")
    _data_args(p)
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for finetune.json/md and models/"
    )

    help_ = "Analyses of trained models: `cka A B` (layer-by-layer CKA heatmap, cka.json/png)."
    p = sub.add_parser("analyze", help=help_, description=help_)
    what = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    help_ = (
        "Minibatch linear / RBF CKA between every layer of A and of B (RUNDIR[:RUNG] or a "
        "fine-tuned model folder) on the same target images."
    )
    q = what.add_parser("cka", help=help_, description=help_)
    q.add_argument("a", metavar="A", help="first model: RUNDIR[:RUNG] or a fine-tuned model folder")
    q.add_argument("b", metavar="B", help="second model, the same kinds as A")
    kernels = {"flag": "--kernel", "unset": True, "choices": ("linear", "rbf")}
    add_dataclass_arguments(
        q,
        CkaOptions,
        options={
            "split": {"choices": ("test", "train")},
            "kernels": {**kernels, "also": "Repeat for both."},
            "batch_size": {"flag": "--batch", "metavar": "BATCH"},
        },
    )
    _data_args(q)
    q.add_argument("--out", required=True, metavar="DIR", help="folder for cka.json and cka.png")
    return {"finetune": _cmd_finetune, "analyze": _cmd_analyze}
