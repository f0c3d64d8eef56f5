"""``entropi-device``: train, evaluate and use a head on the device (numpy + an interpreter).

Each subcommand is a typed function (``train``, ``evaluate``, ``predict``) that the CLI calls;
the command table is :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write_json
from .budget import format_size, parse_size
from .bundle import load_bundle
from .data import load_images
from .errors import DeviceError
from .features import extract_features, stream_features
from .head import Head, load_head, save_head
from .trainer import TrainConfig, train_head

__all__ = ["COMMANDS", "evaluate", "main", "predict", "train"]

TRAIN_JSON = "train.json"


def _features(bundle, images, labels, *, out_path=None, seed=None):
    return extract_features(
        bundle.encoder(),
        images,
        labels,
        input_shape=bundle.input_shape,
        mean=bundle.mean,
        std=bundle.std,
        feature_dim=bundle.feature_dim,
        out_path=out_path,
        seed=seed,
    )


def _stream(bundle, images):
    """Features of ``images`` chunk by chunk: ``(start, features)``."""
    return stream_features(
        bundle.encoder(), images, input_shape=bundle.input_shape, mean=bundle.mean, std=bundle.std
    )


def _metrics(bundle, head: Head, images, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``head``, streaming the images (nothing held whole)."""
    loss = correct = 0.0
    for start, f in _stream(bundle, images):
        m = head.evaluate(f, labels[start : start + len(f)])
        loss += m["loss"] * len(f)
        correct += m["accuracy"] * len(f)
    n = max(len(labels), 1)
    return {"accuracy": correct / n, "loss": loss / n, "samples": len(labels)}


def train(
    bundle: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    budget: str | int = "256KB",
    epochs: int = 30,
    lr: float = 0.1,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    batch_size: int = 32,
    val_fraction: float = 0.1,
    patience: int = 5,
    seed: int = 0,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> dict[str, Any]:
    """Train a head on the images in ``data`` within ``budget``; write ``out``/head.npz and
    ``out``/train.json (atomically) and return the train.json content."""
    t0 = time.perf_counter()
    b = load_bundle(bundle)
    cfg = TrainConfig(
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        val_fraction=val_fraction,
        patience=patience,
        seed=seed,
        budget_bytes=parse_size(budget),
        checkpoint_every=checkpoint_every,
    )
    out = Path(out)
    imgs = load_images(data, "train")
    if imgs.labels is None:
        raise DeviceError(f"{data} has no labels for training")
    names = imgs.class_names or b.class_names
    n_cls = len(names) if names else None
    t_feat = time.perf_counter()
    feats, labels = _features(
        b, imgs.images, imgs.labels, out_path=out / ".cache" / "train.npy", seed=seed
    )
    feat_seconds = time.perf_counter() - t_feat
    res = train_head(feats, labels, cfg, num_classes=n_cls, workdir=out / ".work", resume=resume)
    head = Head(res.weights.copy(), res.bias.copy(), names)
    report: dict[str, Any] = {
        "accuracy": res.val_accuracy,
        "accuracy_split": "held-out",
        "val_accuracy": res.val_accuracy,
        "val_loss": res.val_loss,
        "peak_bytes": res.peak_bytes,
        "analytic_bytes": res.plan.analytic_bytes,
        "budget_bytes": res.plan.budget_bytes,
        "reserve_bytes": res.plan.reserve_bytes,
        "peak_over_analytic": res.peak_bytes / res.plan.analytic_bytes,
        "steps": res.steps,
        "samples": res.samples,
        "steps_per_second": res.steps_per_second,
        "samples_per_second": res.samples_per_second,
        "train_seconds": res.seconds,
        "feature_seconds": feat_seconds,
        "n_train": res.n_train,
        "n_val": res.n_val,
        "epochs_run": res.epochs_run,
        "stopped_early": res.stopped_early,
        "best_epoch": res.best_epoch,
        "plan": res.plan.to_dict(),
        "config": json.loads(json.dumps(cfg.__dict__)),
        "history": res.history,
        "memory_measured_with": "tracemalloc (the measured loop includes tracemalloc overhead)",
        "encoder": {"file": b.encoder_file.name, "format": b.encoder_format},
        "bundle": str(Path(bundle).resolve()),
        "data": str(Path(data).resolve()),
        "argv": sys.argv,
    }
    try:
        test = load_images(data, "test")
    except DeviceError:
        test = None
    if test is not None and test.labels is not None and test is not imgs:
        metrics = _metrics(b, head, test.images, test.labels)
        report |= {
            "accuracy": metrics["accuracy"],
            "accuracy_split": "test",
            "test_accuracy": metrics["accuracy"],
            "test_loss": metrics["loss"],
        }
    save_head(out, head)
    report["wall_seconds"] = time.perf_counter() - t0
    atomic_write_json(out / TRAIN_JSON, report)
    return report


def evaluate(
    bundle: str | os.PathLike,
    head: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "test",
) -> dict[str, float]:
    """Accuracy and loss of a trained head on ``split`` of ``data``."""
    b = load_bundle(bundle)
    h = load_head(head)
    imgs = load_images(data, split)
    if imgs.labels is None:
        raise DeviceError(f"{data} has no labels to evaluate against")
    return _metrics(b, h, imgs.images, imgs.labels)


def predict(
    bundle: str | os.PathLike,
    head: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "test",
    top: int = 1,
) -> list[dict[str, Any]]:
    """Predicted class (index, name, probability) of each image in ``data``."""
    b = load_bundle(bundle)
    h = load_head(head)
    imgs = load_images(data, split)
    out = []
    probs = (p for _, f in _stream(b, imgs.images) for p in h.probabilities(f))
    for p in probs:
        best = np.argsort(-p)[:top]
        out.append(
            {
                "class": int(best[0]),
                "name": h.class_names[best[0]] if h.class_names else None,
                "probability": float(p[best[0]]),
                "top": [int(i) for i in best],
            }
        )
    return out


SUMMARY_KEYS = (
    "accuracy",
    "accuracy_split",
    "peak_bytes",
    "analytic_bytes",
    "budget_bytes",
    "samples",
    "samples_per_second",
    "steps",
    "steps_per_second",
    "epochs_run",
    "feature_seconds",
    "train_seconds",
)
"""The train.json fields worth repeating in a summary (CLI output, run results, benchmarks)."""


def train_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The :data:`SUMMARY_KEYS` of a train.json report."""
    return {k: report[k] for k in SUMMARY_KEYS}


def _cmd_train(a: argparse.Namespace) -> Any:
    rep = train(
        a.bundle,
        a.data,
        a.out,
        budget=a.budget,
        epochs=a.epochs,
        lr=a.lr,
        momentum=a.momentum,
        weight_decay=a.weight_decay,
        batch_size=a.batch_size,
        val_fraction=a.val_fraction,
        patience=a.patience,
        seed=a.seed,
        checkpoint_every=a.checkpoint_every,
        resume=a.resume,
    )
    summary = train_summary(rep)
    summary["peak"] = format_size(rep["peak_bytes"])
    return summary


def _cmd_eval(a: argparse.Namespace) -> Any:
    return evaluate(a.bundle, a.head, a.data, split=a.split)


def _cmd_predict(a: argparse.Namespace) -> Any:
    return predict(a.bundle, a.head, a.data, split=a.split, top=a.top)


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle folder (manifest.json + encoder)")
    p.add_argument("--data", required=True, help=".npz (x_train/y_train) or image folder")
    p.add_argument(
        "--budget",
        required=True,
        help="RAM budget of the training loop: B, KB, MB (KB = 1024 B), e.g. 256KB",
    )
    p.add_argument("--out", required=True, help="head folder: head.npz, train.json")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default 0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 coefficient (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="maximum batch size (default 32)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction (0.1)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="resume from OUT/.work/checkpoint.npz")


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle folder")
    p.add_argument("--head", required=True, help="head folder written by train")
    p.add_argument("--data", required=True, help=".npz or image folder")
    p.add_argument("--split", default="test", help="split to use (default test)")


def _add_predict(p: argparse.ArgumentParser) -> None:
    _add_eval(p)
    p.add_argument("--top", type=int, default=1, help="classes to list per image (default 1)")


#: name -> (help, add-arguments, run)
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "train": ("train a head within a memory budget", _add_train, _cmd_train),
    "eval": ("accuracy and loss of a head", _add_eval, _cmd_eval),
    "predict": ("predict the class of images", _add_predict, _cmd_predict),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entropi-device", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; prints JSON; exit status 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command][2](args)
    except (DeviceError, ValueError, FileExistsError) as e:
        print(f"entropi-device {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
