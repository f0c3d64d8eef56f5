"""FLOPs of one training step (forward + backward), head-only or full fine-tuning, dense or sparse.

Conventions (also in :data:`CONVENTIONS`, which goes into every benchmark file):

- FLOPs = 2 x MACs for conv and linear layers; one FLOP per add, multiply or comparison elsewhere.
- Counted per training step of a batch of ``B`` images (not per image).
- ``conv`` / ``linear``: forward = 2 * N * C_out * H_out * W_out * (C_in / groups) * k_h * k_w
  (linear: 2 * N * in * out). Backward = grad wrt the input (same count, only when the input
  needs a gradient: never for the first layer, never in head-only training) + grad wrt the weight
  (same count, only when the weight is trained). Bias adds and bias-gradient sums are elementwise
  work (below). This is exactly what ``torch.utils.flop_counter.FlopCounterMode`` counts, and the
  test suite checks it against that counter.
- Elementwise work (not counted by FlopCounterMode, reported separately as ``elementwise``), per
  element of the op's output unless stated: batch norm in training forward 8 (mean 1, variance 3,
  normalize 2, affine 2), in eval 2 (folded scale and shift); batch-norm backward 7 for the input
  grad and 3 for the gamma/beta grads; ReLU 1 forward, 1 backward; hardswish and hardsigmoid 4
  forward, 4 backward; residual add 1 forward, 0 backward; broadcast multiply (squeeze-excite)
  1 forward, 1 + 2 backward (grad of the big operand, then the reduced grad of the small one);
  average pooling 1 per input element forward and backward; max pooling k_h * k_w comparisons per
  output element forward, 1 per output element backward; bias 1 per output element forward and 1
  backward (the sum).
- Not counted: the loss and its gradient (about 5 * B * classes), the optimizer update (reported
  separately: SGD with momentum = 4 FLOPs per trained weight, see :func:`optimizer_flops`), data
  loading and augmentation.
- Head-only training: the encoder is frozen and runs in eval mode without autograd. Its forward is
  reported separately (``frozen_forward``) because features can be computed once and cached; the
  step is the head's forward plus the head's weight and bias gradients (no input gradient).
- Effective-sparse: a conv/linear weight with a fraction ``d`` of non-zeros costs ``d`` times its
  dense forward and input-gradient FLOPs (each zero weight removes its MACs). With fixed masks only
  the gradients of the non-zero weights are needed, so the weight gradient also scales by ``d``.
  Elementwise work does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from .trace import OpRecord, trace_forward

__all__ = [
    "CONVENTIONS",
    "FlopReport",
    "OpFlops",
    "count_step_flops",
    "flop_counter_step_flops",
    "optimizer_flops",
]

Mode = Literal["head", "full"]

CONVENTIONS = (
    "FLOPs = 2 x MACs for conv/linear; per training step of a batch of B images; forward + "
    "backward, backward = grad wrt inputs (not for the first layer, not in head-only training) + "
    "grad wrt trained weights; conv/linear counts match torch FlopCounterMode; elementwise work "
    "(batch norm, activations, pooling, adds, biases) reported separately under nominal "
    "per-element costs; loss and optimizer update excluded (SGD momentum update = 4 FLOPs per "
    "trained weight, reported separately); head-only: the frozen encoder forward is reported "
    "separately (cacheable); effective-sparse: conv/linear forward, input-grad and weight-grad "
    "FLOPs scale with the layer's non-zero weight fraction (only non-zero weights get gradients "
    "when masks are fixed)."
)

# (forward, backward-input, backward-params) FLOPs per output element of elementwise ops.
_ELEMENTWISE = {
    "relu": (1, 1, 0),
    "hardswish": (4, 4, 0),
    "hardsigmoid": (4, 4, 0),
    "add": (1, 0, 0),
}


@dataclass(frozen=True)
class OpFlops:
    """FLOPs of one recorded operation (dense), plus the weight density for sparse counts."""

    op: str
    section: str
    name: str
    """the parameter name of the op's weight, or the op name for weightless ops"""
    matmul: bool
    """conv/linear (2 x MACs, what FlopCounterMode counts) vs elementwise"""
    forward: int
    grad_input: int
    grad_weight: int
    density: float = 1.0
    """non-zero fraction of the weight (conv/linear), 1.0 otherwise"""

    @property
    def backward(self) -> int:
        return self.grad_input + self.grad_weight

    def sparse(self) -> OpFlops:
        """Effective-sparse counts: conv/linear terms scaled by the weight density."""
        if not self.matmul:
            return self
        return OpFlops(
            self.op,
            self.section,
            self.name,
            True,
            round(self.forward * self.density),
            round(self.grad_input * self.density),
            round(self.grad_weight * self.density),
            self.density,
        )


@dataclass(frozen=True)
class FlopReport:
    """Per-op FLOPs of one training step; totals by part. All counts are for the whole batch."""

    mode: str
    batch: int
    ops: tuple[OpFlops, ...]
    frozen: tuple[OpFlops, ...]
    """ops of the frozen encoder forward (head-only mode; empty in full mode)"""
    trained_params: int
    trained_nonzero: int

    def _sum(self, ops: tuple[OpFlops, ...], attr: str, sparse: bool, matmul: bool | None) -> int:
        total = 0
        for o in ops:
            if matmul is not None and o.matmul != matmul:
                continue
            total += getattr(o.sparse() if sparse else o, attr)
        return total

    def forward(self, *, sparse: bool = False, matmul: bool | None = None) -> int:
        return self._sum(self.ops, "forward", sparse, matmul)

    def backward(self, *, sparse: bool = False, matmul: bool | None = None) -> int:
        return self._sum(self.ops, "backward", sparse, matmul)

    def step(self, *, sparse: bool = False, matmul: bool | None = None) -> int:
        """Forward + backward of one step; ``matmul=True``: conv/linear only (FlopCounterMode's
        scope), ``False``: elementwise only, ``None``: both."""
        return self.forward(sparse=sparse, matmul=matmul) + self.backward(
            sparse=sparse, matmul=matmul
        )

    def frozen_forward(self, *, sparse: bool = False, matmul: bool | None = None) -> int:
        return self._sum(self.frozen, "forward", sparse, matmul)

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "batch": self.batch,
            "step_dense": self.step(matmul=True),
            "step_sparse": self.step(sparse=True, matmul=True),
            "forward_dense": self.forward(matmul=True),
            "backward_dense": self.backward(matmul=True),
            "backward_sparse": self.backward(sparse=True, matmul=True),
            "elementwise_step": self.step(matmul=False),
            "frozen_forward_dense": self.frozen_forward(matmul=True),
            "frozen_forward_sparse": self.frozen_forward(sparse=True, matmul=True),
            "optimizer_sgd_momentum_dense": optimizer_flops(self.trained_params),
            "optimizer_sgd_momentum_sparse": optimizer_flops(self.trained_nonzero),
        }


def optimizer_flops(trained_weights: int, per_weight: int = 4) -> int:
    """SGD with momentum: ``buf = m * buf + g`` (2) and ``w -= lr * buf`` (2) per trained weight."""
    return per_weight * trained_weights


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _op_flops(r: OpRecord) -> list[OpFlops]:
    """Dense FLOPs of one record under the module's conventions (two entries when a bias adds)."""
    out = r.output
    assert out is not None
    x = r.inputs[0]
    if r.op in ("conv2d", "linear"):
        w = r.inputs[1]
        if r.op == "conv2d":
            n, c_out = out.shape[0], out.shape[1]
            macs = n * c_out * _numel(out.shape[2:]) * _numel(w.shape[1:])
        else:
            macs = _numel(out.shape[:-1]) * w.shape[0] * w.shape[1]
        fwd = 2 * macs
        density = (w.nnz / w.numel) if w.nnz is not None and w.numel else 1.0
        name = (w.param or r.op).removesuffix(".weight")
        ops = [
            OpFlops(
                r.op,
                r.section,
                name,
                True,
                fwd,
                fwd if r.grad_enabled and x.requires_grad else 0,
                fwd if r.grad_enabled and w.requires_grad else 0,
                density,
            )
        ]
        if len(r.inputs) > 2:  # bias
            b = r.inputs[2]
            ops.append(
                OpFlops(
                    "bias",
                    r.section,
                    name + ".bias",
                    False,
                    out.numel,
                    out.numel if r.grad_enabled and b.requires_grad else 0,
                    0,
                )
            )
        return ops
    elems = out.numel
    gi = r.grad_enabled and x.requires_grad
    if r.op == "batch_norm":
        training = r.options.get("training", False)
        affine = [t for t in r.inputs[1:] if t.param and not t.param.endswith(("_mean", "_var"))]
        gp = r.grad_enabled and any(t.requires_grad for t in affine)
        return [
            OpFlops(
                r.op,
                r.section,
                r.op,
                False,
                (8 if training else 2) * elems,
                7 * elems if gi else 0,
                3 * elems if gp else 0,
            )
        ]
    if r.op in _ELEMENTWISE:
        f, b, _ = _ELEMENTWISE[r.op]
        return [OpFlops(r.op, r.section, r.op, False, f * elems, b * elems if gi else 0, 0)]
    if r.op == "mul":
        big, small = sorted(r.inputs[:2], key=lambda t: t.numel, reverse=True)
        back = (elems if r.grad_enabled and big.requires_grad else 0) + (
            2 * elems if r.grad_enabled and small.requires_grad else 0
        )
        return [OpFlops(r.op, r.section, r.op, False, elems, back, 0)]
    if r.op == "adaptive_avg_pool2d":
        return [OpFlops(r.op, r.section, r.op, False, x.numel, x.numel if gi else 0, 0)]
    if r.op == "max_pool2d":
        kh, kw = r.options.get("kernel", (2, 2))
        return [OpFlops(r.op, r.section, r.op, False, kh * kw * elems, elems if gi else 0, 0)]
    raise NotImplementedError(
        f"no FLOP rule for torch op {r.op!r} (section {r.section!r}); known ops: conv2d, linear, "
        f"batch_norm, mul, adaptive_avg_pool2d, max_pool2d, {', '.join(_ELEMENTWISE)}; "
        "add a rule in entropi.host.analysis.flops._op_flops"
    )


def _check_mode(mode: str, batch: int) -> None:
    if mode not in ("head", "full"):
        raise ValueError(f"mode must be 'head' or 'full', got {mode!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the batch-norm running statistics, which a training-mode forward updates."""
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}


def _prepare(model: nn.Module, mode: Mode) -> dict[str, bool]:
    """Set requires_grad and train/eval for ``mode``; return the previous flags to restore."""
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.encoder.parameters():
        p.requires_grad_(mode == "full")
    for p in model.head.parameters():
        p.requires_grad_(True)
    model.encoder.train(mode == "full")
    model.head.train(True)
    return saved


def _restore(model: nn.Module, saved: dict[str, bool], was_training: bool) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(saved[n])
    model.train(was_training)


def count_step_flops(
    model: nn.Module, mode: Mode, batch: int, input_shape: tuple[int, int, int] = (3, 32, 32)
) -> FlopReport:
    """Analytic FLOPs of one training step of ``model`` (a ``Classifier`` of host.models).

    Runs one forward pass on zeros of shape ``(batch, *input_shape)`` under the op recorder (BN
    running statistics are restored afterwards) and applies the rules in the module docstring.
    Sparse counts use the non-zeros of the weights as they are, so apply masks first. Every count
    is proportional to the batch, so batch 1 is traced as batch 2 and halved (batch-norm cannot
    run in training mode on a single 1x1 feature map).
    """
    _check_mode(mode, batch)
    traced = max(batch, 2)
    x = torch.zeros(traced, *input_shape)
    was_training = model.training
    bn_state = _bn_state(model)
    saved = _prepare(model, mode)
    try:
        with trace_forward(model) as tr:
            if mode == "head":
                tr.section = "encoder"
                with torch.no_grad():
                    feats = model.encoder(x)
                tr.section = "head"
                model.head(feats)
            else:
                tr.section = "model"
                model(x)
        records = tr.records
    finally:
        _restore(model, saved, was_training)
        model.load_state_dict(bn_state, strict=False)
    ops: list[OpFlops] = []
    frozen: list[OpFlops] = []
    for r in records:
        counted = _op_flops(r)
        if traced != batch:
            counted = [_scaled(o, batch, traced) for o in counted]
        (frozen if r.section == "encoder" else ops).extend(counted)
    trained = model.head if mode == "head" else model
    trained_params = sum(p.numel() for p in trained.parameters())
    trained_nonzero = sum(int(torch.count_nonzero(p.detach())) for p in trained.parameters())
    return FlopReport(mode, batch, tuple(ops), tuple(frozen), trained_params, trained_nonzero)


def _scaled(o: OpFlops, batch: int, traced: int) -> OpFlops:
    """``o`` counted for ``traced`` samples, rescaled to ``batch`` (counts are per sample)."""
    return replace(
        o,
        forward=o.forward * batch // traced,
        grad_input=o.grad_input * batch // traced,
        grad_weight=o.grad_weight * batch // traced,
    )


def _conv_backward_flop_grouped(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: object,
    _stride: object,
    _padding: object,
    _dilation: object,
    transposed: bool,
    _output_padding: object,
    groups: int,
    output_mask: list[bool],
    out_shape: object = None,
    **kwargs: object,
) -> int:
    """torch's ``convolution_backward`` FLOP formula with the weight-gradient term divided by
    ``groups``, as in pytorch/pytorch PR 183405 (torch 2.13 counts a depthwise conv's weight
    gradient ``groups`` times over)."""

    def t(shape: list[int]) -> list[int]:
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, x_shape, not transposed)
    if output_mask[1]:
        if transposed:
            flops += conv_flop_count(t(grad_out_shape), t(x_shape), t(w_shape)) // groups
        else:
            flops += conv_flop_count(t(x_shape), t(grad_out_shape), t(w_shape)) // groups
    return flops


def flop_counter_step_flops(
    model: nn.Module,
    mode: Mode,
    batch: int,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    *,
    fix_grouped_weight_grad: bool = True,
) -> int:
    """Reference: ``FlopCounterMode`` total over the same step (forward + ``backward()``).

    Counts conv/linear only (torch's counter has no rules for elementwise ops), so it compares
    to ``count_step_flops(...).step(matmul=True)``. The backward seed is ``out.sum()``. With
    ``fix_grouped_weight_grad`` (default) the weight-gradient FLOPs of grouped (depthwise) convs
    are divided by ``groups``, the upstream fix (PR 183405) that torch 2.13 lacks; everything else
    is torch's own formulas.
    """

    _check_mode(mode, batch)
    mapping = (
        {torch.ops.aten.convolution_backward: _conv_backward_flop_grouped}
        if fix_grouped_weight_grad
        else {}
    )
    x = torch.randn(batch, *input_shape)
    was_training = model.training
    bn_state = _bn_state(model)
    saved = _prepare(model, mode)
    try:
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            if mode == "head":
                with torch.no_grad():
                    feats = model.encoder(x)
                model.head(feats).sum().backward()
            else:
                model(x).sum().backward()
        if mode == "head":  # only the trained part's FLOPs belong to the step
            with FlopCounterMode(display=False) as frozen:
                with torch.no_grad():
                    model.encoder(x)
            return counter.get_total_flops() - frozen.get_total_flops()
        return counter.get_total_flops()
    finally:
        model.zero_grad(set_to_none=True)
        _restore(model, saved, was_training)
        model.load_state_dict(bn_state, strict=False)
