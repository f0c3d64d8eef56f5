"""int8 against float32 on the device: one-image inference of the compact encoder, batch 1, one
thread, in the device's own :class:`~entropi.device.encoder.EncoderRunner` (it quantizes the
input and dequantizes the output of an int8 file with the manifest's scale and zero point).

The encoder is a seeded random smallnet pruned to alpha = 0.1 (``tests/synthetic.py``), exported
compact in float32 and full-integer int8 (litert-torch PT2E, calibrated on 32 random images).
Each benchmark asserts what it times is right: the float32 file matches the PyTorch encoder
within the exporter's tolerance (``1e-5 + 1e-4 * max|ref|``), the int8 file's features keep a
mean cosine >= 0.99 to PyTorch's. Read the int8 / float32 ratio of the two rows of one run.
``python scripts/int8_deploy.py`` is the full experiment (the quickstart's selected rung,
ResNet18, peak RSS, the device head's accuracy).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entropi.benchmarks.synthetic_models import fake_rung_meta, synthetic_encoder
from entropi.device.encoder import EncoderRunner
from entropi.export import DEFAULT_ATOL, DEFAULT_RTOL, export_encoder
from entropi.export.verify import compare_arrays, torch_features

DTYPES = ["float32", "int8"]
FILES = {"float32": "encoder_compact.tflite", "int8": "encoder_compact_int8.tflite"}


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    encoder = synthetic_encoder("smallnet", alpha=0.1, seed=0)
    out = tmp_path_factory.mktemp("bench_int8") / "export"
    info = export_encoder(
        encoder,
        fake_rung_meta(encoder, "smallnet"),
        out,
        formats=["tflite"],
        compact=True,
        quantize="int8",
        calibration_images=_pixels(32, 0),
    )
    torch.set_num_threads(threads)
    return encoder, out, info


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_encoder_inference(benchmark, exported, dtype):
    encoder, out, info = exported
    meta = info["files"][FILES[dtype]]
    runner = EncoderRunner(
        out / FILES[dtype],
        "tflite",
        info["provenance"]["feature_dim"],
        num_threads=1,
        quantization=meta.get("quantization") if dtype == "int8" else None,
    )
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    feats = benchmark(runner, x)
    ref = torch_features(encoder, x)
    if dtype == "float32":
        compare_arrays(feats, ref, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
    else:
        cos = float((feats * ref).sum() / (np.linalg.norm(feats) * np.linalg.norm(ref)))
        assert cos >= 0.99, cos
    benchmark.extra_info["file_bytes"] = int(meta["bytes"])
