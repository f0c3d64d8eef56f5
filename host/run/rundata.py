"""The data of one run: the source (pre-training) and target (transfer) sets as the config asks.

:func:`check_data` checks every data spec of a config (source and target, each split the run
reads) by listing it, before the first stage; :func:`load_source` returns the source training
set on the training device (uint8 NHWC tensors) with its channel statistics; :func:`load_target`
returns the target's training (entropy, probe) and test (probe accuracy) sets as numpy arrays
(the training split cut to ``[data] target_train_per_class`` images per class or to the share
``target_fraction`` of each class, both seeded by the run's seed); each records its sizes
(:attr:`TargetData.sizes`, :func:`describe_sizes` for the log); :func:`write_target_npz` writes
the target in the device runtime's ``.npz`` layout.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from entropi.common.files import atomic_write_bytes
from entropi.device.imageprep import Preprocess

from ..data import channel_stats, check_spec, load_spec, spec_test_split, stratified_subset
from .config import RunConfig

__all__ = [
    "SourceData",
    "TargetData",
    "check_data",
    "describe_sizes",
    "load_source",
    "load_target",
    "write_target_npz",
]


@dataclass
class SourceData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sizes: dict | None = None
    """What was loaded and kept (:func:`describe_sizes`)."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """C x H x W of one image."""
        return (int(self.x_train.shape[3]), *map(int, self.x_train.shape[1:3]))


@dataclass
class TargetData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    sizes: dict | None = None
    """What was loaded and kept: ``spec``, ``classes``, ``train_images`` / ``test_images`` (used)
    of ``train_available`` / ``test_available``, the caps applied (``train_per_class``,
    ``test_per_class``: None = all; ``fraction``) (:func:`describe_sizes`)."""


def _subset(ds, per_class: int, seed: int):
    if per_class <= 0:
        return ds.x, ds.y
    idx = stratified_subset(ds.y, per_class=per_class, seed=seed)
    return ds.x[idx], ds.y[idx]


def _options(cfg: RunConfig) -> dict:
    """How the run finds and reads its data (the same for :func:`check_data` and the loads)."""
    return {
        "download": cfg.data.download,
        "seed": cfg.seed,
        "test_fraction": cfg.data.test_fraction,
        "prep": Preprocess(size=(cfg.pretrain.input_size,) * 2),
    }


def _load(cfg: RunConfig, which: str, split: str):
    """Split ``split`` of the source or target spec, found through the config's data roots."""
    return load_spec(getattr(cfg.data, which), split, cfg.data.roots, **_options(cfg))


def check_data(cfg: RunConfig) -> None:
    """Check the source and the target spec, each split the run reads (train and held-out), as
    :func:`load_spec` would load them but from listings and headers only (classes matched by
    name across splits, every class with images; a dataset to download is fetched now): a bad
    spec fails here, before the first stage, naming what is wrong."""
    for which in ("source", "target"):
        spec = getattr(cfg.data, which)
        splits = ("train", spec_test_split(spec))
        check_spec(spec, splits, cfg.data.roots, **_options(cfg))


def _cap(n: int) -> int | None:
    return n if n > 0 else None


def describe_sizes(which: str, sizes: dict) -> str:
    """One log line: the images ``which`` (source / target) used of those it holds, and why."""
    keys = ("train_per_class", "test_per_class")
    caps = [f"{sizes[k]} {k.removesuffix('_per_class')}" for k in keys if sizes.get(k)]
    how = f"at most {' / '.join(caps)} images per class" if caps else "every image"
    if sizes.get("fraction", 1.0) < 1:
        how += f", a {sizes['fraction']:g} share of each class"
    return (
        f"{which} {sizes['spec']}: {sizes['train_images']} train / {sizes['test_images']} test "
        f"images, {sizes['classes']} classes ({how} of {sizes['train_available']} / "
        f"{sizes['test_available']})"
    )


def load_source(cfg: RunConfig, device: torch.device) -> SourceData:
    train_ds = _load(cfg, "source", "train")
    test_ds = _load(cfg, "source", spec_test_split(cfg.data.source))
    x, y = _subset(train_ds, cfg.data.source_per_class, cfg.seed)
    xte, yte = _subset(test_ds, cfg.data.source_test_per_class, cfg.seed)
    mean, std = channel_stats(x)

    def to(a, dtype):
        return torch.as_tensor(a, dtype=dtype).to(device)

    sizes = {
        "spec": cfg.data.source,
        "classes": len(train_ds.classes),
        "train_images": len(y),
        "test_images": len(yte),
        "train_available": len(train_ds),
        "test_available": len(test_ds),
        "train_per_class": _cap(cfg.data.source_per_class),
        "test_per_class": _cap(cfg.data.source_test_per_class),
    }
    return SourceData(
        to(x, torch.uint8),
        to(y, torch.int64),
        to(xte, torch.uint8),
        to(yte, torch.int64),
        list(train_ds.classes),
        mean,
        std,
        sizes,
    )


def load_target(cfg: RunConfig) -> TargetData:
    train_ds = _load(cfg, "target", "train")
    test_ds = _load(cfg, "target", spec_test_split(cfg.data.target))
    xtr, ytr = _subset(train_ds, cfg.data.target_train_per_class, cfg.seed)
    if cfg.data.target_fraction < 1:  # the low-data regime: a seeded stratified share
        idx = stratified_subset(ytr, fraction=cfg.data.target_fraction, seed=cfg.seed)
        xtr, ytr = xtr[idx], ytr[idx]
    xte, yte = _subset(test_ds, cfg.data.target_test_per_class, cfg.seed)
    sizes = {
        "spec": cfg.data.target,
        "classes": len(train_ds.classes),
        "train_images": len(ytr),
        "test_images": len(yte),
        "train_available": len(train_ds),
        "test_available": len(test_ds),
        "train_per_class": _cap(cfg.data.target_train_per_class),
        "test_per_class": _cap(cfg.data.target_test_per_class),
        "fraction": cfg.data.target_fraction,
    }
    return TargetData(xtr, ytr, xte, yte, list(train_ds.classes), sizes)


def write_target_npz(tgt: TargetData, path: Path) -> Path:
    """The target data in the device runtime's .npz format (uint8 NHWC + labels + names)."""
    buf = io.BytesIO()
    np.savez(
        buf,
        x_train=tgt.x_train,
        y_train=tgt.y_train.astype(np.int64),
        x_test=tgt.x_test,
        y_test=tgt.y_test.astype(np.int64),
        class_names=np.array(tgt.classes),
    )
    return atomic_write_bytes(path, buf.getvalue())
