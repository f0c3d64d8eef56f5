"""Channel analysis for compaction: channel spaces and fixed (input-independent) channels.

:func:`analyse` walks a BN-folded fx graph once, for one input size:

- **Channel spaces.** Ops that keep channel ``c`` in channel ``c`` (activations, pooling, flatten
  of a 1x1 map, ``+``, ``*``, depthwise convs) tie their input and output tensors into one space
  (union-find); a dense conv or linear layer (a *reader*) reads one space and writes another.
- **Fixed channels.** Per tensor and channel: variable (depends on the input) or fixed (the same
  map for every input). The fixed maps are computed exactly, in float64, by running every op on
  the fixed parts with the variable channels set to 0; an output channel is fixed when every
  input channel it reads with a non-zero weight is fixed (``a * b``: also when either is 0).

Anything else raises :class:`UnsupportedModuleError` naming the module.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from ._errors import UnsupportedModuleError
from .fold import module_path

__all__ = ["Analysis", "analyse", "apply64", "channels", "is_zero", "weights"]

_UNARY_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
)
_UNARY_FUNCTIONS = (
    F.relu,
    F.relu6,
    F.hardswish,
    F.hardsigmoid,
    torch.relu,
    torch.sigmoid,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.max_pool2d,
    F.avg_pool2d,
    torch.flatten,
)
_ADD = (operator.add, torch.add)
_MUL = (operator.mul, torch.mul)


class _Spaces:
    """Union-find over fx nodes: nodes in one set share a channel index space."""

    def __init__(self) -> None:
        self.parent: dict[fx.Node, fx.Node] = {}

    def add(self, n: fx.Node) -> None:
        self.parent.setdefault(n, n)

    def find(self, n: fx.Node) -> fx.Node:
        while self.parent[n] is not n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def union(self, a: fx.Node, b: fx.Node) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclass
class Analysis:
    spaces: _Spaces
    var: dict[fx.Node, np.ndarray]  # per channel: True = depends on the input
    fixed: dict[fx.Node, torch.Tensor]  # float64, batch 1: the fixed channels' values, 0 if var
    readers: list[tuple[fx.Node, fx.Node]]  # (dense conv/linear node, node it reads)
    depthwise: list[fx.Node]
    pinned: list[fx.Node]


def channels(node: fx.Node) -> int:
    return int(node.meta["tensor_meta"].shape[1])


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _layer_kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """'dense' (conv groups=1 / linear), 'depthwise', 'channelwise', 'add', 'mul' or raise."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros":
                raise UnsupportedModuleError(
                    f"compaction cannot handle {module_path(gm, node)}: padding_mode "
                    f"{mod.padding_mode!r} (only zero padding)"
                )
            if mod.groups == 1:
                return "dense"
            if _is_depthwise(mod):
                return "depthwise"
        elif isinstance(mod, nn.Linear):
            return "dense"
        elif type(mod) in _UNARY_MODULES:
            return "channelwise"
    elif node.op == "call_function":
        if node.target in _UNARY_FUNCTIONS:
            return "channelwise"
        if node.target in _ADD:
            return "add"
        if node.target in _MUL:
            return "mul"
    raise UnsupportedModuleError(
        f"compaction cannot handle {module_path(gm, node)}; supported: Conv2d (dense or "
        "depthwise), Linear, ReLU/ReLU6/Hardswish/Hardsigmoid/Sigmoid, max/avg/adaptive pooling, "
        "flatten, + and *; export without --compact"
    )


def weights(layer: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """float64 weight (4-D, linear as 1x1) and bias (zeros when the layer has none)."""
    w = layer.weight.detach().double().numpy()
    if w.ndim == 2:
        w = w[:, :, None, None]
    b = layer.bias.detach().double().numpy() if layer.bias is not None else np.zeros(w.shape[0])
    return w, b


def apply64(layer: nn.Module, x: torch.Tensor, *, bias: bool = True, inputs=None) -> torch.Tensor:
    """``layer`` in float64 on ``x`` (optionally without bias, or on a subset of inputs)."""
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if bias and layer.bias is not None else None
    if inputs is not None:
        w = w[:, torch.from_numpy(inputs)]
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, b)
    return F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)


def _run_node(gm: fx.GraphModule, node: fx.Node, fixed: dict) -> torch.Tensor:
    """Evaluate a parameter-free node in float64 on the fixed values of its inputs."""
    args = fx.node.map_arg(node.args, lambda n: fixed[n].clone())  # clone: inplace ReLU
    kwargs = fx.node.map_arg(node.kwargs, lambda n: fixed[n].clone())
    fn = gm.get_submodule(node.target) if node.op == "call_module" else node.target
    return fn(*args, **kwargs)


def is_zero(node: fx.Node, a: Analysis) -> np.ndarray:
    """Per channel: fixed and exactly 0 everywhere."""
    t = a.fixed[node]
    flat = t.reshape(t.shape[0], t.shape[1], -1) if t.dim() > 2 else t[..., None]
    return ~a.var[node] & (flat == 0).all(dim=2).all(dim=0).numpy()


def analyse(gm: fx.GraphModule, example: torch.Tensor) -> Analysis:
    ShapeProp(gm).propagate(example)
    a = Analysis(_Spaces(), {}, {}, [], [], [])
    seen_modules: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            a.spaces.add(node)
            a.var[node] = np.ones(channels(node), dtype=bool)
            a.fixed[node] = torch.zeros(1, *node.meta["tensor_meta"].shape[1:], dtype=torch.float64)
            a.pinned.append(node)
            continue
        if node.op == "output":
            a.pinned.extend(node.all_input_nodes)
            continue
        if node.op == "get_attr":
            raise UnsupportedModuleError(
                f"compaction cannot handle the tensor constant {node.target!r} in the graph"
            )
        kind = _layer_kind(gm, node)
        a.spaces.add(node)
        if node.op == "call_module":
            if node.target in seen_modules:
                raise UnsupportedModuleError(
                    f"compaction cannot handle {module_path(gm, node)}: the module is called "
                    "more than once"
                )
            seen_modules.add(node.target)
        inputs = node.all_input_nodes
        if kind in ("add", "mul"):
            _binary(gm, node, kind, a)
            continue
        (src,) = inputs
        var_in = a.var[src]
        if kind in ("dense", "depthwise"):
            layer = gm.get_submodule(node.target)
            if isinstance(layer, nn.Linear) and len(src.meta["tensor_meta"].shape) != 2:
                raise UnsupportedModuleError(
                    f"compaction cannot handle {module_path(gm, node)}: a Linear layer on a "
                    f"rank-{len(src.meta['tensor_meta'].shape)} tensor (only N x C inputs)"
                )
            used = np.abs(weights(layer)[0]).sum(axis=(2, 3)) != 0  # [O, I] or [C, 1]
            if kind == "dense":
                var_out = (used & var_in[None, :]).any(axis=1)
                a.readers.append((node, src))
            else:
                a.spaces.union(node, src)
                var_out = used[:, 0] & var_in  # a dead depthwise channel outputs its bias
                a.depthwise.append(node)
            out = apply64(layer, a.fixed[src])
        else:
            shape = src.meta["tensor_meta"].shape
            mod = gm.get_submodule(node.target) if node.op == "call_module" else None
            is_flatten = isinstance(mod, nn.Flatten) or node.target is torch.flatten
            if is_flatten and len(shape) > 2 and int(np.prod(shape[2:])) != 1:
                raise UnsupportedModuleError(
                    f"compaction cannot handle {module_path(gm, node)}: flatten of a "
                    f"{tuple(shape)} map mixes channels and positions"
                )
            a.spaces.union(node, src)
            var_out = var_in.copy()
            out = _run_node(gm, node, a.fixed)
        out[:, torch.from_numpy(var_out)] = 0.0
        a.var[node], a.fixed[node] = var_out, out
    return a


def _binary(gm: fx.GraphModule, node: fx.Node, kind: str, a: Analysis) -> None:
    inputs = node.all_input_nodes
    for x in inputs:
        if channels(x) != channels(node):
            raise UnsupportedModuleError(
                f"compaction cannot handle {module_path(gm, node)}: it combines "
                f"{channels(x)} and {channels(node)} channels (broadcast over channels)"
            )
        a.spaces.union(node, x)
    var = np.zeros(channels(node), dtype=bool)
    for x in inputs:
        var |= a.var[x]
    if kind == "mul":
        for x in inputs:
            var &= ~is_zero(x, a)  # 0 * anything = 0, fixed or not
        scalars = [v for v in node.args if not isinstance(v, fx.Node)]
        if any(float(s) == 0.0 for s in scalars):
            var[:] = False
    out = _run_node(gm, node, a.fixed)
    out[:, torch.from_numpy(var)] = 0.0
    a.var[node], a.fixed[node] = var, out
