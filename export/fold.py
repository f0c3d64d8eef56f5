"""Trace an encoder into a torch.fx graph and fold every batch norm into the layer before it.

The exported graphs carry no BatchNormalization op: each ``BatchNorm2d`` that follows a
``Conv2d`` (and each ``BatchNorm1d`` that follows a ``Linear``) is folded into that layer's
weight and bias, in float64, on a copy of the encoder. Folding keeps exact zeros: a pruned weight
``w = 0`` becomes ``0 * gamma / sqrt(var + eps) = 0``, so the sparsity pattern survives.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from ._errors import UnsupportedModuleError

__all__ = ["fold_batchnorm", "module_path", "trace_encoder"]


def trace_encoder(encoder: nn.Module) -> fx.GraphModule:
    """Symbolically trace a deep copy of ``encoder`` (eval mode) into an fx ``GraphModule``."""
    model = copy.deepcopy(encoder).eval()
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, ... on data-dependent control flow
        raise UnsupportedModuleError(
            f"cannot trace encoder {type(encoder).__name__} with torch.fx ({type(e).__name__}: "
            f"{e}); the exporter needs a graph without data-dependent Python control flow"
        ) from e


def module_path(gm: fx.GraphModule, node: fx.Node) -> str:
    """A human-readable name of the module that owns ``node`` (for error messages)."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return f"'{node.target}' ({type(mod).__name__})"
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, (_, cls) = list(stack.items())[-1]
        name = getattr(cls, "__name__", str(cls))
        return f"'{path}' ({name}, op {getattr(node.target, '__name__', node.target)})"
    return f"top level (op {getattr(node.target, '__name__', node.target)})"


_PAIRS = ((nn.BatchNorm2d, nn.Conv2d), (nn.BatchNorm1d, nn.Linear))


def _fold_into(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
    """A new layer computing ``bn(layer(x))`` (eval mode), with a bias."""
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0]).double()
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(b)
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedModuleError(
            f"batch norm {bn} tracks no running statistics, so it cannot be folded"
        )
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    new_w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    new_b = (b - bn.running_mean.double()) * scale + beta
    if isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            bias=True,
            padding_mode=layer.padding_mode,
        )
    else:
        new = nn.Linear(layer.in_features, layer.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(new_w.float())
        new.bias.copy_(new_b.float())
    return new.eval()


def fold_batchnorm(encoder: nn.Module) -> fx.GraphModule:
    """Return a traced copy of ``encoder`` with every batch norm folded into its conv/linear.

    Raises :class:`UnsupportedModuleError` naming the module when a batch norm does not directly
    follow a conv (or linear) whose output nothing else reads.
    """
    gm = trace_encoder(encoder)
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(node.target)
        if not isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
            continue
        prev = node.args[0] if node.args else None
        layer = (
            gm.get_submodule(prev.target)
            if isinstance(prev, fx.Node) and prev.op == "call_module"
            else None
        )
        pair_ok = any(isinstance(bn, b) and isinstance(layer, lay) for b, lay in _PAIRS)
        if not pair_ok or len(prev.users) != 1:
            what = module_path(gm, prev) if isinstance(prev, fx.Node) else repr(prev)
            raise UnsupportedModuleError(
                f"cannot fold batch norm {module_path(gm, node)}: it must directly follow a "
                f"Conv2d (BatchNorm2d) or Linear (BatchNorm1d) used only by it, but its input "
                f"comes from {what}"
            )
        _set_submodule(gm, prev.target, _fold_into(layer, bn))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _set_submodule(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)
