"""Remove output channels whose removal is exactly equivalent ("compact form").

Works on a BN-folded fx graph (:func:`~entropi.export.fold.fold_batchnorm`). Three steps:

1. **Channel spaces.** Ops that keep channel ``c`` in channel ``c`` (activations, pooling,
   flatten of a 1x1 map, residual ``+``, squeeze-excite ``*``, depthwise convs) tie their input
   and output tensors into one channel space (union-find); a dense conv or linear layer reads one
   space and writes another. Removing channel ``c`` removes it from every tensor of its space.
2. **Constant channels.** Every tensor gets a per-channel state: a constant (the same value at
   every position for every input) or variable. A conv output channel whose weights only see zero
   (or, without padding, constant) inputs is the constant ``bias + sum(w * v)``; activations map
   constants (``relu(b) = max(b, 0)``, ``hardswish``, ``hardsigmoid(0) = 0.5``, ...), ``0 * x =
   0``. A constant channel is not a zero channel.
3. **Removal, to a fixpoint.** Channel ``c`` of a space can go when every layer reading that space
   either has zero weights on ``c`` for all its kept outputs, or reads a tensor where ``c`` is
   exactly 0, or reads a constant ``v`` with no zero padding (then ``v * sum(w[:, c])`` moves
   into its bias). A constant read through zero padding is not uniform at the borders, so such a
   channel stays. Removing outputs of a reader can free channels of the space it reads, hence
   the iteration. The network input and output spaces are never reduced.

Anything else in the graph raises :class:`UnsupportedModuleError` naming the module.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from ._errors import UnsupportedModuleError
from .fold import module_path

__all__ = ["CompactReport", "compact_encoder"]

_UNARY_MODULES = {
    nn.ReLU: F.relu,
    nn.ReLU6: F.relu6,
    nn.Hardswish: F.hardswish,
    nn.Hardsigmoid: F.hardsigmoid,
    nn.Sigmoid: torch.sigmoid,
    nn.Identity: lambda t: t,
    nn.Dropout: lambda t: t,
}
_UNARY_FUNCTIONS = {
    F.relu: F.relu,
    F.relu6: F.relu6,
    F.hardswish: F.hardswish,
    F.hardsigmoid: F.hardsigmoid,
    torch.relu: F.relu,
    torch.sigmoid: torch.sigmoid,
}
_POOL_MODULES = (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
_POOL_FUNCTIONS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool2d, torch.flatten)
_BINARY = {
    operator.add: np.add,
    torch.add: np.add,
    operator.mul: np.multiply,
    torch.mul: np.multiply,
}


@dataclass
class CompactReport:
    """What compaction removed."""

    params_before: int
    params_after: int
    channels_before: int  # summed over the reducible channel spaces
    channels_after: int
    constant_channels_kept: int  # constant non-zero channels read through zero padding
    spaces: list[dict] = field(default_factory=list)  # per space: first producer, before, after

    def as_dict(self) -> dict:
        return asdict(self)


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


def _channels(node: fx.Node) -> int:
    return int(node.meta["tensor_meta"].shape[1])


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _layer_kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """'dense' (conv groups=1 / linear), 'depthwise', 'channelwise' (same space) or raise."""
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
        elif type(mod) in _UNARY_MODULES or isinstance(mod, _POOL_MODULES):
            return "channelwise"
    elif node.op == "call_function":
        if node.target in _UNARY_FUNCTIONS or node.target in _POOL_FUNCTIONS:
            return "channelwise"
        if node.target in _BINARY:
            return "binary"
    raise UnsupportedModuleError(
        f"compaction cannot handle {module_path(gm, node)}; supported: Conv2d (dense or "
        "depthwise), Linear, ReLU/ReLU6/Hardswish/Hardsigmoid/Sigmoid, max/adaptive pooling, "
        "flatten, + and *; export without --compact"
    )


def _weights(layer: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    w = layer.weight.detach().double().numpy()
    if w.ndim == 2:
        w = w[:, :, None, None]
    b = layer.bias.detach().double().numpy() if layer.bias is not None else np.zeros(w.shape[0])
    return w, b


def _has_padding(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return False
    pad = layer.padding
    return pad == "same" or (pad != "valid" and any(int(p) != 0 for p in pad))


def _const_fn(fn, values: np.ndarray) -> np.ndarray:
    out = values.copy()
    known = ~np.isnan(values)
    if known.any():
        out[known] = fn(torch.from_numpy(values[known]).float()).double().numpy()
    return out


def _dense_state(layer: nn.Module, state_in: np.ndarray) -> np.ndarray:
    w, b = _weights(layer)
    used = np.abs(w).sum(axis=(2, 3)) != 0  # [O, I]
    var_in = np.isnan(state_in)
    nonzero_const = ~var_in & (state_in != 0)
    bad = var_in | (nonzero_const if _has_padding(layer) else np.zeros_like(var_in))
    out = b + w.sum(axis=(2, 3)) @ np.nan_to_num(state_in)
    out[(used & bad[None, :]).any(axis=1)] = np.nan
    return out


def _depthwise_state(conv: nn.Conv2d, state_in: np.ndarray) -> np.ndarray:
    w, b = _weights(conv)
    used = np.abs(w).sum(axis=(1, 2, 3)) != 0
    var_in = np.isnan(state_in)
    bad = var_in | ((state_in != 0) if _has_padding(conv) else np.zeros_like(var_in))
    out = b + w.sum(axis=(1, 2, 3)) * np.nan_to_num(state_in)
    out[used & bad] = np.nan
    return out


def _analyse(gm: fx.GraphModule, example: torch.Tensor):
    ShapeProp(gm).propagate(example)
    spaces, state = _Spaces(), {}
    readers: list[tuple[fx.Node, fx.Node]] = []  # (dense layer node, node it reads)
    seen_modules: set[str] = set()
    pinned: list[fx.Node] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            spaces.add(node)
            state[node] = np.full(_channels(node), np.nan)
            pinned.append(node)
            continue
        if node.op == "output":
            pinned.extend(a for a in node.all_input_nodes)
            continue
        if node.op == "get_attr":
            raise UnsupportedModuleError(
                f"compaction cannot handle the tensor constant {node.target!r} in the graph"
            )
        kind = _layer_kind(gm, node)
        spaces.add(node)
        if node.op == "call_module":
            if node.target in seen_modules:
                raise UnsupportedModuleError(
                    f"compaction cannot handle {module_path(gm, node)}: the module is called "
                    "more than once"
                )
            seen_modules.add(node.target)
        inputs = node.all_input_nodes
        if kind == "binary":
            if len(inputs) == 2:
                a, b = inputs
                if _channels(a) != _channels(b):
                    raise UnsupportedModuleError(
                        f"compaction cannot handle {module_path(gm, node)}: it combines "
                        f"{_channels(a)} and {_channels(b)} channels (broadcast over channels)"
                    )
                spaces.union(node, a)
                spaces.union(node, b)
                sa, sb = state[a], state[b]
            else:
                (a,) = inputs
                spaces.union(node, a)
                scalar = next(x for x in node.args if not isinstance(x, fx.Node))
                sa, sb = state[a], np.full_like(state[a], float(scalar))
            out = _BINARY[node.target](sa, sb)
            if _BINARY[node.target] is np.multiply:
                out[(sa == 0) | (sb == 0)] = 0.0  # 0 * anything = 0, constant or not
            state[node] = out
            continue
        (src,) = inputs
        mod = gm.get_submodule(node.target) if node.op == "call_module" else None
        if kind == "dense":
            state[node] = _dense_state(mod, state[src])
            readers.append((node, src))
        elif kind == "depthwise":
            spaces.union(node, src)
            state[node] = _depthwise_state(mod, state[src])
        else:
            is_flatten = isinstance(mod, nn.Flatten) or node.target is torch.flatten
            shape = src.meta["tensor_meta"].shape
            if is_flatten and len(shape) > 2 and int(np.prod(shape[2:])) != 1:
                raise UnsupportedModuleError(
                    f"compaction cannot handle {module_path(gm, node)}: flatten of a "
                    f"{tuple(shape)} map mixes channels and positions"
                )
            spaces.union(node, src)
            fn = _UNARY_MODULES.get(type(mod)) if mod is not None else None
            fn = fn or _UNARY_FUNCTIONS.get(node.target)
            state[node] = _const_fn(fn, state[src]) if fn is not None else state[src].copy()
    return spaces, state, readers, pinned


def compact_encoder(
    folded: fx.GraphModule, example: torch.Tensor
) -> tuple[fx.GraphModule, CompactReport]:
    """Return a copy of the BN-folded ``folded`` with every exactly removable channel removed."""
    import copy

    gm = copy.deepcopy(folded).eval()
    spaces, state, readers, pinned = _analyse(gm, example)
    roots = {spaces.find(n) for n in state}
    kept = {r: np.ones(_channels(r), dtype=bool) for r in roots}
    pinned_roots = {spaces.find(n) for n in pinned}
    layers = {n: gm.get_submodule(n.target) for n, _ in readers}
    for n in state:
        if n.op == "call_module" and _layer_kind(gm, n) == "depthwise":
            layers[n] = gm.get_submodule(n.target)
    by_space: dict[fx.Node, list[tuple[fx.Node, fx.Node]]] = {r: [] for r in roots}
    for layer_node, src in readers:
        by_space[spaces.find(src)].append((layer_node, src))
    changed = True
    while changed:
        changed = False
        for root in roots - pinned_roots:
            removable = np.ones_like(kept[root])
            for layer_node, src in by_space[root]:
                w, _ = _weights(layers[layer_node])
                rows = kept[spaces.find(layer_node)]
                unused = np.abs(w[rows]).sum(axis=(0, 2, 3)) == 0
                s = state[src]
                zero = s == 0
                absorbable = ~np.isnan(s) & (not _has_padding(layers[layer_node]))
                removable &= unused | zero | absorbable
            new = kept[root] & ~removable
            if not new.any():  # never empty a space: keep its first channel (still exact)
                new[np.flatnonzero(kept[root])[:1]] = True
            if (new != kept[root]).any():
                kept[root], changed = new, True
    report = _rebuild(gm, spaces, state, readers, layers, kept, roots - pinned_roots)
    return gm, report


def _rebuild(gm, spaces, state, readers, layers, kept, reducible) -> CompactReport:
    params_before = sum(p.numel() for p in gm.parameters())
    src_of = dict(readers)
    const_kept = 0
    for node, layer in layers.items():
        out_keep = np.flatnonzero(kept[spaces.find(node)])
        if isinstance(layer, nn.Conv2d) and _is_depthwise(layer):
            w, b = _weights(layer)
            new_w, new_b = w[out_keep], b[out_keep]
            new = nn.Conv2d(
                len(out_keep),
                len(out_keep),
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.dilation,
                groups=len(out_keep),
                bias=True,
            )
        else:
            src = src_of[node]
            in_keep = kept[spaces.find(src)]
            w, b = _weights(layer)
            s = state[src]
            gone_const = ~in_keep & ~np.isnan(s) & (s != 0)
            const_kept += int((in_keep & ~np.isnan(s) & (s != 0)).sum())
            new_b = b[out_keep] + w[out_keep][:, gone_const].sum(axis=(2, 3)) @ s[gone_const]
            new_w = w[out_keep][:, in_keep]
            if isinstance(layer, nn.Linear):
                new = nn.Linear(int(in_keep.sum()), len(out_keep), bias=True)
                new_w = new_w[:, :, 0, 0]
            else:
                new = nn.Conv2d(
                    int(in_keep.sum()),
                    len(out_keep),
                    layer.kernel_size,
                    layer.stride,
                    layer.padding,
                    layer.dilation,
                    bias=True,
                )
        with torch.no_grad():
            new.weight.copy_(torch.from_numpy(new_w).float())
            new.bias.copy_(torch.from_numpy(new_b).float())
        parent, _, name = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, new.eval())
    gm.recompile()
    first: dict = {}
    for node in gm.graph.nodes:  # name each space after the first module that writes it
        if node in spaces.parent and node.op == "call_module":
            first.setdefault(spaces.find(node), node.target)
    spaces_info = [
        {"space": first.get(r, r.name), "before": int(kept[r].size), "after": int(kept[r].sum())}
        for r in sorted(reducible, key=lambda r: str(first.get(r, r.name)))
    ]
    return CompactReport(
        params_before=int(params_before),
        params_after=int(sum(p.numel() for p in gm.parameters())),
        channels_before=sum(s["before"] for s in spaces_info),
        channels_after=sum(s["after"] for s in spaces_info),
        constant_channels_kept=const_kept,
        spaces=spaces_info,
    )
