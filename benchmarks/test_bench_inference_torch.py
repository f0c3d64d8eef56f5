"""Encoder inference in PyTorch (eval mode, inference_mode): batch 1 and 32, one thread."""

from __future__ import annotations

import pytest
import torch

from entropi.host.ladder.models import build_encoder


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("arch", ["smallnet", "resnet18", "mobilenetv3_small"])
def test_encoder_inference_torch(benchmark, arch, batch):
    encoder = build_encoder(arch).eval()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def infer() -> torch.Tensor:
        with torch.inference_mode():
            return encoder(x)

    out = benchmark(infer)
    assert out.shape == (batch, encoder.feature_dim)
    assert torch.isfinite(out).all()
    # eval mode is per-sample: the first row does not depend on the rest of the batch
    # (tolerance: float32 kernels may block the batch differently)
    with torch.inference_mode():
        single = encoder(x[:1])
    torch.testing.assert_close(out[:1], single, rtol=1e-4, atol=1e-5)
    if benchmark.stats:
        benchmark.extra_info["images_per_second"] = batch / benchmark.stats.stats.median
