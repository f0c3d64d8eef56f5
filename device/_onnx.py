"""What the device must know of an ONNX file before onnxruntime opens it, read from the protobuf
wire format itself (the device has no ``onnx`` package): its operators, the external data files
its tensors name, its graph inputs' shapes, and whether it has local functions or sub-graphs.

Only the fields below are decoded; everything else (weights, names, metadata) is skipped as
bytes. The reading follows protobuf's own rules, so it sees what onnxruntime's parser sees: a
field of an unexpected wire type is an unknown field (ignored), a repeated message field's
occurrences are concatenated, a singular message field's occurrences are merged (their
repeated fields concatenated), and the last occurrence of a scalar wins. Malformed bytes raise
``ValueError``.

Field numbers (onnx.proto3): ModelProto graph 7, training_info 20, functions 25; GraphProto
node 1, initializer 5, input 11, sparse_initializer 15; NodeProto op_type 4, attribute 5, domain
7; AttributeProto t 5, g 6, tensors 10, graphs 11, sparse_tensor 22, sparse_tensors 23;
TensorProto name 8, external_data 13 (StringStringEntryProto key 1, value 2); SparseTensorProto
values 1, indices 2; ValueInfoProto name 1, type 2; TypeProto tensor_type 1; TypeProto.Tensor
shape 2; TensorShapeProto dim 1; Dimension dim_value 1, dim_param 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["OnnxSummary", "summarize_onnx"]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass
class OnnxSummary:
    """What :func:`summarize_onnx` found in a model."""

    ops: set[tuple[str, str]] = field(default_factory=set)
    """(domain, op_type) of every node of the main graph ("" is the default domain)."""
    external: set[str] = field(default_factory=set)
    """Every ``location`` an external-data entry of a tensor names."""
    inputs: list[tuple[str, tuple[int | str | None, ...]]] = field(default_factory=list)
    """Graph inputs that are not initializers: name and dims (an int, a symbolic name, or
    None when unset)."""
    functions: int = 0
    """Model-local functions (a node may call one as an op)."""
    subgraphs: int = 0
    """Graph-valued node attributes (the bodies of If / Loop / Scan) and training graphs."""


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of every field of one message, in order."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, i = _varint(buf, i)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            value, i = buf[i : i + size], i + size
        elif wire == _LEN:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > n or number == 0:
            raise ValueError("truncated message")
        yield number, wire, value


def _messages(buf: memoryview, number: int) -> list[memoryview]:
    """The occurrences of the message (or string) field ``number`` of ``buf``."""
    return [v for f, w, v in _fields(buf) if f == number and w == _LEN]


def _text(values: list[memoryview]) -> str | None:
    """The last occurrence of a string field (protobuf: the last one wins)."""
    return bytes(values[-1]).decode("utf-8", "replace") if values else None


def _tensor_locations(tensor: memoryview) -> set[str]:
    """The ``location`` values of a TensorProto's external-data entries."""
    out = set()
    for entry in _messages(tensor, 13):
        if _text(_messages(entry, 1)) == "location":
            out.add(_text(_messages(entry, 2)) or "")
    return out


def _sparse_locations(sparse: memoryview) -> set[str]:
    return {loc for n in (1, 2) for t in _messages(sparse, n) for loc in _tensor_locations(t)}


def _dims(value_info: memoryview) -> tuple[int | str | None, ...]:
    dims: list[int | str | None] = []
    for type_proto in _messages(value_info, 2):
        for tensor_type in _messages(type_proto, 1):
            for shape in _messages(tensor_type, 2):
                for dim in _messages(shape, 1):
                    value: int | str | None = None
                    for f, w, v in _fields(dim):
                        if f == 1 and w == _VARINT:
                            value = v - (1 << 64) if v >= 1 << 63 else v  # int64
                        elif f == 2 and w == _LEN:
                            value = bytes(v).decode("utf-8", "replace")
                    dims.append(value)
    return tuple(dims)


def _scan_node(node: memoryview, summary: OnnxSummary) -> None:
    op_type, domain = _text(_messages(node, 4)), _text(_messages(node, 7))
    summary.ops.add((domain or "", op_type or ""))
    for attr in _messages(node, 5):
        for f, w, v in _fields(attr):
            if w != _LEN:
                continue
            if f in (6, 11):
                summary.subgraphs += 1
            elif f in (5, 10):
                summary.external |= _tensor_locations(v)
            elif f in (22, 23):
                summary.external |= _sparse_locations(v)


def summarize_onnx(data: bytes) -> OnnxSummary:
    """The :class:`OnnxSummary` of the serialized ModelProto ``data``; ``ValueError`` when the
    bytes are not a well-formed protobuf message."""
    summary = OnnxSummary()
    model = memoryview(data)
    summary.functions = len(_messages(model, 25))
    summary.subgraphs = len(_messages(model, 20))  # training graphs: none in an export
    initialized, inputs = set(), []  # over every occurrence of the graph: protobuf merges them
    for graph in _messages(model, 7):
        for f, w, v in _fields(graph):
            if w != _LEN:
                continue
            if f == 1:
                _scan_node(v, summary)
            elif f == 5:
                initialized.add(_text(_messages(v, 8)))
                summary.external |= _tensor_locations(v)
            elif f == 15:
                initialized |= {_text(_messages(t, 8)) for t in _messages(v, 1)}
                summary.external |= _sparse_locations(v)
            elif f == 11:
                inputs.append((_text(_messages(v, 1)) or "", _dims(v)))
    summary.inputs = [(name, dims) for name, dims in inputs if name not in initialized]
    return summary
