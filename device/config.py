"""What head training takes and gives: :class:`TrainConfig` (the one definition of its settings)
and :class:`TrainResult`.

:class:`TrainConfig` is the single source of every head-training parameter and its default: the
device CLI generates its ``train`` flags and their help from the fields and their docstrings
(:mod:`entropi.common.cliargs`), and the host builds the same dataclass from its
``[device_train]`` TOML section. Every field is therefore a str, int, float or bool (no ``None``).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .budget import MemoryPlan, parse_size
from .errors import TrainConfigError
from .schedule import SCHEDULES

__all__ = ["MAX_LR", "UNLIMITED", "TrainConfig", "TrainResult"]

UNLIMITED = "unlimited"
"""The :attr:`TrainConfig.budget` that sets no memory limit (requested batch, unblocked)."""

MAX_LR = 100.0
"""Largest :attr:`TrainConfig.lr` accepted: beyond it SGD on a softmax head only diverges."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of head training; validated on construction."""

    epochs: int = 30
    """Maximum number of passes over the training rows."""
    lr: float = 0.05
    """Peak learning rate (per step, for the batch-mean loss), in (0, 100]."""
    momentum: float = 0.9
    """SGD momentum in [0, 1); > 0 adds a weight-sized buffer to the budget."""
    weight_decay: float = 1e-4
    """L2 penalty coefficient (torch SGD weight_decay), in [0, 1]."""
    schedule: str = "cosine"
    """Learning-rate schedule: cosine (to 0 over all steps), step, or constant."""
    step_epochs: int = 30
    """For the step schedule: epochs between decays."""
    gamma: float = 0.1
    """For the step schedule: the decay factor, in (0, 1]."""
    batch_size: int = 32
    """Maximum samples per step; the planner may choose fewer to fit the budget."""
    val_fraction: float = 0.1
    """Fraction of rows held out (the tail of the store) for early stopping, in [0, 0.5]."""
    patience: int = 5
    """Stop after this many epochs without a lower held-out loss; 0 disables early stopping."""
    seed: int = 0
    """Seeds the data order of every epoch (and the feature store's shuffle in train_on_bundle)."""
    budget: str | int = "256KB"
    """RAM budget of the training loop: a size in B, KB, MB or GB (KB = 1024 B), e.g. 256KB, a
    number of bytes, or "unlimited" (no limit: the requested batch, unblocked updates)."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every this many steps; 0 writes none."""
    dtype: str = "float32"
    """float32, or float64 (for reference comparisons)."""

    def __post_init__(self) -> None:
        for f in fields(TrainConfig):
            _check_type(self, f.name, getattr(self, f.name))
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("lr", 0 < self.lr <= MAX_LR and math.isfinite(self.lr), f"in (0, {MAX_LR:g}]"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", 0 <= self.weight_decay <= 1, "in [0, 1]"),
            ("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("step_epochs", self.step_epochs >= 1, ">= 1"),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("val_fraction", 0 <= self.val_fraction <= 0.5, "in [0, 0.5]"),
            ("patience", self.patience >= 0, ">= 0"),
            ("seed", self.seed >= 0, ">= 0"),
            ("checkpoint_every", self.checkpoint_every >= 0, ">= 0"),
            ("dtype", self.dtype in ("float32", "float64"), "float32 or float64"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise TrainConfigError(f"{name} must be {valid}, got {getattr(self, name)!r}")
        try:
            self.budget_bytes  # noqa: B018 (parses the budget)
        except TrainConfigError as e:
            raise TrainConfigError(
                f"budget must be a size such as 256KB, a number of bytes or {UNLIMITED!r}: {e}"
            ) from None

    @property
    def budget_bytes(self) -> int | None:
        """:attr:`budget` in bytes; None when it is ``"unlimited"``."""
        if isinstance(self.budget, str) and self.budget.strip().lower() == UNLIMITED:
            return None
        return parse_size(self.budget)

    def to_dict(self) -> dict:
        """Every field, as train.json records it."""
        return asdict(self)

    def fingerprint(self) -> str:
        """What must match for a checkpoint to be resumed (everything but checkpoint_every; the
        budget as bytes, so ``"256KB"`` and ``262144`` are the same setting)."""
        d = {f.name: getattr(self, f.name) for f in fields(TrainConfig)}
        d.pop("checkpoint_every")
        d["budget"] = self.budget_bytes
        return json.dumps(d, sort_keys=True)


_INT, _FLOAT, _STR = "an integer", "a number", "a string"
_KINDS = {
    "epochs": _INT,
    "lr": _FLOAT,
    "momentum": _FLOAT,
    "weight_decay": _FLOAT,
    "schedule": _STR,
    "step_epochs": _INT,
    "gamma": _FLOAT,
    "batch_size": _INT,
    "val_fraction": _FLOAT,
    "patience": _INT,
    "seed": _INT,
    "budget": "a size string or an integer",
    "checkpoint_every": _INT,
    "dtype": _STR,
}
"""Field -> the kind of value it takes (the message of a wrong one)."""


def _check_type(cfg: TrainConfig, name: str, value) -> None:
    """Reject a value of the wrong kind; store integers (numpy's too) of a float field as float
    and numpy integers as int, so that every field is a plain TOML/JSON value."""
    kind = _KINDS[name]
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == _FLOAT and isinstance(value, numbers.Real) and not isinstance(value, bool):
        object.__setattr__(cfg, name, float(value))
    elif kind in (_INT, _KINDS["budget"]) and integer:
        object.__setattr__(cfg, name, int(value))
    elif not (kind in (_STR, _KINDS["budget"]) and isinstance(value, str)):
        raise TrainConfigError(f"{name} must be {kind}, got {value!r}")


@dataclass
class TrainResult:
    """The trained head and what training measured."""

    weights: np.ndarray
    """(feature_dim, num_classes)."""
    bias: np.ndarray
    """(num_classes,)."""
    plan: MemoryPlan
    """The batch size, update blocks and buffers the loop ran with."""
    steps: int
    """SGD steps run in this call (excluding steps restored from a checkpoint)."""
    samples: int
    """Training samples processed in this call (steps x batch size)."""
    seconds: float
    """Wall time of the training loop in this call (buffers, steps, eval, checkpoints)."""
    peak_bytes: int | None
    """tracemalloc peak of the loop above what was allocated before it (None if not measured)."""
    n_train: int
    """Rows trained on (the head of the feature store)."""
    n_val: int
    """Held-out rows (the tail of the feature store)."""
    epochs_run: int
    """Epochs started, including those restored from a checkpoint."""
    stopped_early: bool
    """Early stopping ended the run before ``epochs``."""
    best_epoch: int | None
    """Epoch (0-based) of the lowest held-out loss; None without a held-out split."""
    val_loss: float | None
    """Held-out loss of the returned head (None without a held-out split)."""
    val_accuracy: float | None
    """Held-out accuracy of the returned head (None without a held-out split)."""
    history: list[dict] = field(default_factory=list)
    """Per epoch: epoch, val_loss, val_accuracy (when a held-out split exists)."""

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0
