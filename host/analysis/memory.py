"""Backprop memory footprint of one PyTorch training step, by category: measured and analytic.

Categories (bytes; all tensors float32 unless the tensor says otherwise):

- ``weights``: the parameters the step needs (full fine-tuning: all of them; head-only: the head).
- ``buffers``: batch-norm running statistics (full fine-tuning only).
- ``gradients``: one gradient per trained parameter.
- ``optimizer_state``: SGD with momentum keeps one buffer per trained parameter; Adam keeps two
  plus a float32 step counter per parameter tensor.
- ``activations``: the tensors autograd saves for the backward pass, each storage counted once
  (a ReLU output that the next conv also saves is one tensor), excluding storages that are
  parameters, buffers or the batch itself. Includes what the loss saves (log-softmax output).
- ``batch``: the input batch (images, or features for head-only) and the int64 labels.

Measured (:func:`measure_step`): run one real step (forward, cross-entropy, backward, optimizer
step) and sum the bytes of the real tensors: the storages packed by
``torch.autograd.graph.saved_tensors_hooks`` (deduplicated by storage pointer), ``p.grad`` and
``optimizer.state``; on CUDA also ``torch.cuda.max_memory_allocated`` over the step.

Analytic (:func:`analytic_step`): the same categories from shapes only, with a rule per op for what
autograd saves (see ``_saved_by``), over the op trace of :mod:`.trace`. Transient workspace
(temporaries inside kernels, the gradient of the activation being back-propagated) is in neither;
the CUDA peak shows how much it adds.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from entropi.device import TrainConfig, train_head

from .trace import OpRecord, TensorInfo, trace_forward

__all__ = [
    "conventions_lines",
    "head_device_memory",
    "MemoryBreakdown",
    "MemoryMeasurement",
    "analytic_step",
    "measure_step",
    "saved_tensor_bytes",
]

Mode = Literal["head", "full"]
Optimizer = Literal["sgd", "adam"]
_FLOAT = 4


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes by category for one training step (see the module docstring)."""

    weights: int
    buffers: int
    gradients: int
    optimizer_state: int
    activations: int
    batch: int

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.buffers
            + self.gradients
            + self.optimizer_state
            + self.activations
            + self.batch
        )

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class MemoryMeasurement:
    """A measured step: the breakdown, and the CUDA allocator peak when run on CUDA."""

    breakdown: MemoryBreakdown
    saved_tensors: int
    """number of tensors autograd saved (before deduplication)"""
    cuda_max_allocated: int | None
    """``torch.cuda.max_memory_allocated`` during the step minus before it; None on CPU"""


def _check(mode: str, batch: int, optimizer: str) -> None:
    if mode not in ("head", "full"):
        raise ValueError(f"mode must be 'head' or 'full', got {mode!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' (with momentum) or 'adam', got {optimizer!r}")


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def step_breakdown(
    used: list[torch.Tensor],
    buffers: list[torch.Tensor],
    trained: list[torch.Tensor],
    opt: torch.optim.Optimizer,
    activations: int,
    batch: tuple[torch.Tensor, ...],
) -> MemoryBreakdown:
    """The bytes of a step just taken, by category: the ``used`` weights and ``buffers``, the
    gradients of ``trained`` and ``opt``'s state (each storage counted once), the saved
    ``activations`` (:func:`saved_tensor_bytes`) and the ``batch`` tensors."""
    grads = {_storage_key(p.grad): p.grad.untyped_storage().nbytes() for p in trained}
    state = {
        _storage_key(t): t.untyped_storage().nbytes()
        for s in opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    }
    return MemoryBreakdown(
        weights=sum(p.numel() * p.element_size() for p in used),
        buffers=sum(b.numel() * b.element_size() for b in buffers),
        gradients=sum(grads.values()),
        optimizer_state=sum(state.values()),
        activations=activations,
        batch=sum(t.numel() * t.element_size() for t in batch),
    )


def saved_tensor_bytes(
    fn, exclude: list[torch.Tensor] | tuple[torch.Tensor, ...] = ()
) -> tuple[int, int, object]:
    """Run ``fn()`` under ``saved_tensors_hooks``; bytes of the distinct storages it saved.

    Each storage counts once, at its full ``nbytes`` (two views of one storage are one tensor).
    Storages of ``exclude`` (parameters, buffers, the batch) are left out. Returns
    ``(bytes, number of saved tensors, fn's return value)``.
    """
    excluded = {_storage_key(t) for t in exclude}
    storages: dict[tuple[str, int], int] = {}
    count = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        key = _storage_key(t)
        if key not in excluded:
            storages[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return sum(storages.values()), count, result


def _trained(model: nn.Module, mode: Mode) -> nn.Module:
    return model.head if mode == "head" else model


def _make_optimizer(params: list[nn.Parameter], optimizer: Optimizer) -> torch.optim.Optimizer:
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    return torch.optim.Adam(params, lr=1e-3)


def _inputs(
    model: nn.Module, mode: Mode, batch: int, input_shape: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    num_classes = model.head.out_features
    g = torch.Generator().manual_seed(0)
    shape = (batch, model.feature_dim) if mode == "head" else (batch, *input_shape)
    x = torch.randn(shape, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    return x, y


@contextlib.contextmanager
def _one_step(model: nn.Module, mode: Mode):
    """Make only the trained part of ``model`` require grad, in train mode; restore weights,
    BN statistics, grads, requires_grad flags and the train/eval mode afterwards.

    Yields ``(trained module, its parameters)``.
    """
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    trained = _trained(model, mode)
    params = list(trained.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    trained.train()
    try:
        yield trained, params
    finally:
        model.load_state_dict(state)
        for n, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(flags[n])
        model.train(was_training)


def measure_step(
    model: nn.Module,
    mode: Mode,
    batch: int,
    *,
    optimizer: Optimizer = "sgd",
    input_shape: tuple[int, int, int] = (3, 32, 32),
) -> MemoryMeasurement:
    """Run one real training step of ``model`` (a ``Classifier``) and measure its memory.

    ``mode="full"``: all parameters trained, the model in train mode, the batch is images.
    ``mode="head"``: only the head, on a batch of features (the encoder runs once, beforehand).
    The model's weights, gradients and BN statistics are restored afterwards.
    """
    _check(mode, batch, optimizer)
    device = next(model.parameters()).device
    with _one_step(model, mode) as (trained, params):
        x, y = _inputs(model, mode, batch, input_shape, device)
        buffers = list(trained.buffers())
        opt = _make_optimizer(params, optimizer)
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)

        def forward() -> torch.Tensor:
            return F.cross_entropy(trained(x), y)

        act, count, loss = saved_tensor_bytes(forward, exclude=[*params, *buffers, x, y])
        loss.backward()
        opt.step()
        peak = None
        if cuda:
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        breakdown = step_breakdown(params, buffers, params, opt, act, (x, y))
        return MemoryMeasurement(breakdown, count, peak)


# --- analytic ----------------------------------------------------------------------------------


def _new(shape: tuple[int, ...], itemsize: int, tag: str, index: int) -> TensorInfo:
    """A tensor an op creates and saves that the trace does not see (e.g. BN's batch stats)."""
    # negative ids never collide with real storage pointers
    key = -(hash((tag, index)) & 0x7FFFFFFFFFFF) - 1
    n = 1
    for s in shape:
        n *= s
    return TensorInfo(shape, itemsize, False, key, n * itemsize, None)


def _saved_by(r: OpRecord, index: int) -> list[TensorInfo]:
    """What autograd saves for backward for one recorded op (PyTorch ``derivatives.yaml``)."""
    if not r.needs_grad:
        return []
    out = r.output
    assert out is not None
    x = r.inputs[0]
    if r.op in ("conv2d", "linear"):
        w = r.inputs[1]
        return [t for t, needed in ((x, w.requires_grad), (w, x.requires_grad)) if needed]
    if r.op == "batch_norm":
        saved = list(r.inputs)  # input, running stats, weight, bias (the latter are excluded)
        if r.options.get("training"):
            c = x.shape[1]
            saved += [_new((c,), _FLOAT, "bn_mean", index), _new((c,), _FLOAT, "bn_invstd", index)]
        return saved
    if r.op == "relu":
        return [out]
    if r.op in ("hardswish", "hardsigmoid"):
        return [x]
    if r.op == "add":
        return []
    if r.op == "mul":
        a, b = r.inputs[:2]
        return [t for t, other in ((a, b), (b, a)) if other.requires_grad]
    if r.op == "adaptive_avg_pool2d":
        return [] if tuple(out.shape[2:]) == (1, 1) else [x]  # global pooling is a mean
    if r.op == "max_pool2d":
        return [x, _new(out.shape, 8, "maxpool_indices", index)]
    if r.op == "cross_entropy":
        n, c = x.shape
        return [_new((n, c), x.itemsize, "log_softmax", index), _new((), _FLOAT, "weight", index)]
    raise NotImplementedError(
        f"no saved-tensor rule for torch op {r.op!r}; "
        "add one in entropi.host.analysis.memory._saved_by"
    )


def _optimizer_bytes(params: list[nn.Parameter], optimizer: Optimizer) -> int:
    n = sum(p.numel() for p in params)
    if optimizer == "sgd":
        return n * _FLOAT
    return 2 * n * _FLOAT + _FLOAT * len(params)


def analytic_step(
    model: nn.Module,
    mode: Mode,
    batch: int,
    *,
    optimizer: Optimizer = "sgd",
    input_shape: tuple[int, int, int] = (3, 32, 32),
) -> MemoryBreakdown:
    """The analytic count for the step :func:`measure_step` runs, from shapes and op rules.

    The op trace runs the model once (on the meta-free CPU path, BN statistics restored), then
    ``_saved_by`` says which tensors each op keeps; distinct storages are summed, excluding
    parameters, buffers and the batch.
    """
    _check(mode, batch, optimizer)
    device = next(model.parameters()).device
    with _one_step(model, mode) as (trained, params):
        x, y = _inputs(model, mode, batch, input_shape, device)
        with trace_forward(model) as tr:
            tr.section = mode
            F.cross_entropy(trained(x), y)
        excluded = {
            t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), x, y]
        }
        saved: dict[int, int] = {}
        for i, r in enumerate(tr.records):
            for t in _saved_by(r, i):
                if t.storage not in excluded and t.param is None:
                    saved[t.storage] = t.storage_nbytes
    buffers = list(trained.buffers())
    return MemoryBreakdown(
        weights=sum(p.numel() * p.element_size() for p in params),
        buffers=sum(b.numel() * b.element_size() for b in buffers),
        gradients=sum(p.numel() * p.element_size() for p in params),
        optimizer_state=_optimizer_bytes(params, optimizer),
        activations=sum(saved.values()),
        batch=x.numel() * x.element_size() + y.numel() * y.element_size(),
    )


_HEAD_CATEGORIES = {
    "weights": "weights",
    "bias": "weights",
    "momentum_weights": "optimizer_state",
    "momentum_bias": "optimizer_state",
    "grad_block": "gradients",
    "grad_bias": "gradients",
    "features_batch": "batch",
    "labels_batch": "batch",
    "logits_batch": "activations",
    "row_stat": "activations",
    "label_logit": "activations",
}


def head_device_memory(feature_dim: int, classes: int, batch: int) -> dict:
    """Run the numpy device trainer for a few steps; its measured peak and buffer plan."""
    rng = np.random.default_rng(0)
    n = batch * 8
    features = rng.standard_normal((n, feature_dim), dtype=np.float32)
    labels = (np.arange(n) % classes).astype(np.intp)
    cfg = TrainConfig(
        epochs=1,
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=batch,
        val_fraction=0.0,
        patience=0,
        budget="unlimited",  # measure the unblocked step, whatever its size
    )
    result = train_head(features, labels, cfg, num_classes=classes, measure_memory=True)
    breakdown = dict.fromkeys(
        ["weights", "buffers", "gradients", "optimizer_state", "activations", "batch", "other"], 0
    )
    for name, nbytes in result.plan.buffers.items():
        breakdown[_HEAD_CATEGORIES.get(name, "other")] += nbytes
    breakdown["total"] = sum(breakdown.values())
    return {
        "measured": int(result.peak_bytes),
        "analytic": int(result.plan.analytic_bytes),
        "breakdown": breakdown,
        "buffers": dict(result.plan.buffers),
        "batch_size": result.plan.batch_size,
        "block_rows": result.plan.block_rows,
    }


def conventions_lines(result: dict) -> list[str]:
    """The Markdown footer of a result with FLOP and memory ``conventions``."""
    return [
        f"FLOP conventions: {result['conventions']['flops']}",
        "",
        f"Memory conventions: {result['conventions']['memory']}",
        "",
    ]
