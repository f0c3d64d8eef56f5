"""Supervised training, evaluation and feature extraction on tensors held on the training device.

Images stay uint8 NHWC on the device; :func:`entropi.host.data.iterate_batches` normalizes and
augments whole batches there. On CUDA, training uses bfloat16 autocast and channels_last. Under
``torchrun``, :func:`train` runs in DistributedDataParallel (:mod:`entropi.host.run.distributed`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from entropi.common.errors import EntropiError
from entropi.export.threads import cpu_threads

from ..data import iterate_batches
from ..run import distributed
from ..run.progress import progress
from ..run.torch_device import DeviceUnavailableError, pick_device
from .prune import Masks, apply_masks
from .regularizers import regularized_loss, regularizer_views

if TYPE_CHECKING:
    from ..run.config import PretrainConfig

__all__ = [
    "DeviceUnavailableError",
    "TrainingDivergedError",
    "TrainForward",
    "TrainStats",
    "evaluate",
    "extract_features",
    "forward_batch_size",
    "pick_device",
    "train",
]


class TrainingDivergedError(EntropiError, FloatingPointError):
    """The training loss became NaN or infinite (a learning rate too high, or weights that
    started non-finite)."""


@dataclass
class TrainStats:
    epochs: int
    steps: int
    final_loss: float
    seconds: float
    samples_per_second: float


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class TrainForward(nn.Module):
    """What :func:`train` forwards (and DDP wraps): a classifier's logits and its encoder's
    features (the penultimate layer), so a loss can use both."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.encoder(x)
        return self.model.head(features), features


def _optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.SGD:
    """SGD (Nesterov when there is momentum), weight decay on matrices and kernels only."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
    )


def _slice_loss(net, xb, yb, share: float, cfg: PretrainConfig, device) -> torch.Tensor:
    """This process's loss on its slice of the global batch: label-smoothed cross-entropy
    weighted by the slice's share, plus the ``[pretrain]`` regularizer's term."""
    with _autocast(device):
        logits, features = net(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
        loss = loss * share  # this slice's part of the global batch's mean
        # - gamma * entropy of the features (float32, gathered over ranks)
        loss, _ = regularized_loss(
            loss, features, cfg.regularizer, cfg.gamma, temperature=cfg.nce_temperature
        )
    return loss


def _diverged(desc: str, loss_val: float, step: int, total: int, lr: float):
    """The error for a loss that became inf or nan, naming the settings to look at."""
    return TrainingDivergedError(
        f"{desc}: the loss became {loss_val} at step {step} of {total} "
        f"(learning rate {lr:g}); lower the learning rate ([pretrain] lr "
        "for rung 0, [prune] lr for a retraining) or check that the "
        "starting weights ([pretrain] init, the previous rung) are finite"
    )


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: PretrainConfig,
    *,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    masks: Masks | None = None,
    seed: int = 0,
    desc: str = "train",
) -> TrainStats:
    """SGD + momentum (Nesterov) with a per-step cosine schedule from ``cfg.lr`` to 0.

    ``cfg`` is the ``[pretrain]`` section (epochs, batch size, optimizer); a rung's retraining
    passes the same section with the ``[prune]`` epochs and learning rate put in. ``x`` is uint8
    NHWC and ``y`` int64, both on the model's device. With ``masks``, pruned encoder weights are
    re-zeroed after every step, so they stay exactly 0.

    Under ``torchrun`` with W > 1 processes (:mod:`entropi.host.run.distributed`) every process
    draws the same seeded global batch of ``cfg.batch_size`` images, trains on its slice of it
    through DistributedDataParallel, scaled so that the step is the global batch's (same
    learning rate), and all end with rank 0's weights and batch-norm buffers.
    """
    epochs, batch_size, lr = cfg.epochs, cfg.batch_size, cfg.lr
    device = x.device
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = _optimizer(model, cfg)
    # augmented views of each image in a batch (iterate_batches, distributed.shard): 2 for nce
    views = regularizer_views(cfg.regularizer)
    # drop the last partial batch: a batch of one breaks batch norm in training mode
    drop_last = len(x) > batch_size
    steps_per_epoch = len(x) // batch_size if drop_last else 1
    total = max(1, epochs * steps_per_epoch)
    gen = torch.Generator(device=device).manual_seed(seed)
    model.train()
    step, loss_val, t0 = 0, float("nan"), time.perf_counter()
    bar = progress(total=total, desc=desc, unit="step")
    try:
        with (
            cpu_threads(cfg.threads, device),
            distributed.ddp(TrainForward(model), device=device, sync_bn=cfg.sync_bn) as net,
        ):
            for _ in range(epochs):
                for xb, yb in iterate_batches(
                    x,
                    y,
                    batch_size,
                    shuffle=True,
                    augment=True,
                    generator=gen,
                    mean=mean,
                    std=std,
                    channels_last=channels_last,
                    drop_last=drop_last,
                    views=views,
                ):
                    # the same global batch on every process; this one trains on its slice
                    xb, yb, share = distributed.shard(xb, yb, views=views)
                    for group in opt.param_groups:
                        group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
                    loss = _slice_loss(net, xb, yb, share, cfg, device)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if masks is not None:
                        apply_masks(model.encoder, masks)
                    step += 1
                    if step % 20 == 0 or step == total:
                        loss_val = distributed.mean(loss.detach())  # the same on every process
                        if not math.isfinite(loss_val):
                            raise _diverged(desc, loss_val, step, total, lr)
                        bar.set_postfix(loss=f"{loss_val:.3f}")
                    bar.update(1)
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
        model.to(memory_format=torch.contiguous_format)
    seconds = time.perf_counter() - t0
    return TrainStats(epochs, step, loss_val, seconds, epochs * len(x) / max(seconds, 1e-9))


@torch.no_grad()
def _forward_batches(module, x, batch_size, mean, std, amp=True):
    module.eval()
    device = x.device
    labels = torch.zeros(len(x), dtype=torch.int64, device=device)
    for xb, _ in iterate_batches(
        x,
        labels,
        batch_size,
        shuffle=False,
        augment=False,
        mean=mean,
        std=std,
        channels_last=device.type == "cuda",
    ):
        if amp:
            with _autocast(device):
                yield module(xb).float()
        else:
            yield module(xb).float()


def forward_batch_size(device: torch.device) -> int:
    """Images per forward batch of :func:`evaluate` and :func:`extract_features` on ``device``.

    On the CPU 128: a 512-image batch of the quickstart's smallnet has 134 MB per activation,
    far beyond the caches, and ran 1.9x slower than 128 (10,000 CIFAR images: 4.1 s against
    2.2 s on the 2-core CPU machine). The outputs are the same bit for bit at any batch size
    (tests/test_train_threads.py), so this changes the time only. On CUDA 512.
    """
    return 512 if device.type == "cuda" else 128


def evaluate(model, x, y, *, mean, std, batch_size: int | None = None) -> float:
    """Top-1 accuracy of ``model`` on uint8 NHWC ``x`` with labels ``y`` (same device); batches
    of ``batch_size`` images (None: :func:`forward_batch_size`)."""
    batch_size = batch_size or forward_batch_size(x.device)
    correct = 0
    offset = 0
    for logits in _forward_batches(model, x, batch_size, mean, std):
        correct += int((logits.argmax(1) == y[offset : offset + len(logits)]).sum())
        offset += len(logits)
    return correct / len(x)


def extract_features(encoder, x, *, mean, std, batch_size: int | None = None) -> np.ndarray:
    """Encoder outputs (float32 numpy, N x feature_dim) for uint8 NHWC ``x``, in batches of
    ``batch_size`` images (None: :func:`forward_batch_size`).

    Computed in float32 even on CUDA: the entropy quantizes these values, and bfloat16 rounding
    would move samples across quantization bins.
    """
    batch_size = batch_size or forward_batch_size(x.device)
    batches = _forward_batches(encoder, x, batch_size, mean, std, amp=False)
    return torch.cat([f.cpu() for f in batches]).numpy()
