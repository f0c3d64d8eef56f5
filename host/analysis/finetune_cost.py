"""FLOPs and backprop memory of one training step of each fine-tuning mode (head, layer:BLOCK,
scl:BLOCK, full), under the conventions of ``entropi bench`` (:mod:`.flops`, :mod:`.memory`).

A mode's step is what runs after its frozen prefix
(:class:`~entropi.host.analysis.finetune.FinetuneModel`
``prefix``: every encoder child before the first trained one), exactly as ``entropi bench``
treats head-only training: the prefix runs in eval mode without autograd and its output can be
computed once and cached, so its forward FLOPs are reported separately (``frozen_forward_*``).
``head`` here is therefore ``entropi bench``'s ``head`` row and ``full`` its ``full`` row (a test
checks both against :func:`~.flops.count_step_flops` and :func:`~.memory.measure_step`).

- FLOPs: the op trace (:mod:`.trace`) of the step with the mode's ``requires_grad`` flags and
  train / eval modes, counted by :mod:`.flops`' rules: backward = grad wrt inputs where the input
  needs one (from the trained block on) + grad wrt trained weights. The SCL skip's zero padding
  moves data and costs 0 FLOPs; its pooling and add follow the usual rules.
- Memory: one real SGD-momentum step, measured by category as :func:`~.memory.measure_step`:
  ``weights`` = every parameter the step's forward uses (trained or frozen, from the first trained
  module on, plus the head), ``buffers`` = their batch-norm statistics, ``gradients`` and
  ``optimizer_state`` = one buffer each per trained parameter, ``activations`` = distinct storages
  saved for backward, ``batch`` = the step's input (the prefix output: images for ``full``,
  features for ``head``) plus int64 labels.
"""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

from entropi.host.analysis.finetune import FinetuneModel

from .flops import FlopReport, _op_flops, _scaled
from .memory import MemoryBreakdown, saved_tensor_bytes, step_breakdown
from .trace import trace_forward

__all__ = ["step_flops", "step_memory"]

_ZERO_COST = frozenset({"pad"})
"""ops that move data only (the skip's zero padding)."""


def _copy_for_step(model: FinetuneModel) -> FinetuneModel:
    m = copy.deepcopy(model).cpu()
    m.set_trainable()
    m.train()
    return m


def step_flops(
    model: FinetuneModel, batch: int, input_shape: tuple[int, int, int] = (3, 32, 32)
) -> FlopReport:
    """Analytic FLOPs of one step of ``model``'s mode (see the module docstring); sparse counts
    use the weights' non-zeros as they are. ``model`` itself is not changed."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    m = _copy_for_step(model)
    traced = max(batch, 2)
    x = torch.zeros(traced, *input_shape)
    with trace_forward(m) as tr:
        tr.section = "frozen"
        with torch.no_grad():
            h = m.prefix(x)
        tr.section = "step"
        m(h, start=m.first_trained)
        records = list(tr.records)
    ops, frozen = [], []
    for r in records:
        if r.op in _ZERO_COST:
            continue
        counted = _op_flops(r)
        if traced != batch:
            counted = [_scaled(o, batch, traced) for o in counted]
        (frozen if r.section == "frozen" else ops).extend(counted)
    params = [p for _, p in m.trainable_parameters()]
    return FlopReport(
        m.mode.name,
        batch,
        tuple(ops),
        tuple(frozen),
        sum(p.numel() for p in params),
        sum(int(torch.count_nonzero(p.detach())) for p in params),
    )


def _step_modules(m: FinetuneModel) -> list[torch.nn.Module]:
    return [*list(m.encoder.children())[m.first_trained :], m.head]


def step_memory(
    model: FinetuneModel, batch: int, input_shape: tuple[int, int, int] = (3, 32, 32)
) -> MemoryBreakdown:
    """Measured bytes of one real SGD-momentum step of ``model``'s mode, by category (see the
    module docstring). Runs on a copy of ``model`` on the CPU."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2:
        raise ValueError(f"batch must be an integer >= 2 (batch norm needs 2), got {batch!r}")
    m = _copy_for_step(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=g)
    y = torch.randint(0, m.head.out_features, (batch,), generator=g)
    with torch.no_grad():
        h = m.prefix(x).contiguous()
    modules = _step_modules(m)
    used = list({id(p): p for mod in modules for p in mod.parameters()}.values())
    buffers = [b for mod in modules for b in mod.buffers()]
    trained = [p for _, p in m.trainable_parameters()]
    opt = torch.optim.SGD(trained, lr=1e-3, momentum=0.9)

    def forward() -> torch.Tensor:
        return F.cross_entropy(m(h, start=m.first_trained), y)

    act, _, loss = saved_tensor_bytes(forward, exclude=[*used, *buffers, h, y])
    loss.backward()
    opt.step()
    return step_breakdown(used, buffers, trained, opt, act, (h, y))
