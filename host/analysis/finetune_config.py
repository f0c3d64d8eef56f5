"""The settings of ``entropi finetune`` (:class:`FinetuneConfig`) and its error, torch-free: the
CLI generates its flags from the fields (:mod:`entropi.common.cliargs`) while building the parser,
which must not load torch; :mod:`.finetune` trains with them."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["FinetuneConfig", "FinetuneError"]


class FinetuneError(ConfigError):
    """A fine-tuning mode, block, mask set or saved fine-tuned model is unusable."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning (the same for every mode, so they compare)."""

    epochs: int = 3
    """training epochs of every mode."""
    batch_size: int = 128
    """training batch size (>= 2; the last partial batch is dropped); FLOPs and backprop memory
    per step are measured at it."""
    lr: float = 1.0
    """SGD learning rate of the (new) head, per-step cosine schedule to 0 (high: the head starts
    from scratch on unnormalized features; 0.05-1.0 measured on the quickstart, 1.0 best)."""
    encoder_lr: float = 0.02
    """SGD learning rate of the fine-tuned encoder parameters (layer, scl, full)."""
    momentum: float = 0.9
    """Nesterov momentum (0: plain SGD)."""
    weight_decay: float = 5e-4
    """SGD's L2 penalty, on weights (ndim > 1) only."""
    augment: bool = False
    """random crop (4 px, reflect) + flip; off: the frozen prefix is computed once and cached."""
    cache_bytes: int = 2**30
    """largest frozen-prefix cache (bytes, float32) before the prefix runs every step instead."""
    eval_batch: int = 512
    """batch size of the evaluation passes (no gradients)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch", "cache_bytes"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < (2 if name == "batch_size" else 1)
            ):
                raise FinetuneError(
                    f"finetune {name} must be an integer >= 1 (batch >= 2), got {v!r}"
                )
        for name, hi in (("lr", 10.0), ("encoder_lr", 10.0), ("weight_decay", 1.0)):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0.0 <= v <= hi:
                raise FinetuneError(f"finetune {name} must be in [0, {hi}], got {v!r}")
        if not isinstance(self.momentum, int | float) or not 0.0 <= self.momentum < 1.0:
            raise FinetuneError(f"finetune momentum must be in [0, 1), got {self.momentum!r}")
