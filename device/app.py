"""The device library under ``entropi-device``: train, evaluate and use a head on a bundle.

:func:`train_on_bundle` loads a bundle and the images, writes the shuffled feature store,
trains the head within the budget (:func:`.trainer.train_head`), scores it on the test split
when there is one, and writes ``head.npz`` and ``train.json`` (:class:`TrainReport`);
:func:`evaluate` and :func:`predict` use a trained head. The CLI (:mod:`.cli`) and the host
pipeline call these functions; nothing here parses arguments or prints (what a user should know
but that does not stop the call is a :class:`DeviceWarning`).

A head records the names of its classes (those of its training data) and the sha256 of the
bundle's encoder files. :func:`evaluate` and :func:`predict` refuse a head with another bundle's
encoder, and :func:`evaluate` (and the test split of :func:`train_on_bundle`) matches the data's
classes to the head's by name: the same images as an ``.npz`` or as a folder (classes sorted by
name) score the same; a class the head does not know is refused. A head or data without names
is matched by index, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from entropi.common.files import atomic_write_text, ensure_real_dir
from entropi.common.lock import lock_folder

from .bundle import Bundle, load_bundle
from .checkpoint import CHECKPOINT_NAME
from .config import TrainConfig
from .data import (
    IMAGE_SUFFIXES,
    FolderImages,
    ImageSet,
    check_image_size,
    has_split,
    list_image_files,
    list_subfolders,
    load_images,
)
from .errors import DataError, DeviceError
from .features import extract_features, stream_features
from .head import HEAD_FILE, Head, load_head, save_head
from .trainer import BEST_NAME, train_head

__all__ = [
    "CACHE_DIR",
    "SUMMARY_KEYS",
    "TRAIN_JSON",
    "WORK_DIR",
    "DeviceWarning",
    "TrainReport",
    "evaluate",
    "predict",
    "train_on_bundle",
]

TRAIN_JSON = "train.json"
"""The report :func:`train_on_bundle` writes next to ``head.npz``."""

CACHE_DIR = ".cache"
"""Sub-folder of a head folder holding the feature store while training (removed after)."""

WORK_DIR = ".work"
"""Sub-folder of a head folder holding the checkpoint and the best head (kept to resume)."""


class DeviceWarning(UserWarning):
    """Something the user should know that does not stop the call (the CLI prints it as one
    ``warning:`` line): classes matched by index, a resume that starts from scratch."""


def _warn(message: str) -> None:
    warnings.warn(message, DeviceWarning, stacklevel=3)


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
    """The encoder file, its format and sha256."""
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
    class_names: list[str] | None = None
    """The head's classes (None: its training data named none; classes are indices)."""
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
        """Read ``path`` (a train.json, or the head folder holding one); strict JSON (a bare
        ``NaN`` or ``Infinity``, which JSON does not have, is refused)."""
        path = Path(path)
        if path.is_dir():
            path = path / TRAIN_JSON
        try:
            d = json.loads(path.read_text(), parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as e:
            raise DeviceError(f"{path} is not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise DeviceError(f"{path} is not a train.json report")
        return cls.from_dict(d)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


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


def _names(names: list[str], most: int = 10) -> str:
    """``'a', 'b', ... (N in all)``: names quoted (control characters escaped), at most
    ``most`` of them."""
    shown = ", ".join(repr(n) for n in names[:most])
    return shown if len(names) <= most else f"{shown}, ... ({len(names)} in all)"


def _head_labels(
    head_names: list[str] | None, imgs: ImageSet, n_cls: int, where: str, head: str
) -> np.ndarray:
    """The labels of ``imgs`` as indices of the head's classes (``n_cls`` of them, named
    ``head_names``). Mapped by name when both the head and the data name their classes: a class
    with images that the head was not trained on is a :class:`.errors.DataError` naming it. By
    index (checked to lie in ``[0, n_cls)``) when either names none, with a warning when only
    one does. ``where`` names the data, ``head`` the head, in messages."""
    labels, names = imgs.labels, imgs.class_names
    if head_names is None or names is None:
        if names is not None:
            _warn(
                f"{head} records no class names (trained on data without names, or by an older "
                f"entropi): the classes of {where} ({_names(names)}) are matched by index"
            )
        elif head_names is not None:
            _warn(
                f"{where} names no classes: its labels are taken as indices of {head}'s classes "
                f"({_names(head_names)})"
            )
        _check_labels(labels, n_cls, f"{where}:")
        return labels
    _check_labels(labels, len(names), f"{where}:")
    index = {n: i for i, n in enumerate(head_names)}
    unknown = [names[k] for k in np.unique(labels).tolist() if names[k] not in index]
    if unknown:
        raise DataError(
            f"{where} has images of classes {head} was not trained on: {_names(unknown)}; its "
            f"classes are {_names(head_names)}"
        )
    table = np.asarray([index.get(n, -1) for n in names], np.int64)
    return table[labels]


def _test_split(data, b: Bundle, names: list[str] | None, n_cls: int):
    """The labelled ``test`` split of ``data`` and its labels as indices of the training classes
    ``names`` (by name, :func:`_head_labels`), checked before training (image size, classes);
    None when ``data`` has no test split or it has no labels. A test split that is there but
    unusable raises :class:`.errors.DataError` (it is never silently dropped)."""
    if not has_split(data, "test"):
        return None
    test = load_images(data, "test", b.preprocess)
    if test.labels is None:
        return None
    check_image_size(test.images, b.input_shape)
    labels = _head_labels(names, test, n_cls, f"{data} test split", "the head being trained")
    return test, labels


def _encoder_digests(b: Bundle) -> list[str]:
    """sha256 of every encoder file of ``b`` (its formats of one encoder), sorted."""
    files = b.manifest["files"]
    return sorted({files[name]["sha256"] for name in b.manifest["encoders"]})


def _encoder_sha256(b: Bundle) -> str:
    """sha256 of the encoder file this runtime uses from ``b``."""
    return b.manifest["files"][b.encoder_file.name]["sha256"]


def _check_head(b: Bundle, h: Head, head) -> None:
    """:class:`.errors.DataError` unless ``h`` takes ``b``'s features and was trained with its
    encoder (the sha256 it records); a head that records no encoder is used with a warning."""
    if h.weights.shape[0] != b.feature_dim:
        raise DataError(
            f"head {head} takes {h.weights.shape[0]} features but the bundle's encoder gives "
            f"{b.feature_dim}; use the head trained on this bundle"
        )
    if h.encoder_sha256 is None:
        _warn(
            f"head {head} does not record the encoder it was trained with (written by an older "
            f"entropi): it cannot be checked against bundle {b.path}"
        )
    elif _encoder_sha256(b) not in h.encoder_sha256:
        raise DataError(
            f"head {head} was trained with another bundle's encoder (sha256 "
            f"{h.encoder_sha256[0][:12]}...), not with {b.path}'s {b.encoder_file.name} (sha256 "
            f"{_encoder_sha256(b)[:12]}...); use the bundle it was trained with, or train a head "
            "on this one"
        )


def train_on_bundle(
    bundle: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = True,
) -> TrainReport:
    """Train a head on the ``train`` split of ``data`` with the encoder of ``bundle``, within
    ``cfg.budget``; write ``out``/head.npz and ``out``/train.json (atomically).

    The feature store goes to ``out``/.cache/train.npy (shuffled with ``cfg.seed``; removed when
    the call ends), checkpoints and the best head to ``out``/.work (``resume`` continues from its
    checkpoint; a failed call that saved none leaves no .work). Neither folder, nor ``out``, may
    be a symbolic link (:func:`.io.ensure_real_dir`). ``overwrite=False`` refuses an ``out`` that
    already holds a head (unless ``resume``). The head is scored on the ``test`` split of
    ``data`` when it has labels (an image folder without ``train``/``test`` sub-folders has no
    test split), its classes matched to the training classes by name. Images of any size and
    colour mode are converted with the bundle's :attr:`.bundle.Bundle.preprocess`, chunk by
    chunk.
    """
    out = Path(out)
    if os.path.lexists(out):
        ensure_real_dir(out)  # an existing --out must be a real folder, not a link
    # one writer per head folder: a second `train --out` of it is refused, naming this one
    with lock_folder(out, what="head folder"):
        if not (overwrite or resume):
            _refuse_existing_head(out)
        ok = False
        try:
            report = _train_on_bundle(bundle, data, out, cfg, resume=resume)
            ok = True
            return report
        finally:
            _remove_scratch(out, failed=not ok)


def _refuse_existing_head(out: Path) -> None:
    found = [n for n in (HEAD_FILE, TRAIN_JSON) if os.path.lexists(out / n)]
    if found:
        raise DeviceError(
            f"head folder {out} already holds {' and '.join(found)}: pass --overwrite to replace "
            "the head, --resume to continue its training, or choose another --out"
        )


def _remove_scratch(out: Path, *, failed: bool) -> None:
    """Remove the feature store (``.cache``) and, after a failure that saved no checkpoint, the
    work folder's best head: what is left can be resumed, or is the result. Links are removed,
    never followed; folders that hold anything else are kept."""
    scratch = [(out / CACHE_DIR, ("train.npy",))]
    if failed and not os.path.lexists(out / WORK_DIR / CHECKPOINT_NAME):
        scratch.append((out / WORK_DIR, (BEST_NAME,)))
    for folder, names in scratch:
        if not folder.is_dir() or folder.is_symlink():
            continue
        for name in names:
            try:
                (folder / name).unlink(missing_ok=True)
            except OSError:
                pass
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: not only ours


def _train_on_bundle(bundle, data, out: Path, cfg: TrainConfig, *, resume: bool) -> TrainReport:
    t0 = time.perf_counter()
    work = out / WORK_DIR
    if resume and not os.path.lexists(work / CHECKPOINT_NAME):
        hint = (
            " (checkpoint_every 0, the default, saves none: set --checkpoint-every N to be able "
            "to resume)"
            if cfg.checkpoint_every == 0
            else ""
        )
        _warn(f"no checkpoint at {work / CHECKPOINT_NAME}{hint}; training starts from scratch")
    b = load_bundle(bundle)
    imgs = load_images(data, "train", b.preprocess)
    if imgs.labels is None:
        raise DeviceError(f"{data} has no labels for training")
    names = imgs.class_names
    if names is not None and len(names) < 2:
        raise DataError(f"{data} has a single class ({names[0]!r}); training needs at least two")
    if names is not None and len(set(names)) != len(names):
        raise DataError(f"{data} names a class twice: {_names(names)}")
    n_cls = len(names) if names else None
    top = int(imgs.labels.max()) + 1 if len(imgs.labels) else 0
    test = _test_split(data, b, names, n_cls if n_cls is not None else top)
    t_feat = time.perf_counter()
    feats, labels = _features(
        b, imgs.images, imgs.labels, out_path=out / CACHE_DIR / "train.npy", seed=cfg.seed
    )
    feat_seconds = time.perf_counter() - t_feat
    res = train_head(feats, labels, cfg, num_classes=n_cls, workdir=work, resume=resume)
    head = Head(res.weights.copy(), res.bias.copy(), names, _encoder_digests(b))
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
        encoder={
            "file": b.encoder_file.name,
            "format": b.encoder_format,
            "sha256": _encoder_sha256(b),
        },
        bundle=str(Path(bundle).resolve()),
        data=str(Path(data).resolve()),
        argv=list(sys.argv),
        class_names=names,
    )
    if test is not None:
        metrics = _metrics(b, head, test[0].images, test[1])
        report.accuracy, report.accuracy_split = metrics["accuracy"], "test"
        report.test_accuracy, report.test_loss = metrics["accuracy"], metrics["loss"]
    save_head(out, head)
    if names is None:  # said once the head exists: a failed call prints its error alone
        _warn(
            f"{data} names no classes (no class_names): the head's classes are the label "
            "indices, and eval / predict will match them by index"
            + (" (the bundle's class names are not assumed)" if b.class_names else "")
        )
    report.wall_seconds = time.perf_counter() - t0
    # strict JSON: a NaN or inf here is a bug (every measure is finite or None), never written
    text = json.dumps(report.to_dict(), indent=2, allow_nan=False)
    atomic_write_text(out / TRAIN_JSON, text + "\n")
    return report


def evaluate(
    bundle: str | os.PathLike,
    head: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "test",
) -> dict[str, float]:
    """Accuracy, mean loss and sample count of a trained head on ``split`` of ``data``, its
    classes matched to the head's by name (:func:`_head_labels`)."""
    b = load_bundle(bundle)
    h = load_head(head)
    _check_head(b, h, head)
    imgs = load_images(data, split, b.preprocess)
    if imgs.labels is None:
        raise DeviceError(f"{data} has no labels to evaluate against")
    n_cls = h.weights.shape[1]
    labels = _head_labels(h.class_names, imgs, n_cls, f"{data} {split} split", f"head {head}")
    return _metrics(b, h, imgs.images, labels)


def _predict_images(data: str | os.PathLike, split: str, prep) -> ImageSet:
    """What :func:`predict` reads: :func:`.data.load_images`, or the images of a flat folder
    (no class sub-folders: unlabelled images, what predict is for)."""
    path = Path(data)
    if path.is_dir() and not path.is_symlink() and not list_subfolders(path):
        files = list_image_files(path)
        if not files:
            raise DataError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return ImageSet(FolderImages(files, prep), None, None)
    return load_images(data, split, prep)


def _probability(p: float) -> float | None:
    return float(p) if np.isfinite(p) else None


def predict(
    bundle: str | os.PathLike,
    head: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "test",
    top: int = 1,
) -> list[dict[str, Any]]:
    """Per image of ``data`` (an image file, a flat folder of images, a class folder or an
    ``.npz``'s ``split``): its ``file`` (the image file; for an ``.npz``, the ``.npz``) and
    ``index`` (its position in ``data``), the predicted ``class`` (index), ``name`` (None when
    the head names no classes) and ``probability``, and the ``top`` classes, each with its
    class, name and probability. A non-finite probability (overflowing logits) is None: the
    result stays valid JSON."""
    if top < 1:
        raise DataError(f"top must be >= 1, got {top}")
    b = load_bundle(bundle)
    h = load_head(head)
    _check_head(b, h, head)
    imgs = _predict_images(data, split, b.preprocess)
    src = imgs.images
    files = src.paths if isinstance(src, FolderImages) else None
    names = h.class_names
    out = []
    probs = (p for _, f in _stream(b, src) for p in h.probabilities(f))
    for i, p in enumerate(probs):
        best = np.argsort(-p, kind="stable")[:top]
        ranked = [
            {
                "class": int(k),
                "name": names[k] if names else None,
                "probability": _probability(p[k]),
            }
            for k in best
        ]
        out.append(
            {
                "file": files[i] if files is not None else str(data),
                "index": i,
                **ranked[0],
                "top": ranked,
            }
        )
    return out
