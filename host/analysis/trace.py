"""Record the tensor operations of one forward pass, with shapes, for analytic cost models.

:func:`trace_forward` runs a callable under a ``TorchFunctionMode`` and records every outermost
torch function call it makes (``conv2d``, ``linear``, ``batch_norm``, ``relu``, ``add``, ...) as an
:class:`OpRecord`: the operation's name, the shapes, dtypes and ``requires_grad`` flags of its
tensor arguments and result, which storage each of them lives in, which parameter a tensor is (by
name), and the non-zero count of conv/linear weights. Nested calls (what ``F.relu`` calls inside)
are not seen, so each operation is recorded once.

The FLOP counter (:mod:`.flops`) and the analytic memory model (:mod:`.memory`) are both rule
tables over these records; neither needs anything but shapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["OpRecord", "TensorInfo", "trace_forward"]

# Calls that move no data and compute nothing; recorded under their name but cost nothing.
_SHAPE_OPS = frozenset(
    {"dim", "size", "flatten", "view", "reshape", "contiguous", "__get__", "numel", "__len__"}
)


@dataclass(frozen=True)
class TensorInfo:
    """Metadata of one tensor argument or result of a recorded operation."""

    shape: tuple[int, ...]
    itemsize: int
    """bytes per element"""
    requires_grad: bool
    storage: int
    """data pointer of the tensor's untyped storage (identity while the trace is alive)"""
    storage_nbytes: int
    param: str | None
    """the parameter or buffer this tensor is (its ``named_parameters`` name), else None"""
    nnz: int | None = None
    """non-zero count, recorded for conv/linear weights only"""

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True)
class OpRecord:
    """One outermost torch function call of the traced forward pass."""

    op: str
    """function name, e.g. ``conv2d``, ``linear``, ``batch_norm``, ``relu``, ``add``, ``mul``"""
    section: str
    """the caller's label for the part of the model being run (e.g. ``encoder``, ``head``)"""
    inputs: tuple[TensorInfo, ...]
    """tensor arguments in call order (positional first, then keyword)"""
    output: TensorInfo | None
    grad_enabled: bool
    options: dict[str, Any] = field(default_factory=dict)
    """non-tensor arguments that matter to cost models: ``groups``, ``training``, ``inplace``"""

    @property
    def needs_grad(self) -> bool:
        """Whether autograd records a backward node for this call."""
        return self.grad_enabled and any(t.requires_grad for t in self.inputs)


def _info(t: torch.Tensor, names: dict[int, str], with_nnz: bool = False) -> TensorInfo:
    storage = t.untyped_storage()
    return TensorInfo(
        shape=tuple(t.shape),
        itemsize=t.element_size(),
        requires_grad=t.requires_grad,
        storage=storage.data_ptr(),
        storage_nbytes=storage.nbytes(),
        param=names.get(id(t)),
        nnz=int(torch.count_nonzero(t.detach())) if with_nnz else None,
    )


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out = [a for a in args if isinstance(a, torch.Tensor)]
    out += [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    return out


class _Recorder(TorchFunctionMode):
    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names
        self.records: list[OpRecord] = []
        self.section = "model"
        self._keepalive: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name in _SHAPE_OPS or not isinstance(result, torch.Tensor):
            return result
        tensors = _tensors(args, kwargs)
        if not tensors or not all(t.is_floating_point() for t in tensors[:1]):
            return result  # e.g. BN's num_batches_tracked += 1 on an int64 buffer
        with torch._C.DisableTorchFunction():
            weight_nnz = name in ("conv2d", "linear")
            infos = tuple(
                _info(t, self.names, with_nnz=weight_nnz and i == 1) for i, t in enumerate(tensors)
            )
            out = _info(result, self.names)
        options: dict[str, Any] = {}
        if name == "conv2d":
            options["groups"] = int(args[6] if len(args) > 6 else kwargs.get("groups", 1))
        if name == "batch_norm":
            options["training"] = bool(args[5] if len(args) > 5 else kwargs.get("training"))
        if name in ("relu", "hardswish", "hardsigmoid"):
            options["inplace"] = bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
        if name in ("max_pool2d",):
            k = args[1] if len(args) > 1 else kwargs["kernel_size"]
            options["kernel"] = (k, k) if isinstance(k, int) else tuple(k)
        self.records.append(
            OpRecord(name, self.section, infos, out, torch.is_grad_enabled(), options)
        )
        self._keepalive += [*tensors, result]  # storages stay distinct while the trace lives
        return result


class Trace:
    """Handle returned by :func:`trace_forward`; set ``section`` to label what runs next."""

    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    @property
    def section(self) -> str:
        return self._recorder.section

    @section.setter
    def section(self, value: str) -> None:
        self._recorder.section = value

    @property
    def records(self) -> list[OpRecord]:
        return self._recorder.records


@contextmanager
def trace_forward(model: nn.Module) -> Iterator[Trace]:
    """Record the torch calls made inside the ``with`` block; ``model`` names the parameters.

    >>> with trace_forward(model) as tr:  # doctest: +SKIP
    ...     tr.section = "encoder"; f = model.encoder(x)
    ...     tr.section = "head"; model.head(f)
    >>> tr.records  # doctest: +SKIP
    """
    names = {id(p): n for n, p in model.named_parameters()}
    names.update({id(b): n for n, b in model.named_buffers()})
    recorder = _Recorder(names)
    with recorder:
        yield Trace(recorder)
    recorder._keepalive.clear()
