"""Run an encoder file (TFLite via the LiteRT interpreter, or ONNX via onnxruntime) on batches.

Input: float32 NCHW, already normalized; output: (N, feature_dim) float32. A file exported with
a fixed batch size is run in chunks of that size, the last chunk zero-padded (the padded rows'
outputs are dropped). Interpreters are imported lazily, so this module imports with numpy alone.

An int8 file (a full-integer TFLite encoder) takes int8 input and returns int8 features: with
the ``quantization`` of the bundle manifest the runner feeds ``q = clip(round(x / s_in) + z_in,
-128, 127)`` of the float input and returns ``(q_out - z_out) * s_out`` as float32, after
checking that the manifest's dtypes, scales and zero points are the file's own (a manifest
that disagrees with its file is refused: the features would be silently wrong). A QDQ ONNX
file computes in int8 but keeps float32 I/O; its quantization entries are float32 (no scale).

An encoder file may be damaged or hostile: any error of the interpreter while loading or running
it (and a missing interpreter) is raised as :class:`.errors.BundleError` naming the file, never
as the interpreter's own exception. Before an interpreter is given the file (before it
allocates anything), :func:`inspect_encoder` checks what an entropi export can be: one input
of rank 4 whose [C, H, W] is the manifest's ``input.shape`` when given (a size the file leaves
variable: at most :data:`MAX_VARIABLE_INPUT` values), only the operators the exporters write
(:data:`ONNX_OPS`, :data:`TFLITE_OPS`; a ``Loop`` whose trip count is 10^15 would hang the
device, and onnxruntime ignores SIGINT), no ONNX sub-graphs or local functions, and ONNX
external data only in the files the caller names (a bundle's hashed files).
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

from entropi.common.errors import escape_controls

from ._onnx import summarize_onnx
from .errors import BundleError, DataError

__all__ = [
    "MAX_VARIABLE_INPUT",
    "ONNX_OPS",
    "TFLITE_OPS",
    "EncoderRunner",
    "inspect_encoder",
    "refused_ops",
]

_RUNTIMES = {"tflite": "the LiteRT interpreter", "onnx": "onnxruntime"}
_INSTALL = {
    "tflite": "ai-edge-litert (extra 'entropi[litert]')",
    "onnx": "onnxruntime ('entropi[ort]')",
}


ONNX_OPS = frozenset(
    ("", op)
    for op in (
        # the export of every architecture (smallnet, resnet18, resnet18_imagenet,
        # mobilenetv3_small) in every encoder form (sparse, compact, compact-dense),
        # float32 and its int8 QDQ form
        "Add", "Conv", "DequantizeLinear", "Gemm", "HardSigmoid", "HardSwish", "MaxPool",
        "Mul", "QuantizeLinear", "ReduceMean", "Relu", "Reshape",
        # a linear layer as other exporters write it
        "Flatten", "MatMul",
    )
)  # fmt: skip
"""The (domain, op_type) pairs an entropi ONNX export writes (export/onnx_export.py and its int8
QDQ form); any other operator (``Loop``, ``If``, ``Scan``, a custom domain's) is refused. An
architecture whose export needs another adds it here (``export.verify`` refuses to write a file
the device would refuse)."""
TFLITE_OPS = frozenset(
    (
        # the export of every architecture in every form, float32 and full-integer int8
        "ADD", "CONV_2D", "DENSIFY", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "HARD_SWISH",
        "MAX_POOL_2D", "MEAN", "MUL", "PAD", "PADV2", "RELU_0_TO_1", "SUM", "TRANSPOSE",
        # a linear layer or activation on its own, the int8 I/O conversions
        "RELU", "RESHAPE", "QUANTIZE", "DEQUANTIZE",
    )
)  # fmt: skip
"""The builtin operators an entropi TFLite export writes; any other (``WHILE``, ``IF``, a custom
op) is refused."""


MAX_VARIABLE_INPUT = 1 << 22
"""The most values (C x H x W) of one input the manifest may ask of an encoder whose file leaves
its input size variable (an entropi export fixes it): 16 MB of float32 an image."""


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = escape_controls(" ".join(str(e).split())) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EncoderRunner:
    """One loaded encoder file; ``runner(x)`` returns features.

    ``label`` names the file in error messages (default: its path). The file is checked by
    :func:`inspect_encoder` (against ``input_shape``, the manifest's [C, H, W], when given;
    ONNX external data only in ``data_files``) before the interpreter allocates anything.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fmt: str,
        feature_dim: int,
        *,
        num_threads: int = 1,
        label: str | None = None,
        quantization: dict | None = None,
        input_shape: tuple[int, int, int] | None = None,
        data_files: Collection[str] = (),
    ) -> None:
        self.path, self.format, self.feature_dim = Path(path), fmt, int(feature_dim)
        self.label = str(self.path) if label is None else label
        self.quantization = quantization
        self._q_in = self._q_out = None  # (scale, zero_point, dtype) of an integer tensor
        if fmt not in _RUNTIMES:
            raise BundleError(f"unknown encoder format {fmt!r}; known: tflite, onnx")
        try:
            self._open(num_threads, input_shape, data_files)
        except BundleError:
            raise
        except ImportError as e:
            raise BundleError(
                f"no interpreter for encoder {self.label}: install {_INSTALL[fmt]} ({e})"
            ) from e
        except Exception as e:  # the interpreter's own errors on a damaged file
            raise BundleError(
                f"encoder file {self.label} could not be loaded by {_RUNTIMES[fmt]}: "
                f"{type(e).__name__}: {_one_line(e)}"
            ) from e
        self._check_quantization()

    def _io_details(self) -> dict[str, tuple[str, float, int]]:
        """``{"input": (dtype, scale, zero_point), "output": ...}`` as the interpreter reports
        them (float32 tensors: scale 0.0, zero point 0)."""
        if self.format == "onnx":
            return {"input": ("float32", 0.0, 0), "output": ("float32", 0.0, 0)}
        details = {
            "input": self._interp.get_input_details()[0],
            "output": self._interp.get_output_details()[0],
        }
        out = {}
        for side, d in details.items():
            scale, zero_point = d["quantization"]
            out[side] = (np.dtype(d["dtype"]).name, float(scale), int(zero_point))
        return out

    def _check_quantization(self) -> None:
        """The manifest's quantization must be the file's (module docstring)."""
        actual = self._io_details()
        given = self.quantization or {}
        for side, (dtype, scale, zero_point) in actual.items():
            q = given.get(side)
            if dtype == "float32":
                if q is not None and q.get("dtype") != "float32":
                    raise BundleError(
                        f"encoder file {self.label}: the manifest says its {side} is "
                        f"{q.get('dtype')}, the file's is float32"
                    )
                continue
            if dtype not in ("int8", "uint8"):
                raise BundleError(
                    f"encoder file {self.label} has a {dtype} {side}; this runtime feeds "
                    "float32, int8 or uint8"
                )
            if q is None:
                raise BundleError(
                    f"encoder file {self.label} has a {dtype} {side} but the manifest gives "
                    "no quantization for it: bundle it with `entropi bundle --quantize int8`"
                )
            if (
                q.get("dtype") != dtype
                or q.get("zero_point") != zero_point
                or not isinstance(q.get("scale"), int | float)
                or not abs(q["scale"] - scale) <= 1e-6 * abs(scale)
            ):
                raise BundleError(
                    f"encoder file {self.label}: the manifest's {side} quantization "
                    f"({q.get('dtype')}, scale {q.get('scale')}, zero point {q.get('zero_point')}) "
                    f"is not the file's ({dtype}, scale {scale}, zero point {zero_point})"
                )
            if scale <= 0:
                raise BundleError(f"encoder file {self.label} has a {dtype} {side} without scale")
            setattr(self, "_q_in" if side == "input" else "_q_out", (scale, zero_point, dtype))

    def _open(self, num_threads: int, input_shape, data_files) -> None:
        if self.format == "tflite":
            self._interp = _tflite_interpreter(self.path, num_threads)
            _check_input_shape(_inspect_tflite(self._interp, self.label), input_shape, self.label)
            self._interp.allocate_tensors()
            inp = self._interp.get_input_details()[0]
            self._in_index = inp["index"]
            self._out_index = self._interp.get_output_details()[0]["index"]
            sig = inp.get("shape_signature", inp["shape"])
            self.input_shape = tuple(int(s) for s in inp["shape"][1:])
            self.batch_size = None if int(sig[0]) == -1 else int(inp["shape"][0])
            self._resized_to = int(inp["shape"][0])
        else:
            # lazy: optional: onnxruntime, only for .onnx encoders
            import onnxruntime as ort

            inspect_encoder(
                self.path, "onnx", input_shape=input_shape, data_files=data_files, label=self.label
            )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
            self._sess = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
            inputs = self._sess.get_inputs()
            if len(inputs) != 1 or not self._sess.get_outputs():
                raise ValueError(f"{len(inputs)} inputs (want 1) or no output")
            inp = inputs[0]
            self._in_name = inp.name
            dims = inp.shape
            if len(dims) != 4:
                raise ValueError(f"input of rank {len(dims)}, want 4 (N, C, H, W)")
            self.batch_size = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
            self.input_shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims[1:])

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        try:
            if self._q_in is not None:
                scale, zero_point, dtype = self._q_in
                info = np.iinfo(dtype)
                q = np.round(x.astype(np.float64) / scale) + zero_point  # as export/quantize.py
                x = np.clip(q, info.min, info.max).astype(dtype)
            out = self._invoke(x)
            if self._q_out is not None:
                scale, zero_point, _ = self._q_out
                out = (np.asarray(out, np.float64) - zero_point) * scale
            return np.asarray(out, dtype=np.float32).reshape(len(x), -1)
        except Exception as e:  # the interpreter's own errors on a damaged file
            raise BundleError(
                f"encoder file {self.label} failed to run in {_RUNTIMES[self.format]}: "
                f"{type(e).__name__}: {_one_line(e)}"
            ) from e

    def _invoke(self, x: np.ndarray):
        if self.format == "onnx":
            return self._sess.run(None, {self._in_name: x})[0]
        if self.batch_size is None and len(x) != self._resized_to:
            self._interp.resize_tensor_input(self._in_index, [len(x), *self.input_shape])
            self._interp.allocate_tensors()
            self._resized_to = len(x)
        self._interp.set_tensor(self._in_index, x)
        self._interp.invoke()
        return self._interp.get_tensor(self._out_index)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Features of ``x`` (N, C, H, W) float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or (-1 not in self.input_shape and x.shape[1:] != self.input_shape):
            raise DataError(
                f"encoder {self.path.name} takes inputs of shape (N, {self.input_shape}), got "
                f"{x.shape}"
            )
        fb = self.batch_size
        if fb is None or len(x) == fb:
            out = self._run_chunk(x)
        else:
            parts = []
            for start in range(0, len(x), fb):
                chunk = x[start : start + fb]
                m = len(chunk)
                if m < fb:
                    chunk = np.concatenate([chunk, np.zeros((fb - m, *x.shape[1:]), np.float32)])
                parts.append(self._run_chunk(chunk)[:m])
            out = np.concatenate(parts)
        if out.shape[1] != self.feature_dim:
            raise BundleError(
                f"encoder {self.path.name} returned {out.shape[1]} features; the manifest says "
                f"{self.feature_dim}"
            )
        return out


def inspect_encoder(
    path: str | os.PathLike,
    fmt: str,
    *,
    input_shape: tuple[int, int, int] | None = None,
    data_files: Collection[str] = (),
    label: str | None = None,
) -> tuple:
    """Check the encoder file ``path`` before any interpreter allocates or runs anything (module
    docstring) and return its input's [C, H, W] (-1: not fixed). ``input_shape`` (the
    manifest's) must be the file's own; ONNX external data may come only from the files named
    in ``data_files`` (plain names in the file's folder). :class:`.errors.BundleError` naming
    the file (``label``, default its path) otherwise."""
    path = Path(path)
    label = str(path) if label is None else label
    if fmt == "onnx":
        shape = _inspect_onnx(path, data_files, label)
    elif fmt == "tflite":
        try:
            interp = _tflite_interpreter(path, 1)
        except ImportError as e:
            raise BundleError(f"no interpreter for encoder {label}: install {_INSTALL[fmt]}") from e
        except Exception as e:  # the interpreter's own errors on a damaged file
            raise BundleError(
                f"encoder file {label} could not be loaded by {_RUNTIMES[fmt]}: "
                f"{type(e).__name__}: {_one_line(e)}"
            ) from e
        shape = _inspect_tflite(interp, label)
    else:
        raise BundleError(f"unknown encoder format {fmt!r}; known: tflite, onnx")
    _check_input_shape(shape, input_shape, label)
    return shape


def _check_input_shape(shape: tuple, input_shape, label: str) -> None:
    """The file's input [C, H, W] must be the manifest's ``input_shape`` (a dimension the file
    leaves variable takes the manifest's, up to :data:`MAX_VARIABLE_INPUT` values an image)."""
    if input_shape is None:
        return
    want = [int(d) for d in input_shape]
    if len(shape) != len(want) or any(s not in (-1, w) for s, w in zip(shape, want, strict=True)):
        raise BundleError(
            f"encoder file {label} takes inputs of shape [C, H, W] = {list(shape)} (-1: not "
            f"fixed); the manifest's input.shape is {want}. The manifest does not describe "
            "this encoder; copy the bundle again or re-bundle it"
        )
    if -1 in shape and math.prod(want) > MAX_VARIABLE_INPUT:
        raise BundleError(
            f"encoder file {label} takes inputs of a variable size and the manifest's "
            f"input.shape {want} has {math.prod(want)} values an image, more than the "
            f"{MAX_VARIABLE_INPUT} this runtime accepts for such an encoder"
        )


def _inspect_onnx(path: Path, data_files: Collection[str], label: str) -> tuple:

    try:
        summary = summarize_onnx(path.read_bytes())
    except OSError as e:
        raise BundleError(f"cannot read encoder file {label}: {e.strerror or e}") from e
    except ValueError as e:
        raise BundleError(f"encoder file {label} is not a valid ONNX model ({e})") from e
    unknown = _refused_onnx(summary.ops)
    if unknown:
        raise BundleError(
            f"encoder file {label} uses operators an entropi export never writes: "
            f"{', '.join(repr(o) for o in unknown[:8])}; refused"
        )
    if summary.functions or summary.subgraphs:
        raise BundleError(
            f"encoder file {label} has {summary.functions} local functions and "
            f"{summary.subgraphs} sub-graphs; an entropi export has none; refused"
        )
    foreign = sorted(summary.external - set(data_files))
    if foreign:
        raise BundleError(
            f"encoder file {label} reads external data from "
            f"{', '.join(repr(f) for f in foreign[:8])}, not a file listed and hashed in the "
            "bundle's manifest; refused"
        )
    if len(summary.inputs) != 1 or len(summary.inputs[0][1]) != 4:
        raise BundleError(
            f"encoder file {label} has inputs {[list(d) for _, d in summary.inputs][:4]}; an "
            "encoder takes one input of rank 4 (N, C, H, W)"
        )
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in summary.inputs[0][1][1:])


def refused_ops(model: bytes, fmt: str) -> list[str]:
    """The operators of the encoder file ``model`` (its bytes; ``fmt`` "onnx" or "tflite")
    that :func:`inspect_encoder` refuses (ONNX: ``domain::op`` outside the default domain):
    what an exporter checks so that it never writes a file the device will not load."""
    if fmt == "onnx":
        return _refused_onnx(summarize_onnx(model).ops)
    # lazy: optional: LiteRT, only for .tflite encoders
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    return sorted({d["op_name"] for d in interp._get_ops_details()} - TFLITE_OPS)


def _refused_onnx(ops: set[tuple[str, str]]) -> list[str]:
    ops = {("" if d == "ai.onnx" else d, o) for d, o in ops}
    return sorted(f"{d}::{o}" if d else o for d, o in ops - ONNX_OPS)


def _tflite_interpreter(path: Path, num_threads: int):
    # lazy: optional: LiteRT, only for .tflite encoders
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=num_threads)


def _inspect_tflite(interp, label: str) -> tuple:
    """Operators and input of a TFLite interpreter whose tensors are not allocated yet."""
    try:
        ops = {d["op_name"] for d in interp._get_ops_details()}
        inputs, outputs = interp.get_input_details(), interp.get_output_details()
    except Exception as e:  # the interpreter's own errors on a damaged file
        raise BundleError(
            f"encoder file {label} could not be read by {_RUNTIMES['tflite']}: "
            f"{type(e).__name__}: {_one_line(e)}"
        ) from e
    unknown = sorted(ops - TFLITE_OPS)
    if unknown:
        raise BundleError(
            f"encoder file {label} uses operators an entropi export never writes: "
            f"{', '.join(repr(o) for o in unknown[:8])}; refused"
        )
    if len(inputs) != 1 or len(outputs) < 1 or len(inputs[0]["shape"]) != 4:
        raise BundleError(
            f"encoder file {label} has {len(inputs)} inputs and {len(outputs)} outputs; an "
            "encoder takes one input of rank 4 (N, C, H, W) and returns features"
        )
    inp = inputs[0]
    sig = inp.get("shape_signature", inp["shape"])
    dims = zip(inp["shape"][1:], sig[1:], strict=True)
    return tuple(int(d) if int(s) > 0 else -1 for d, s in dims)
