"""Exported-encoder inference: onnxruntime and LiteRT, batch 1, one thread, for the same pruned
MobileNetV3-small (alpha = 0.01, half the channels dead) stored dense, sparse, compact (dead
channels removed, the rest sparse) and compact-dense (dead channels removed, stored dense).

Each benchmark asserts that the runtime's output matches the PyTorch encoder (tolerance
``1e-5 + 1e-4 * max|ref|``, as in entropi.export). ``python scripts/export_bench.py``
is the full experiment (sizes vs floor, RSS, ResNet18 too).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entropi.benchmarks.synthetic_models import fake_rung_meta, synthetic_encoder
from entropi.export import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    convert_tflite,
    export_encoder,
    export_onnx,
    fold_batchnorm,
    sparsify_tflite,
)
from entropi.export.formats import ENCODER_FORMS
from entropi.export.verify import compare_arrays, torch_features

FORMS = ["dense", "sparse", "compact", "compact-dense"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    encoder = synthetic_encoder("mobilenetv3_small", alpha=0.01, kill=0.5)
    out = tmp_path_factory.mktemp("bench_export")
    meta = fake_rung_meta(encoder, "mobilenetv3_small")
    export_encoder(encoder, meta, out, forms=("sparse", "compact", "compact-dense"))
    folded, example = fold_batchnorm(encoder), torch.zeros(1, 3, 32, 32)
    (out / "dense.onnx").write_bytes(export_onnx(folded, example, sparse=False, metadata={})[0])
    dense_tflite = sparsify_tflite(convert_tflite(folded, example), sparse=False)[0]
    (out / "dense.tflite").write_bytes(dense_tflite)
    torch.set_num_threads(threads)
    names = {"dense": "dense", **{f.name: f.stem for f in ENCODER_FORMS.values()}}
    return encoder, {form: out / names[form] for form in FORMS}


def _x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("form", FORMS)
def test_onnxruntime_inference(benchmark, files, form):
    import onnxruntime as ort

    encoder, paths = files
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(
        str(paths[form].with_suffix(".onnx")), opts, providers=["CPUExecutionProvider"]
    )
    x = _x()
    out = benchmark(lambda: sess.run(None, {"input": x})[0])
    compare_arrays(out, torch_features(encoder, x), atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)


@pytest.mark.parametrize("form", FORMS)
def test_litert_inference(benchmark, files, form):
    from ai_edge_litert.interpreter import Interpreter

    encoder, paths = files
    interp = Interpreter(model_path=str(paths[form].with_suffix(".tflite")), num_threads=1)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    x = _x()

    def infer() -> np.ndarray:
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(outp).copy()

    out = benchmark(infer)
    compare_arrays(out, torch_features(encoder, x), atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
