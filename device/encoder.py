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
as the interpreter's own exception.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import BundleError, DataError

__all__ = ["EncoderRunner"]

_RUNTIMES = {"tflite": "the LiteRT interpreter", "onnx": "onnxruntime"}
_INSTALL = {
    "tflite": "ai-edge-litert (extra 'entropi[litert]')",
    "onnx": "onnxruntime ('entropi[ort]')",
}


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EncoderRunner:
    """One loaded encoder file; ``runner(x)`` returns features.

    ``label`` names the file in error messages (default: its path).
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
    ) -> None:
        self.path, self.format, self.feature_dim = Path(path), fmt, int(feature_dim)
        self.label = str(self.path) if label is None else label
        self.quantization = quantization
        self._q_in = self._q_out = None  # (scale, zero_point, dtype) of an integer tensor
        if fmt not in _RUNTIMES:
            raise BundleError(f"unknown encoder format {fmt!r}; known: tflite, onnx")
        try:
            self._open(num_threads)
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

    def _open(self, num_threads: int) -> None:
        if self.format == "tflite":
            from ai_edge_litert.interpreter import Interpreter

            self._interp = Interpreter(model_path=str(self.path), num_threads=num_threads)
            self._interp.allocate_tensors()
            inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
            if len(inputs) != 1 or len(outputs) < 1:
                raise ValueError(f"{len(inputs)} inputs and {len(outputs)} outputs (want 1 and 1)")
            inp = inputs[0]
            self._in_index = inp["index"]
            self._out_index = outputs[0]["index"]
            sig = inp.get("shape_signature", inp["shape"])
            if len(inp["shape"]) != 4:
                raise ValueError(f"input of rank {len(inp['shape'])}, want 4 (N, C, H, W)")
            self.input_shape = tuple(int(s) for s in inp["shape"][1:])
            self.batch_size = None if int(sig[0]) == -1 else int(inp["shape"][0])
            self._resized_to = int(inp["shape"][0])
        else:
            import onnxruntime as ort

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
