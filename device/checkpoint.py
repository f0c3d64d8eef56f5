"""Resumable checkpoints of head training: the loop's arrays, the run's state, a fingerprint.

A checkpoint is an ``.npz`` (:func:`._npz.save_npz`: written straight from the buffers, no copy)
holding the weights and bias (and momentum buffers), the per-epoch history, the fields of
:class:`TrainState`, and the fingerprint of the run (configuration, plan, data shape). It is
restored into the existing buffers in place, and only when the fingerprint matches: a resumed
run then continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ._npz import read_member, read_npz_into, save_npz
from .budget import MemoryPlan
from .config import TrainConfig
from .errors import DataError, ResumeError

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "TrainState", "run_fingerprint"]

CHECKPOINT_NAME = "checkpoint.npz"


@dataclass
class TrainState:
    """Where a run stands, besides its arrays (what a checkpoint restores)."""

    step: int = 0
    """Global steps done."""
    best: float = math.inf
    """Lowest held-out loss so far."""
    best_epoch: int = -1
    """Epoch of :attr:`best` (-1: none yet)."""
    bad: int = 0
    """Epochs since the held-out loss last improved."""
    stopped: bool = False
    """Early stopping has ended the run."""


_STATE_FIELDS = tuple(f.name for f in fields(TrainState))


def data_digest(features: np.ndarray, labels: np.ndarray, *, chunk_rows: int = 4096) -> str:
    """sha256 of the feature store (rows in store order) and the labels, read ``chunk_rows`` rows
    at a time (a memmap'd store is hashed without being loaded)."""
    h = hashlib.sha256()
    h.update(repr((features.shape, str(features.dtype), str(labels.dtype))).encode())
    for i in range(0, len(features), chunk_rows):
        h.update(np.ascontiguousarray(features[i : i + chunk_rows]).data)
    h.update(np.ascontiguousarray(labels).data)
    return h.hexdigest()


def run_fingerprint(
    config: TrainConfig, plan: MemoryPlan, shape: tuple[int, int, int], data: str = ""
) -> str:
    """What must match for a checkpoint to be resumed: the configuration (but checkpoint_every),
    the plan's batch and block rows, ``(samples, feature_dim, classes)`` and the
    :func:`data_digest` of the features and labels (other data of the same shape, the labels
    permuted say, must not continue the old weights)."""
    return json.dumps(
        {
            "config": config.fingerprint(),
            "plan": [plan.batch_size, plan.block_rows],
            "shape": list(shape),
            "data": data,
        }
    )


class Checkpoint:
    """The checkpoint file of one run: saves and restores ``arrays`` (in place) and a
    :class:`TrainState`."""

    def __init__(
        self, path: str | os.PathLike, arrays: dict[str, np.ndarray], fingerprint: str
    ) -> None:
        self.path = Path(path)
        self.arrays = arrays
        self.fingerprint = fingerprint
        self._fingerprint_bytes = np.frombuffer(fingerprint.encode(), np.uint8)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, state: TrainState) -> None:
        """Write the arrays, ``state`` and the fingerprint atomically."""
        meta = {k: np.asarray(getattr(state, k)) for k in _STATE_FIELDS}
        save_npz(self.path, {**self.arrays, **meta, "fingerprint": self._fingerprint_bytes})

    def restore(self, state: TrainState) -> None:
        """Read the checkpoint into the arrays and ``state``; :class:`.errors.ResumeError` when it
        is unreadable or was written by a run with another fingerprint."""
        try:
            saved = read_member(self.path, "fingerprint", max_bytes=1 << 20).tobytes().decode()
            meta = {}
            for k in _STATE_FIELDS:
                v = read_member(self.path, k, max_bytes=64)
                if v.shape != () or v.dtype.kind not in "biuf":
                    raise DataError(f"{self.path}:{k} must be a scalar, got {v.dtype} {v.shape}")
                meta[k] = v.item()
        except (DataError, KeyError, UnicodeDecodeError) as e:
            raise ResumeError(
                f"checkpoint {self.path} is unreadable ({_reason(e)}); delete it to start over"
            ) from e
        if saved != self.fingerprint:
            raise ResumeError(
                f"checkpoint {self.path} was written with a different configuration or data "
                f"({saved}); now {self.fingerprint}. Use the same settings or delete the "
                "checkpoint."
            )
        try:
            read_npz_into(self.path, self.arrays)
        except DataError as e:
            raise ResumeError(
                f"checkpoint {self.path} is unreadable ({e}); delete it to start over"
            ) from e
        _check_state(self.path, self.arrays, meta)
        for k, v in meta.items():
            setattr(state, k, v)


def _check_state(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """:class:`.errors.ResumeError` unless the restored state is one a run can reach: finite
    weights, bias and momentum, no NaN in the best loss (inf: none yet), whole non-negative
    counts (best_epoch: -1 for none)."""
    bad = [k for k, a in arrays.items() if k != "history" and not np.isfinite(a).all()]
    bad += [k for k in ("best",) if math.isnan(meta[k])]
    bad += [
        k
        for k, least in (("step", 0), ("bad", 0), ("best_epoch", -1))
        if not (isinstance(meta[k], int) and meta[k] >= least)
    ]
    if bad:
        raise ResumeError(
            f"checkpoint {path} holds an impossible state (NaN, inf or a bad count in "
            f"{', '.join(bad)}); delete it to start over"
        )


def _reason(e: Exception) -> str:
    return f"no member {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
