"""Compact form: removing dead channels is exactly equivalent (PyTorch and onnxruntime) and
shrinks the network; constant channels, padding, residual ties and SE blocks are respected.

Tolerance: ``max|compact - sparse| <= 1e-5 + 1e-4 * max|sparse|`` (entropi.export.DEFAULT_*);
removal is exact in real arithmetic, the only differences are float32 summation order and
constants folded into biases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from entropi.export import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    UnsupportedModuleError,
    compact_encoder,
    compare_onnx_torch,
    export_onnx,
    fold_batchnorm,
)
from entropi.export.synthetic import kill_channels_, magnitude_prune_, randomize_batchnorm_
from entropi.export.verify import compare_arrays, torch_features
from entropi.host.models import build_encoder

ARCHS = ["smallnet", "resnet18", "mobilenetv3_small"]
TOL = {"atol": DEFAULT_ATOL, "rtol": DEFAULT_RTOL}
X = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dead_channel_encoder(arch: str, alpha: float, kill: float) -> nn.Module:
    """Random encoder with ``kill`` of every layer's output channels zeroed, pruned to alpha."""
    torch.manual_seed(0)
    encoder = randomize_batchnorm_(build_encoder(arch))
    kill_channels_(encoder, kill, seed=0)
    if alpha < 1:
        magnitude_prune_(encoder, alpha)
    return encoder.eval()


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def compacted():
    out = {}
    for arch in ARCHS:
        for alpha in (1.0, 0.1):
            enc = dead_channel_encoder(arch, alpha, kill=0.5)
            folded = fold_batchnorm(enc)
            out[arch, alpha] = (enc, folded, *compact_encoder(folded, torch.zeros(1, 3, 32, 32)))
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.1])
@pytest.mark.parametrize("arch", ARCHS)
def test_compact_equals_sparse_and_is_smaller(compacted, arch, alpha):
    encoder, folded, small, report = compacted[arch, alpha]
    compare_arrays(torch_features(small, X), torch_features(encoder, X), **TOL)
    assert params(small) == report.params_after < report.params_before == params(folded)
    assert report.channels_after < report.channels_before


@pytest.mark.parametrize("arch", ARCHS)
def test_compact_onnx_matches_sparse_encoder(compacted, arch):
    encoder, _, small, _ = compacted[arch, 0.1]
    data, _ = export_onnx(small, torch.zeros(1, 3, 32, 32), sparse=False, metadata={})
    compare_onnx_torch(data, encoder, X, **TOL)


def test_output_width_is_kept(compacted):
    encoder, _, small, _ = compacted["resnet18", 0.1]
    assert torch_features(small, X).shape == (3, 512)


class _Tiny(nn.Module):
    """conv-BN-ReLU (4 channels) -> conv (3x3 padded or 1x1) -> global pool."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 2, kernel, padding=kernel // 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()

    def forward(self, x):
        return self.flat(self.pool(self.conv2(self.act(self.bn1(self.conv1(x))))))


def _tiny(kernel: int) -> nn.Module:
    torch.manual_seed(0)
    net = _Tiny(kernel).eval()
    with torch.no_grad():
        net.conv1.weight[:3] = 0  # channels 0, 1, 2 dead: each outputs its BN shift
        net.bn1.bias.copy_(torch.tensor([0.7, -0.5, 0.7, 0.0]))  # relu -> 0.7, 0, 0.7, live
        net.conv2.weight[:, 2] = 0  # nothing reads channel 2
    return net


def test_constant_channel_through_zero_padding_is_kept():
    net = _tiny(kernel=3)
    small, report = compact_encoder(fold_batchnorm(net), torch.zeros(1, 3, 8, 8))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    compare_arrays(torch_features(small, x), torch_features(net, x), **TOL)
    # channel 0 (relu(0.7) = 0.7 read through padding) stays; 1 (zero) and 2 (unread) go
    assert small.conv1.out_channels == 2 and report.constant_channels_kept == 1


def test_constant_channel_without_padding_moves_into_the_bias():
    net = _tiny(kernel=1)
    small, _ = compact_encoder(fold_batchnorm(net), torch.zeros(1, 3, 8, 8))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    compare_arrays(torch_features(small, x), torch_features(net, x), **TOL)
    assert small.conv1.out_channels == 1


class _SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Conv2d(4, 4, 1)
        self.proj = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = F.relu(self.conv(x))
        s = F.hardsigmoid(self.fc(F.adaptive_avg_pool2d(h, 1)))
        return torch.flatten(F.adaptive_avg_pool2d(self.proj(h * s), 1), 1)


def test_squeeze_excite_gate_of_a_dead_row_is_one_half_not_zero():
    torch.manual_seed(0)
    net = _SqueezeExcite().eval()
    with torch.no_grad():
        net.fc.weight[1] = 0
        net.fc.bias[1] = 0  # gate 1 = hardsigmoid(0) = 0.5: channel 1 still passes
        net.conv.weight[2] = 0
        net.conv.bias[2] = -1.0  # relu(-1) = 0: channel 2 is zero whatever its gate
    small, _ = compact_encoder(fold_batchnorm(net), torch.zeros(1, 3, 8, 8))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    compare_arrays(torch_features(small, x), torch_features(net, x), **TOL)
    assert small.conv.out_channels == 3


class _WithGelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.conv(x)).mean((2, 3))


def test_unsupported_module_is_named():
    with pytest.raises(UnsupportedModuleError, match=r"'act' \(GELU\)"):
        compact_encoder(fold_batchnorm(_WithGelu().eval()), torch.zeros(1, 3, 8, 8))
