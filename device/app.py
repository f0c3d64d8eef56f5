"""The device library under ``entropi-device``: train, evaluate and use a head on a bundle.

:func:`train_on_bundle` loads a bundle and the images, writes the shuffled feature store,
trains the head within the budget (:func:`.trainer.train_head`), scores it on the test split
when there is one, and writes ``head.npz`` and ``train.json`` (:class:`TrainReport`);
:func:`evaluate` and :func:`predict` use a trained head. The CLI (:mod:`.cli`) and the host
pipeline call these functions; nothing here parses arguments or prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle, load_bundle
from .config import TrainConfig
from .data import check_image_size, has_split, load_images
from .errors import DataError, DeviceError
from .features import extract_features, stream_features
from .head import Head, load_head, save_head
from .io import atomic_write_json
from .lock import lock_folder
from .trainer import train_head

__all__ = [
    "SUMMARY_KEYS",
    "TRAIN_JSON",
    "TrainReport",
    "evaluate",
    "predict",
    "train_on_bundle",
]

TRAIN_JSON = "train.json"
"""The report :func:`train_on_bundle` writes next to ``head.npz``."""

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

MEMORY_MEASURED_WITH = "tracemalloc (the measured loop includes tracemalloc overhead)"


@dataclass
class TrainReport:
    """What :func:`train_on_bundle` measured: the content of ``train.json``, in its key order."""

    accuracy: float | None
    """Test accuracy when the data has a labelled test split, else the held-out accuracy."""
    accuracy_split: str
    """Where :attr:`accuracy` comes from: ``test`` or ``held-out``."""
    val_accuracy: float | None
    """Accuracy on the held-out rows (None without a held-out split)."""
    val_loss: float | None
    """Loss on the held-out rows (None without a held-out split)."""
    peak_bytes: int
    """tracemalloc peak of the training loop."""
    analytic_bytes: int
    """Sum of the planned buffers (the floor of :attr:`peak_bytes`)."""
    budget_bytes: int
    """The budget planned for (0: unlimited)."""
    reserve_bytes: int
    """The planner's allowance for interpreter objects."""
    peak_over_analytic: float
    """:attr:`peak_bytes` / :attr:`analytic_bytes`."""
    steps: int
    """SGD steps run (this call)."""
    samples: int
    """Samples processed (this call)."""
    steps_per_second: float
    samples_per_second: float
    train_seconds: float
    """Wall time of the training loop."""
    feature_seconds: float
    """Wall time of writing the feature store (the encoder over the training images)."""
    n_train: int
    n_val: int
    epochs_run: int
    stopped_early: bool
    best_epoch: int | None
    plan: dict
    """:meth:`.budget.MemoryPlan.to_dict`."""
    config: dict
    """:meth:`.config.TrainConfig.to_dict`."""
    history: list[dict]
    """Per epoch: epoch, val_loss, val_accuracy."""
    memory_measured_with: str
    encoder: dict
    """The encoder file and its format."""
    bundle: str
    """Absolute path of the bundle."""
    data: str
    """Absolute path of the data."""
    argv: list[str]
    """The command line of the process."""
    test_accuracy: float | None = None
    """Accuracy on the test split (None: no labelled test split; not written then)."""
    test_loss: float | None = None
    """Loss on the test split (None: no labelled test split; not written then)."""
    wall_seconds: float = 0.0
    """Wall time of the whole call."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Keys of a read train.json this class does not know (kept, written back last)."""

    def to_dict(self) -> dict[str, Any]:
        """The train.json content (test_* only when there is a test split)."""
        optional = ("test_accuracy", "test_loss")
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra" and not (f.name in optional and getattr(self, f.name) is None)
        }
        return {**d, **self.extra}

    def summary(self) -> dict[str, Any]:
        """The :data:`SUMMARY_KEYS` of the report."""
        return {k: getattr(self, k) for k in SUMMARY_KEYS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainReport:
        """The report of a train.json dict; :class:`.errors.DeviceError` when keys are missing."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - d.keys())
        if missing:
            raise DeviceError(f"not a train.json report: missing {', '.join(missing)}")
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**{k: v for k, v in d.items() if k in names}, extra=extra)

    @classmethod
    def read(cls, path: str | os.PathLike) -> TrainReport:
        """Read ``path`` (a train.json, or the head folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / TRAIN_JSON
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DeviceError(f"{path} is not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise DeviceError(f"{path} is not a train.json report")
        return cls.from_dict(d)


def _features(bundle: Bundle, images, labels, *, out_path=None, seed=None):
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


def _stream(bundle: Bundle, images):
    """Features of ``images`` chunk by chunk: ``(start, features)``."""
    return stream_features(
        bundle.encoder(), images, input_shape=bundle.input_shape, mean=bundle.mean, std=bundle.std
    )


def _metrics(bundle: Bundle, head: Head, images, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``head``, streaming the images (nothing held whole).
    A non-finite loss (logits overflowing) is None, so that the result is valid JSON."""
    loss = correct = 0.0
    for start, f in _stream(bundle, images):
        m = head.evaluate(f, labels[start : start + len(f)])
        loss += m["loss"] * len(f)
        correct += m["accuracy"] * len(f)
    n = max(len(labels), 1)
    mean_loss = loss / n if np.isfinite(loss) else None
    return {"accuracy": correct / n, "loss": mean_loss, "samples": len(labels)}


def _check_labels(labels: np.ndarray, n_cls: int, where: str) -> None:
    """:class:`.errors.DataError` unless every label lies in ``[0, n_cls)``."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_cls):
        raise DataError(
            f"{where} labels must lie in [0, {n_cls}) (the head's classes), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def _test_split(data, b: Bundle, n_cls: int):
    """The labelled ``test`` split of ``data``, checked before training (image size, labels in
    ``[0, n_cls)``); None when ``data`` has no test split or it has no labels. A test split that
    is there but unusable raises :class:`.errors.DataError` (it is never silently dropped)."""
    if not has_split(data, "test"):
        return None
    test = load_images(data, "test", b.preprocess)
    if test.labels is None:
        return None
    check_image_size(test.images, b.input_shape)
    _check_labels(test.labels, n_cls, f"{data} test split:")
    return test


def _check_head(b: Bundle, h: Head, head) -> None:
    """:class:`.errors.DataError` unless ``h`` takes the bundle's features."""
    if h.weights.shape[0] != b.feature_dim:
        raise DataError(
            f"head {head} takes {h.weights.shape[0]} features but the bundle's encoder gives "
            f"{b.feature_dim}; use the head trained on this bundle"
        )


def train_on_bundle(
    bundle: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    cfg: TrainConfig,
    *,
    resume: bool = False,
) -> TrainReport:
    """Train a head on the ``train`` split of ``data`` with the encoder of ``bundle``, within
    ``cfg.budget``; write ``out``/head.npz and ``out``/train.json (atomically).

    The feature store goes to ``out``/.cache/train.npy (shuffled with ``cfg.seed``), checkpoints
    and the best head to ``out``/.work (``resume`` continues from its checkpoint). The head is
    scored on the ``test`` split of ``data`` when it has labels (an image folder without
    ``train``/``test`` sub-folders has no test split). Images of any size and colour mode are
    converted with the bundle's :attr:`.bundle.Bundle.preprocess`, chunk by chunk.
    """
    # one writer per head folder: a second `train --out` of it is refused, naming this one
    with lock_folder(out, what="head folder"):
        return _train_on_bundle(bundle, data, Path(out), cfg, resume=resume)


def _train_on_bundle(bundle, data, out: Path, cfg: TrainConfig, *, resume: bool) -> TrainReport:
    t0 = time.perf_counter()
    b = load_bundle(bundle)
    imgs = load_images(data, "train", b.preprocess)
    if imgs.labels is None:
        raise DeviceError(f"{data} has no labels for training")
    if imgs.class_names is not None and len(imgs.class_names) < 2:
        raise DataError(
            f"{data} has a single class ({imgs.class_names[0]!r}); training needs at least two"
        )
    names = imgs.class_names or b.class_names
    n_cls = len(names) if names else None
    top = int(imgs.labels.max()) + 1 if len(imgs.labels) else 0
    test = _test_split(data, b, n_cls if n_cls is not None else top)
    t_feat = time.perf_counter()
    feats, labels = _features(
        b, imgs.images, imgs.labels, out_path=out / ".cache" / "train.npy", seed=cfg.seed
    )
    feat_seconds = time.perf_counter() - t_feat
    res = train_head(feats, labels, cfg, num_classes=n_cls, workdir=out / ".work", resume=resume)
    head = Head(res.weights.copy(), res.bias.copy(), names)
    report = TrainReport(
        accuracy=res.val_accuracy,
        accuracy_split="held-out",
        val_accuracy=res.val_accuracy,
        val_loss=res.val_loss,
        peak_bytes=res.peak_bytes,
        analytic_bytes=res.plan.analytic_bytes,
        budget_bytes=res.plan.budget_bytes,
        reserve_bytes=res.plan.reserve_bytes,
        peak_over_analytic=res.peak_bytes / res.plan.analytic_bytes,
        steps=res.steps,
        samples=res.samples,
        steps_per_second=res.steps_per_second,
        samples_per_second=res.samples_per_second,
        train_seconds=res.seconds,
        feature_seconds=feat_seconds,
        n_train=res.n_train,
        n_val=res.n_val,
        epochs_run=res.epochs_run,
        stopped_early=res.stopped_early,
        best_epoch=res.best_epoch,
        plan=res.plan.to_dict(),
        config=json.loads(json.dumps(cfg.to_dict())),
        history=res.history,
        memory_measured_with=MEMORY_MEASURED_WITH,
        encoder={"file": b.encoder_file.name, "format": b.encoder_format},
        bundle=str(Path(bundle).resolve()),
        data=str(Path(data).resolve()),
        argv=list(sys.argv),
    )
    if test is not None:
        metrics = _metrics(b, head, test.images, test.labels)
        report.accuracy, report.accuracy_split = metrics["accuracy"], "test"
        report.test_accuracy, report.test_loss = metrics["accuracy"], metrics["loss"]
    save_head(out, head)
    report.wall_seconds = time.perf_counter() - t0
    atomic_write_json(out / TRAIN_JSON, report.to_dict())
    return report


def evaluate(
    bundle: str | os.PathLike,
    head: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "test",
) -> dict[str, float]:
    """Accuracy, mean loss and sample count of a trained head on ``split`` of ``data``."""
    b = load_bundle(bundle)
    h = load_head(head)
    _check_head(b, h, head)
    imgs = load_images(data, split, b.preprocess)
    if imgs.labels is None:
        raise DeviceError(f"{data} has no labels to evaluate against")
    _check_labels(imgs.labels, h.weights.shape[1], f"{data} {split} split:")
    return _metrics(b, h, imgs.images, imgs.labels)


def predict(
    bundle: str | os.PathLike,
    head: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "test",
    top: int = 1,
) -> list[dict[str, Any]]:
    """Predicted class (index, name, probability, the ``top`` classes) of each image (a
    non-finite probability, from overflowing logits, is None: the result stays valid JSON)."""
    if top < 1:
        raise DataError(f"top must be >= 1, got {top}")
    b = load_bundle(bundle)
    h = load_head(head)
    _check_head(b, h, head)
    imgs = load_images(data, split, b.preprocess)
    out = []
    probs = (p for _, f in _stream(b, imgs.images) for p in h.probabilities(f))
    for p in probs:
        best = np.argsort(-p)[:top]
        out.append(
            {
                "class": int(best[0]),
                "name": h.class_names[best[0]] if h.class_names else None,
                "probability": float(p[best[0]]) if np.isfinite(p[best[0]]) else None,
                "top": [int(i) for i in best],
            }
        )
    return out
