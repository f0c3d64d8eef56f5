"""Feature extraction on the device: a bundle's encoder run by the LiteRT interpreter and by
onnxruntime over 256 uint8 CIFAR-sized images (batch 64, one thread), as `entropi-device train`
does before training the head.

Each benchmark asserts that the features match the PyTorch encoder (tolerance
``1e-5 + 1e-4 * max|ref|``, as in entropi.export).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entropi.benchmarks.synthetic_models import fake_rung_meta, synthetic_encoder
from entropi.device import load_bundle, write_bundle
from entropi.device.features import extract_features
from entropi.export import DEFAULT_ATOL, DEFAULT_RTOL, export_encoder
from entropi.export.verify import compare_arrays, torch_features

N_IMAGES = 256


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    encoder = synthetic_encoder("smallnet", alpha=0.1)
    meta = fake_rung_meta(encoder, "smallnet")
    out = tmp_path_factory.mktemp("bench_device_features")
    export_encoder(encoder, meta, out / "export", compact=True)
    bundles = {}
    for fmt in ("tflite", "onnx"):
        bundles[fmt] = write_bundle(
            out / f"bundle_{fmt}",
            encoder_files={f"encoder_compact.{fmt}": out / "export" / f"encoder_compact.{fmt}"},
            input_shape=list(meta.input_shape),
            normalization=meta.normalization,
            feature_dim=encoder.feature_dim,
        )
    images = np.random.default_rng(0).integers(0, 256, (N_IMAGES, 32, 32, 3), dtype=np.uint8)
    norm = meta.normalization
    x = (images.astype(np.float32) / 255 - np.float32(norm["mean"])) / np.float32(norm["std"])
    reference = torch_features(encoder, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    torch.set_num_threads(threads)
    return bundles, images, reference


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_device_feature_extraction(benchmark, setup, fmt):
    bundles, images, reference = setup
    b = load_bundle(bundles[fmt], prefer=(fmt,))
    runner = b.encoder(num_threads=1)

    def run():
        return extract_features(
            runner,
            images,
            None,
            input_shape=b.input_shape,
            mean=b.mean,
            std=b.std,
            feature_dim=b.feature_dim,
            batch_size=64,
        )[0]

    feats = benchmark(run)
    compare_arrays(
        np.asarray(feats),
        reference,
        atol=DEFAULT_ATOL,
        rtol=DEFAULT_RTOL,
        what=f"device features ({fmt})",
    )
    benchmark.extra_info["images_per_call"] = N_IMAGES
