"""Remove input channels whose removal is exactly equivalent ("compact form").

Works on a BN-folded fx graph (:func:`~entropi.export.fold.fold_batchnorm`) for one fixed input
size (the example's). Four steps:

1. **Channel spaces** and 2. **fixed channels** (:mod:`entropi.export._channels`): channels
   tied by channel-preserving ops (activations, pooling, ``+``, ``*``, depthwise convs) form a
   space, removed as one; every channel of every tensor is variable or *fixed* (the same map for
   every input, computed exactly in float64). A dead conv outputs its BN-folded bias ``b``, and
   ``relu(b) = max(b, 0)`` is not 0: a constant channel is not a zero channel. Fixed maps need
   not be uniform: a depthwise conv with zero padding turns a constant into a border-dependent map.
3. **Removal, to a fixpoint.** Channel ``c`` of a space can go when every dense layer reading
   that space has zero weights on ``c`` for all its kept outputs or reads ``c`` fixed. The
   contribution of a removed fixed channel to a reader is input-independent: it is computed in
   float64 (the reader's conv on the fixed map of the removed channels alone, zero padding
   included) and added back after the reader: per output channel, its uniform part goes into
   the bias, and a position-dependent remainder (partial kernel sums at zero-padded borders)
   becomes a constant bias map ``out_channels x H_out x W_out`` (:class:`ConvWithBiasMap`).
   Removing outputs of a reader can free channels of the space it reads, hence the iteration.
   The network input and output spaces are never reduced, so the feature vector is unchanged.
4. **Alignment.** Widths a little short of a multiple of 16 keep some removable channels back
   (exact too): onnxruntime's fast convolution kernels need such widths.

Bias maps are fixed-size, so the compact encoder accepts only the example's input shape
(batch size free) and raises :class:`InputShapeError` for any other. Anything else in the graph
raises :class:`UnsupportedModuleError` naming the module.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import fx, nn

from ._channels import Analysis, analyse, apply64, channels, is_zero, weights
from ._errors import ExportError, UnsupportedModuleError

__all__ = [
    "CompactReport",
    "ConvWithBiasMap",
    "InputShapeCheck",
    "InputShapeError",
    "compact_encoder",
    "same_graph",
]

# A reader's contribution from removed fixed channels counts as uniform over positions when its
# spread is below this fraction of its magnitude (float64 rounding; float32 weights are ~1e-7).
_UNIFORM_RTOL = 1e-12
# Runtime-friendly widths: onnxruntime's fast (NCHWc) convolutions need channel counts divisible
# by the SIMD block (8 floats with AVX2, 16 with AVX-512; 16 serves both). A space whose kept
# width is at most 25 % short of the next multiple of 16 keeps removable channels back to reach
# it (always exact). Measured on ResNet18 / MobileNetV3 at alpha = 0.01 (onnxruntime, AVX-512):
# e.g. a 15-channel 32x32 stem runs 1.5x slower than the same stem with 16 channels.
_CHANNEL_MULTIPLE = 16
_MAX_PAD_FRACTION = 0.25


class InputShapeError(ExportError):
    """A compact encoder was called with an input shape other than the one it was built for."""


class InputShapeCheck(nn.Module):
    """Identity that rejects inputs whose shape (batch excluded) is not ``shape``.

    Under ``torch.export`` (ONNX, litert-torch) the check runs at trace time and emits no op.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            want = " x ".join(str(s) for s in self.shape)
            raise InputShapeError(
                f"this compact encoder only accepts inputs of shape N x {want} (the example it "
                f"was compacted with: its constant bias maps have a fixed size), got "
                f"{tuple(x.shape)}; compact it again with an example of the new size or use the "
                "sparse encoder"
            )
        return x


class ConvWithBiasMap(nn.Module):
    """``conv(x) + bias_map``: a conv whose removed fixed input channels leave a constant,
    position-dependent contribution (``1 x out_channels x H_out x W_out``)."""

    def __init__(self, conv: nn.Conv2d, bias_map: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("bias_map", bias_map)

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.bias_map


@dataclass
class CompactReport:
    """What compaction removed."""

    params_before: int
    params_after: int
    channels_before: int  # summed over the reducible channel spaces
    channels_after: int
    constant_channels_kept: int  # fixed non-zero channels a reader still reads (not removable)
    spaces: list[dict] = field(default_factory=list)  # per space: first producer, before, after
    fixed_channels_removed: int = 0  # removed channels whose fixed value a reader folds in
    bias_maps: int = 0  # readers that got a position-dependent bias map
    bias_map_floats: int = 0  # float32 elements of all bias maps (buffers, not parameters)
    input_shape: list[int] = field(default_factory=list)  # C, H, W the encoder accepts
    channels_kept_for_alignment: int = 0  # removable, kept for widths divisible by 16

    def as_dict(self) -> dict:
        return asdict(self)


def compact_encoder(
    folded: fx.GraphModule, example: torch.Tensor
) -> tuple[fx.GraphModule, CompactReport]:
    """Return a copy of the BN-folded ``folded`` with every exactly removable channel removed.

    ``example`` (``1 x C x H x W``) fixes the input shape: the result only accepts inputs of that
    shape (any batch size) and raises :class:`InputShapeError` otherwise.
    """
    gm = copy.deepcopy(folded).eval()
    n_inputs = sum(n.op == "placeholder" for n in gm.graph.nodes)
    if n_inputs != 1:
        raise UnsupportedModuleError(
            f"compaction needs an encoder with exactly one input tensor, this graph has {n_inputs}"
        )
    a = analyse(gm, example)
    roots = {a.spaces.find(n) for n in a.var}
    kept = {r: np.ones(channels(r), dtype=bool) for r in roots}
    reducible = roots - {a.spaces.find(n) for n in a.pinned}
    used = {  # [O, I]: output o reads input i
        n: np.abs(weights(gm.get_submodule(n.target))[0]).sum(axis=(2, 3)) != 0
        for n, _ in a.readers
    }
    by_space: dict[fx.Node, list[tuple[fx.Node, fx.Node]]] = {r: [] for r in roots}
    for layer_node, src in a.readers:
        by_space[a.spaces.find(src)].append((layer_node, src))
    changed = True
    while changed:
        changed = False
        for root in reducible:
            removable = np.ones_like(kept[root])
            for layer_node, src in by_space[root]:
                rows = kept[a.spaces.find(layer_node)]
                removable &= ~used[layer_node][rows].any(axis=0) | ~a.var[src]
            new = kept[root] & ~removable
            if not new.any():  # never empty a space: keep its first channel (still exact)
                new[np.flatnonzero(kept[root])[:1]] = True
            if (new != kept[root]).any():
                kept[root], changed = new, True
    padded = _round_up(kept, reducible, _CHANNEL_MULTIPLE, _MAX_PAD_FRACTION)
    report = _rebuild(gm, a, kept, reducible, tuple(example.shape[1:]))
    report.channels_kept_for_alignment = padded
    return gm, report


def _round_up(kept: dict, reducible, multiple: int, max_fraction: float) -> int:
    """Keep removable channels back so that each space's width becomes a multiple of
    ``multiple`` (or its full width) when that adds at most ``max_fraction`` of its kept width.
    Keeping a channel is always exact. Returns the number of channels kept back."""
    added = 0
    for root in reducible:
        k, total = int(kept[root].sum()), kept[root].size
        target = min(-(-k // multiple) * multiple, total)
        if target - k > max_fraction * k:
            continue
        extra = np.flatnonzero(~kept[root])[: target - k]
        kept[root][extra] = True
        added += len(extra)
    return added


def _fixed_contribution(layer: nn.Module, x: torch.Tensor, gone: np.ndarray, out_keep):
    """float64 output of ``layer`` (no bias) on the fixed map of the removed channels ``gone``,
    for the kept outputs: ``O' x H_out x W_out`` (conv) or ``O'`` (linear)."""
    if not gone.any():
        return None
    contrib = apply64(layer, x[:, torch.from_numpy(gone)], bias=False, inputs=gone)
    return contrib[0, torch.from_numpy(out_keep)].numpy()


def _split_uniform(contrib: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per output channel, the value at the centre of the map (an interior position, where every
    kernel tap lands inside the image; it goes into the bias) and the position-dependent rest (a
    bias map that is 0 in the interior, or None when every channel is uniform)."""
    flat = contrib.reshape(contrib.shape[0], -1)
    centre = contrib[:, contrib.shape[1] // 2, contrib.shape[2] // 2]
    rest = contrib - centre[:, None, None]
    spread = flat.max(axis=1) - flat.min(axis=1)
    flat_rows = spread <= _UNIFORM_RTOL * np.maximum(1.0, np.abs(flat).max(axis=1))
    rest[flat_rows] = 0.0
    return centre, (None if flat_rows.all() else rest)


def _rebuild(gm, a: Analysis, kept, reducible, input_shape) -> CompactReport:
    params_before = sum(p.numel() for p in gm.parameters())
    const_kept = fixed_removed = n_maps = map_floats = 0
    for node in a.depthwise:
        layer = gm.get_submodule(node.target)
        keep = np.flatnonzero(kept[a.spaces.find(node)])
        w, b = weights(layer)
        new = nn.Conv2d(
            len(keep),
            len(keep),
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            groups=len(keep),
            bias=True,
        )
        _set_params(new, w[keep], b[keep])
        _replace(gm, node.target, new)
    for node, src in a.readers:
        layer = gm.get_submodule(node.target)
        out_keep = np.flatnonzero(kept[a.spaces.find(node)])
        in_keep = kept[a.spaces.find(src)]
        w, b = weights(layer)
        fixed = ~a.var[src]
        nonzero = ~is_zero(src, a)
        const_kept += int((in_keep & fixed & nonzero).sum())
        read = np.abs(w[out_keep]).sum(axis=(0, 2, 3)) != 0
        gone = ~in_keep & fixed & nonzero & read  # removed, and its constant reaches a kept row
        fixed_removed += int(gone.sum())
        contrib = _fixed_contribution(layer, a.fixed[src], gone, out_keep)
        new_b, bias_map = b[out_keep], None
        new_w = w[out_keep][:, in_keep]
        if isinstance(layer, nn.Linear):
            new = nn.Linear(int(in_keep.sum()), len(out_keep), bias=True)
            new_w = new_w[:, :, 0, 0]
            if contrib is not None:
                new_b = new_b + contrib
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
            if contrib is not None:
                uniform, bias_map = _split_uniform(contrib)
                new_b = new_b + uniform
        _set_params(new, new_w, new_b)
        if bias_map is not None:
            n_maps, map_floats = n_maps + 1, map_floats + bias_map.size
            new = ConvWithBiasMap(new, torch.from_numpy(bias_map[None]).float())
        _replace(gm, node.target, new)
    _insert_input_check(gm, input_shape)
    first: dict = {}
    for node in gm.graph.nodes:  # name each space after the first module that writes it
        if node in a.spaces.parent and node.op == "call_module":
            first.setdefault(a.spaces.find(node), node.target)
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
        fixed_channels_removed=fixed_removed,
        bias_maps=n_maps,
        bias_map_floats=int(map_floats),
        input_shape=[int(s) for s in input_shape],
    )


def _set_params(new: nn.Module, w: np.ndarray, b: np.ndarray) -> None:
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)).float())
        new.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)).float())
    new.eval()


def _replace(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module.eval())


def _insert_input_check(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> None:
    (placeholder,) = [n for n in gm.graph.nodes if n.op == "placeholder"]
    gm.add_submodule("input_check", InputShapeCheck(input_shape))
    with gm.graph.inserting_after(placeholder):
        check = gm.graph.call_module("input_check", (placeholder,))
    placeholder.replace_all_uses_with(check, delete_user_cb=lambda user: user is not check)
    gm.recompile()


def same_graph(a: fx.GraphModule, b: fx.GraphModule) -> bool:
    """Whether ``a`` and ``b`` are the same graph over the same weights, the compact form's
    input check (an identity under ``torch.export``, so no op of any file) aside: the same
    nodes in the same order (names, ops, targets, arguments), the same module (type, settings,
    mode) behind every ``call_module``, the same parameters and buffers (names, dtypes, values)
    and ``get_attr`` values. A compaction that removed nothing gives such a pair: the exporter
    then converts and quantizes the module once for every form."""
    if _node_signature(a) != _node_signature(b):
        return False
    tensors_a = [*a.named_parameters(), *a.named_buffers()]
    tensors_b = [*b.named_parameters(), *b.named_buffers()]
    if [n for n, _ in tensors_a] != [n for n, _ in tensors_b]:
        return False
    attrs = [(a, b, n.target) for n in a.graph.nodes if n.op == "get_attr"]
    pairs = [(x, y) for (_, x), (_, y) in zip(tensors_a, tensors_b, strict=True)]
    pairs += [(_attr(x, t), _attr(y, t)) for x, y, t in attrs]
    return all(_same_value(x, y) for x, y in pairs)


def _node_signature(gm: fx.GraphModule) -> list[tuple]:
    """Every node but the input check as ``(op, name, target, args, kwargs)``, node arguments
    by name (an input check's output by its input's), a module target with its type, its
    ``repr`` (settings and children) and its mode."""
    alias: dict[fx.Node, fx.Node] = {}
    out = []
    for node in gm.graph.nodes:
        target = node.target
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, InputShapeCheck):
                alias[node] = alias.get(node.args[0], node.args[0])
                continue
            target = (node.target, type(module), repr(module), module.training)
        args = fx.node.map_arg((node.args, node.kwargs), lambda n: ("node", alias.get(n, n).name))
        out.append((node.op, node.name, target, repr(args)))
    return out


def _attr(gm: nn.Module, target: str):
    for part in target.split("."):
        gm = getattr(gm, part)
    return gm


def _same_value(x, y) -> bool:
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return (
            isinstance(x, torch.Tensor)
            and isinstance(y, torch.Tensor)
            and x.dtype == y.dtype
            and x.shape == y.shape
            and bool(torch.equal(x, y))
        )
    return type(x) is type(y) and x == y
