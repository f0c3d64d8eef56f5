"""The rung record: the one schema of a rung of the pruning ladder.

The host pipeline writes rungs, export, bundle and benchmarks read them; all of them go through
:class:`RungInfo` (what a rung *is*, without tensors) and :class:`Rung` (the info plus the state
dicts). On disk a rung is a ``torch.save`` of a flat dict, loaded with ``weights_only=True``::

    format              RUNG_FORMAT (a newer file is refused with a clear error)
    arch                architecture name (the host's registry builds the module)
    feature_dim         width of the encoder's output
    input_shape         [C, H, W] of one input image
    normalization       {"mean": [C floats], "std": [C floats]} in 0..1 pixel units
    alpha, nnz, n_prunable, alpha_target
                        measured kept fraction of the prunable weights, their non-zeros and count,
                        and the fraction the ladder aimed at
    source_dataset, source_classes, num_source_classes, source_accuracy, train_seconds
    method, widths      (format 2) "magnitude" or "channel"; a channel rung's layer sizes
    encoder, head, masks  state dicts (pruned weights exactly 0) and a bool mask per prunable
                          weight name

This module lives in the export layer because export is the lowest layer that reads rungs; it
needs torch to save, load and check the tensors.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from entropi.common.dtypes import PRUNE_METHODS
from entropi.common.errors import EntropiError
from entropi.common.files import atomic_write_bytes

__all__ = [
    "PRUNE_METHODS",
    "RUNG_FORMAT",
    "CheckpointError",
    "Rung",
    "RungInfo",
    "load_payload",
    "load_rung_file",
    "save_rung",
]

RUNG_FORMAT = 2
"""Format 2 adds ``method`` and ``widths`` (channel rungs are written as 2, magnitude rungs
still as 1, which older entropi reads: a format-1 file has neither key)."""
MAX_WIDTH = 1 << 16
_TENSORS = ("encoder", "head", "masks")


class CheckpointError(EntropiError, ValueError):
    """A checkpoint or run directory is missing, corrupt or of the wrong kind."""


@dataclass(frozen=True)
class RungInfo:
    """What one rung is, without its tensors."""

    arch: str
    feature_dim: int
    input_shape: tuple[int, ...]
    """C x H x W of one input image."""
    normalization: dict[str, list[float]]
    """``{"mean": [...], "std": [...]}`` per channel, in 0..1 pixel units."""
    alpha: float
    """Measured kept fraction of the prunable (conv / linear) weights."""
    nnz: int
    n_prunable: int
    alpha_target: float | None = None
    source_dataset: str | None = None
    source_classes: list[str] = field(default_factory=list)
    num_source_classes: int = 0
    source_accuracy: float | None = None
    train_seconds: float = 0.0
    method: str = "magnitude"
    """How the ladder pruned it: ``"magnitude"`` (masks, the paper's) or ``"channel"`` (a
    smaller dense network, its layer sizes in ``widths``)."""
    widths: dict[str, list[int]] | None = None
    """A channel rung's ``{module name: [in, out, groups] | [in, out] | [features]}`` (the
    host's ``channels.resize_to_widths`` rebuilds the network from them); None otherwise."""
    index: int | None = None
    """Position in the ladder (0 = dense); set when read from a run folder, not stored."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite floats become None)."""
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()
        }


@dataclass
class Rung:
    """A rung: its :class:`RungInfo` plus encoder / source-head state dicts and masks."""

    info: RungInfo
    encoder: dict[str, Any]
    head: dict[str, Any]
    masks: dict[str, Any]

    def to_payload(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.info)
        d.pop("index")
        d["input_shape"] = list(self.info.input_shape)
        if self.info.method == "magnitude" and self.info.widths is None:
            # a magnitude rung stays the format-1 record every entropi reads, byte for byte
            d.pop("method")
            d.pop("widths")
            version = 1
        else:
            version = RUNG_FORMAT
        return {
            "format": version,
            **d,
            "encoder": self.encoder,
            "head": self.head,
            "masks": self.masks,
        }

    @classmethod
    def from_payload(cls, payload: Any, where: str = "(in memory)", index: int | None = None):
        """Validate a loaded dict; every problem is a :class:`CheckpointError` naming ``where``."""
        if not isinstance(payload, dict):
            raise CheckpointError(
                f"checkpoint {where} holds a {type(payload).__name__}, not a dict"
            )
        version = payload.get("format")
        if not isinstance(version, int) or version < 1:
            raise CheckpointError(f"checkpoint {where} has no valid rung format version")
        if version > RUNG_FORMAT:
            raise CheckpointError(
                f"checkpoint {where} has rung format {version}; this entropi reads up to "
                f"{RUNG_FORMAT} (upgrade entropi)"
            )
        names = {f.name for f in dataclasses.fields(RungInfo)} - {"index"}
        required = [
            f.name
            for f in dataclasses.fields(RungInfo)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in (*required, *_TENSORS) if k not in payload]
        if missing:
            raise CheckpointError(f"checkpoint {where} lacks keys {missing}")
        not_dicts = [k for k in _TENSORS if not isinstance(payload[k], dict)]
        if not_dicts:
            raise CheckpointError(f"checkpoint {where}: {not_dicts} must be state dicts")
        values = {k: v for k, v in payload.items() if k in names}
        try:
            values["input_shape"] = tuple(int(v) for v in values["input_shape"])
        except (TypeError, ValueError):
            raise CheckpointError(
                f"checkpoint {where}: input_shape must be a list of integers, got "
                f"{values['input_shape']!r}"
            ) from None
        try:
            info = RungInfo(**values, index=index)
        except TypeError as e:  # pragma: no cover - guarded by the key checks above
            raise CheckpointError(f"checkpoint {where}: {e}") from e
        rung = cls(info, *(payload[k] for k in _TENSORS))
        _check_info(info, where)
        _check_tensors(rung, where)
        return rung


MAX_FEATURE_DIM = 1 << 16
"""Widest encoder output a rung may claim (entropi's architectures: 256 to 1024)."""
MAX_SIDE = 4096
"""Largest image side a rung may claim."""


def _is_int(v: Any, lo: int = 0, hi: float = math.inf) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_real(v: Any, lo: float = -math.inf, hi: float = math.inf) -> bool:
    ok = isinstance(v, int | float) and not isinstance(v, bool)
    return ok and math.isfinite(v) and lo <= v <= hi


def _check_info(info: RungInfo, where: str) -> None:
    """Every field of the record in its type and range (a record from elsewhere must not make
    the host allocate a terabyte or index past a tensor); :class:`CheckpointError` naming it."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"checkpoint {where}: {what}; the rung file is damaged")

    need(isinstance(info.arch, str) and bool(info.arch), f"arch is {info.arch!r}")
    need(
        _is_int(info.feature_dim, 1, MAX_FEATURE_DIM),
        f"feature_dim is {info.feature_dim!r}, not in [1, {MAX_FEATURE_DIM}]",
    )
    shape = info.input_shape
    need(
        len(shape) == 3 and 1 <= shape[0] <= 4 and all(1 <= s <= MAX_SIDE for s in shape[1:]),
        f"input_shape is {list(shape)}, not [C, H, W] with C in 1..4, H and W in 1..{MAX_SIDE}",
    )
    norm = info.normalization
    need(
        isinstance(norm, dict)
        and all(
            isinstance(norm.get(k), list)
            and len(norm[k]) == shape[0]
            and all(_is_real(v) for v in norm[k])
            for k in ("mean", "std")
        )
        and all(v > 0 for v in norm["std"]),
        f"normalization must hold {shape[0]} finite means and positive stds, got {norm!r}",
    )
    need(_is_real(info.alpha, 0.0, 1.0), f"alpha is {info.alpha!r}, not in [0, 1]")
    need(_is_int(info.n_prunable), f"n_prunable is {info.n_prunable!r}, not a count")
    need(
        _is_int(info.nnz, 0, info.n_prunable),
        f"nnz is {info.nnz!r}, not a count of at most n_prunable = {info.n_prunable}",
    )
    need(
        info.alpha_target is None or _is_real(info.alpha_target, 0.0, 1.0),
        f"alpha_target is {info.alpha_target!r}, not in [0, 1]",
    )
    need(
        info.source_dataset is None or isinstance(info.source_dataset, str),
        f"source_dataset is {info.source_dataset!r}, not a string",
    )
    classes = info.source_classes
    need(
        isinstance(classes, list) and all(isinstance(c, str) for c in classes),
        "source_classes is not a list of names",
    )
    need(
        _is_int(info.num_source_classes, 0)
        and (not classes or len(classes) == info.num_source_classes),
        f"num_source_classes is {info.num_source_classes!r} for {len(classes)} source_classes",
    )
    acc = info.source_accuracy  # None or NaN: not measured
    need(
        acc is None or _is_real(acc, 0.0, 1.0) or (isinstance(acc, float) and math.isnan(acc)),
        f"source_accuracy is {info.source_accuracy!r}, not in [0, 1]",
    )
    need(_is_real(info.train_seconds, 0.0), f"train_seconds is {info.train_seconds!r}")
    need(info.method in PRUNE_METHODS, f"method is {info.method!r}, not one of {PRUNE_METHODS}")
    widths = info.widths
    if info.method == "magnitude":
        need(widths is None, "a magnitude rung has channel widths")
        return
    need(
        isinstance(widths, dict)
        and all(
            isinstance(k, str)
            and isinstance(v, list)
            and 1 <= len(v) <= 3
            and all(_is_int(w, 1, MAX_WIDTH) for w in v)
            for k, v in widths.items()
        ),
        f"a channel rung's widths must map module names to 1-3 sizes in [1, {MAX_WIDTH}]",
    )


def _check_tensors(rung: Rung, where: str) -> None:
    """Tensors only, finite weights; the source head a ``num_source_classes x feature_dim``
    linear layer; a bool mask per encoder weight of that weight's shape. So a mask of the wrong
    shape, or a head of 10**9 classes, is refused before any module is built."""

    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {where}: {what}; the rung file is damaged")

    for key in _TENSORS:
        state = getattr(rung, key)
        bad = [k for k, v in state.items() if not (isinstance(k, str) and torch.is_tensor(v))]
        if bad:
            raise fail(f"{key} holds {bad[0]!r}, which is not a named tensor")
    for key in ("encoder", "head"):
        state = getattr(rung, key)
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise fail(f"{key} tensor {bad[0]!r} holds NaN or infinite values")
    info = rung.info
    want = {
        "weight": (info.num_source_classes, info.feature_dim),
        "bias": (info.num_source_classes,),
    }
    got = {k: tuple(v.shape) for k, v in rung.head.items()}
    if got != want:
        raise fail(
            f"the source head is {got}, but num_source_classes = {info.num_source_classes} and "
            f"feature_dim = {info.feature_dim} make it {want}"
        )
    for name, mask in rung.masks.items():
        if name not in rung.encoder:
            continue  # the encoder does not match its architecture: the host names that
        if mask.dtype != torch.bool or mask.shape != rung.encoder[name].shape:
            raise fail(
                f"mask {name!r} is {mask.dtype} {tuple(mask.shape)}, the weight it masks is "
                f"{tuple(rung.encoder[name].shape)} (a bool mask of that shape is needed)"
            )


def save_rung(path: str | os.PathLike, rung: Rung) -> Path:
    """Atomically ``torch.save`` the rung's payload to ``path``."""
    buf = io.BytesIO()
    torch.save(rung.to_payload(), buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_payload(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``; a missing or corrupt file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch checkpoint ({type(e).__name__}: {e})"
        ) from e


def load_rung_file(path: str | os.PathLike, index: int | None = None) -> Rung:
    """Read and validate one rung file."""
    return Rung.from_payload(load_payload(path), str(path), index)
