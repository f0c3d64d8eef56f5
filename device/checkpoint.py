"""Resumable checkpoints of head training: the loop's arrays, the run's state, a fingerprint.

A checkpoint is an ``.npz`` (:func:`._npz.save_npz`: written straight from the buffers, no copy)
holding the weights and bias (and momentum buffers), the per-epoch history, the fields of
:class:`TrainState`, and the fingerprint of the run (configuration, plan, data shape). It is
restored into the existing buffers in place, and only when the fingerprint matches: a resumed
run then continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ._npz import read_npz_into, save_npz
from .budget import MemoryPlan
from .config import TrainConfig
from .errors import ResumeError

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


def run_fingerprint(config: TrainConfig, plan: MemoryPlan, shape: tuple[int, int, int]) -> str:
    """What must match for a checkpoint to be resumed: the configuration (but checkpoint_every),
    the plan's batch and block rows, and ``(samples, feature_dim, classes)``."""
    return json.dumps(
        {
            "config": config.fingerprint(),
            "plan": [plan.batch_size, plan.block_rows],
            "shape": list(shape),
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
            with np.load(self.path, allow_pickle=False) as data:
                saved = data["fingerprint"].tobytes().decode()
                meta = {k: data[k].item() for k in _STATE_FIELDS}
        except (OSError, ValueError, KeyError) as e:
            raise ResumeError(
                f"checkpoint {self.path} is unreadable ({e}); delete it to start over"
            ) from e
        if saved != self.fingerprint:
            raise ResumeError(
                f"checkpoint {self.path} was written with a different configuration or data "
                f"({saved}); now {self.fingerprint}. Use the same settings or delete the "
                "checkpoint."
            )
        read_npz_into(self.path, self.arrays)
        for k, v in meta.items():
            setattr(state, k, v)
