"""Run an encoder file (TFLite via the LiteRT interpreter, or ONNX via onnxruntime) on batches.

Input: float32 NCHW, already normalized; output: (N, feature_dim) float32. A file exported with
a fixed batch size is run in chunks of that size, the last chunk zero-padded (the padded rows'
outputs are dropped). Interpreters are imported lazily, so this module imports with numpy alone.

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
    ) -> None:
        self.path, self.format, self.feature_dim = Path(path), fmt, int(feature_dim)
        self.label = str(self.path) if label is None else label
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
            out = self._invoke(x)
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
