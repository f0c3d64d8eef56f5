"""Checkpoints of the pruning ladder and the layout of a run directory.

A run directory holds::

    RUNDIR/config.toml          resolved config
    RUNDIR/run.json             command line, package version, seed, start time
    RUNDIR/progress.log         one line per finished step
    RUNDIR/pretrain.pt          dense source model (stage checkpoint)
    RUNDIR/rungs/rung_NNN.pt    one file per rung of the ladder (rung 0 is dense)
    RUNDIR/results.json         per-rung entropy / probe results, selection, timings
    RUNDIR/entropy_vs_alpha.png

A rung file is a ``torch.save`` of a plain dict (loaded with ``weights_only=True``):
``format``, ``arch``, ``feature_dim``, ``num_source_classes``, ``alpha`` (measured kept fraction of
the prunable weights), ``nnz``, ``n_prunable``, ``source_accuracy``, ``normalization``
(``{"mean": [..3], "std": [..3]}`` in 0..1 pixel units), ``input_shape`` ([3, 32, 32]),
``source_dataset``, ``encoder`` (state dict, pruned weights exactly 0), ``head`` (source head
state dict), ``masks`` (bool tensor per prunable weight name).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from entropi.device.io import atomic_write_bytes
from .models import Classifier, build_encoder

__all__ = [
    "CheckpointError",
    "RUNG_FORMAT",
    "list_rungs",
    "load_checkpoint",
    "load_rung",
    "resolve_rung",
    "rung_path",
    "save_checkpoint",
]

RUNG_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint or run directory is missing, corrupt or of the wrong kind."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` ``payload`` (a dict of tensors and plain values) to ``path``."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; raise :class:`CheckpointError` if
    the file is missing, truncated, not a checkpoint, or lacks one of ``required`` keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch checkpoint ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a dict")
    missing = [k for k in required if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks keys {missing}")
    return payload


def rung_path(rundir: str | os.PathLike, index: int) -> Path:
    return Path(rundir) / "rungs" / f"rung_{index:03d}.pt"


def list_rungs(rundir: str | os.PathLike) -> list[Path]:
    """Rung files of a run, in ladder order (dense first)."""
    rundir = Path(rundir)
    if not rundir.is_dir():
        raise CheckpointError(f"run directory {rundir} does not exist")
    return sorted((rundir / "rungs").glob("rung_[0-9][0-9][0-9].pt"))


def resolve_rung(rundir: str | os.PathLike, rung: str | int = "selected") -> int:
    """Turn ``"selected"`` (the entropy argmax in results.json) or an index into a rung index."""
    rundir = Path(rundir)
    rungs = list_rungs(rundir)
    if not rungs:
        raise CheckpointError(
            f"run directory {rundir} has no pruning ladder (no rungs/rung_NNN.pt); "
            "run `entropi prune` (or `entropi run`) first"
        )
    if rung == "selected":
        results = rundir / "results.json"
        if not results.is_file():
            raise CheckpointError(
                f"{results} does not exist, so no rung is selected yet; run `entropi select` "
                "or pass a rung index"
            )
        index = json.loads(results.read_text())["selected_index"]
    else:
        try:
            index = int(rung)
        except (TypeError, ValueError):
            raise CheckpointError(f"rung must be 'selected' or an integer, got {rung!r}") from None
    if not 0 <= index < len(rungs):
        raise CheckpointError(
            f"rung {index} does not exist in {rundir}: the ladder has rungs 0..{len(rungs) - 1}"
        )
    return index


def load_rung(
    rundir: str | os.PathLike, rung: str | int = "selected"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load one rung as an eval-mode encoder plus its metadata (the checkpoint minus tensors)."""
    index = resolve_rung(rundir, rung)
    path = rung_path(rundir, index)
    ckpt = load_checkpoint(path, required=("arch", "encoder", "alpha", "nnz"))
    encoder = build_encoder(ckpt["arch"])
    _load_state(encoder, ckpt, "encoder", path)
    encoder.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("encoder", "head", "masks")}
    meta["index"] = index
    meta["path"] = str(path)
    return encoder, meta


def classifier_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "") -> Classifier:
    """Rebuild the full source classifier (encoder + source head) from a rung checkpoint dict."""
    encoder = build_encoder(ckpt["arch"])
    model = Classifier(encoder, encoder.feature_dim, ckpt["num_source_classes"])
    _load_state(model.encoder, ckpt, "encoder", path)
    _load_state(model.head, ckpt, "head", path)
    return model


def _load_state(module: torch.nn.Module, ckpt: dict[str, Any], key: str, path) -> None:
    """``module.load_state_dict(ckpt[key])``, a mismatch reported as :class:`CheckpointError`."""
    try:
        module.load_state_dict(ckpt[key])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path or '(in memory)'}: {key} does not match arch {ckpt['arch']!r}: {e}"
        ) from e
