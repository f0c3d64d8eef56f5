"""Compact form: removing dead and fixed channels is exactly equivalent (PyTorch, onnxruntime,
LiteRT) and shrinks the network; constants read through zero padding become bias maps, depthwise
borders, residual ties and SE blocks are respected, and the input size is enforced.

Tolerance: ``max|compact - sparse| <= 1e-5 + 1e-4 * max|sparse|`` (entropi.export.DEFAULT_*);
removal is exact in real arithmetic (contributions of removed channels are computed in float64),
the only differences are float32 summation order and constants folded into biases and maps
(measured: ~1e-7 of the output scale).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import arch_params, synthetic_encoder
from torch import nn
from torch.nn import functional as F

from entropi.export import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    UnsupportedModuleError,
    compact_encoder,
    compare_onnx_torch,
    compare_tflite_torch,
    convert_tflite,
    export_onnx,
    fold_batchnorm,
)
from entropi.export.compact import ConvWithBiasMap, InputShapeError, _round_up
from entropi.export.verify import compare_arrays, torch_features

ARCHS = ["smallnet", "resnet18", "mobilenetv3_small", "resnet18_imagenet"]
TOL = {"atol": DEFAULT_ATOL, "rtol": DEFAULT_RTOL}
X = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
X8 = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dead_channel_encoder(arch: str, alpha: float, kill: float, positive: bool) -> nn.Module:
    """Random encoder with ``kill`` of every layer's output channels zeroed, pruned to alpha.

    With ``positive`` every batch-norm shift is > 0, so each dead channel outputs a positive
    constant after ReLU / hardswish (the case that zero-padded convs cannot simply drop).
    """
    return synthetic_encoder(arch, alpha=alpha, kill=kill, positive_shifts=positive)


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


CASES = [(arch, alpha, pos) for arch in ARCHS for alpha, pos in ((1.0, False), (0.1, True))]


@pytest.fixture(scope="module")
def compacted():
    out = {}
    for arch, alpha, positive in CASES:
        enc = dead_channel_encoder(arch, alpha, kill=0.5, positive=positive)
        folded = fold_batchnorm(enc)
        out[arch, alpha] = (enc, folded, *compact_encoder(folded, torch.zeros(1, 3, 32, 32)))
    return out


@pytest.mark.parametrize(("arch", "alpha", "positive"), CASES)
def test_compact_equals_sparse_and_is_smaller(compacted, arch, alpha, positive):
    encoder, folded, small, report = compacted[arch, alpha]
    compare_arrays(torch_features(small, X), torch_features(encoder, X), **TOL)
    assert params(small) == report.params_after < report.params_before == params(folded)
    assert report.channels_after < report.channels_before
    assert report.fixed_channels_removed > 0 and report.input_shape == [3, 32, 32]


def test_positive_constants_read_through_padding_become_bias_maps(compacted):
    *_, small, report = compacted["resnet18", 0.1]
    maps = [m for m in small.modules() if isinstance(m, ConvWithBiasMap)]
    assert len(maps) == report.bias_maps > 0
    assert sum(m.bias_map.numel() for m in maps) == report.bias_map_floats
    for m in maps:  # zero in the interior: only the zero-padded border differs
        assert (m.bias_map[..., 1:-1, 1:-1] == 0).all() and (m.bias_map != 0).any()


@pytest.mark.parametrize("arch", arch_params(ARCHS))
def test_compact_onnx_matches_sparse_encoder(compacted, arch):
    encoder, _, small, _ = compacted[arch, 0.1]
    data, _ = export_onnx(small, torch.zeros(1, 3, 32, 32), sparse=False, metadata={})
    compare_onnx_torch(data, encoder, X, **TOL)


def test_output_width_is_kept(compacted):
    encoder, _, small, _ = compacted["resnet18", 0.1]
    assert torch_features(small, X).shape == (3, 512)


def test_other_input_size_is_rejected(compacted):
    *_, small, _ = compacted["smallnet", 0.1]
    with pytest.raises(InputShapeError, match=r"only accepts inputs of shape N x 3 x 32 x 32"):
        small(torch.zeros(2, 3, 64, 64))
    assert small(torch.zeros(5, 3, 32, 32)).shape == (5, 256)  # any batch size


class _Tiny(nn.Module):
    """conv-BN-ReLU (4 channels) -> conv (k x k, zero padding k // 2) -> global pool."""

    def __init__(self, kernel: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        pad = dilation * (kernel // 2)
        self.conv2 = nn.Conv2d(4, 2, kernel, stride, pad, dilation)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()

    def forward(self, x):
        return self.flat(self.pool(self.conv2(self.act(self.bn1(self.conv1(x))))))


def _tiny(kernel: int, **kw) -> nn.Module:
    torch.manual_seed(0)
    net = _Tiny(kernel, **kw).eval()
    with torch.no_grad():
        net.conv1.weight[:3] = 0  # channels 0, 1, 2 dead: each outputs its BN shift
        net.bn1.bias.copy_(torch.tensor([0.7, -0.5, 0.7, 0.0]))  # relu -> 0.7, 0, 0.7, live
        net.conv2.weight[:, 2] = 0  # nothing reads channel 2
    return net


def test_constant_channel_through_zero_padding_becomes_an_exact_bias_map():
    net = _tiny(kernel=3)
    small, report = compact_encoder(fold_batchnorm(net), torch.zeros(1, 3, 8, 8))
    compare_arrays(torch_features(small, X8), torch_features(net, X8), **TOL)
    assert small.conv1.out_channels == 1 and report.bias_maps == 1
    assert report.fixed_channels_removed == 1 and report.constant_channels_kept == 0
    # hand count: channel 0 is 0.7 everywhere; at the corner (0, 0) only the taps [1:, 1:] of
    # the 3x3 kernel land inside the image, in the interior all nine do
    w = net.conv2.weight.detach().double()[:, 0]
    added = small.conv2.conv.bias.detach().double() - net.conv2.bias.detach().double()
    corner = added + small.conv2.bias_map[0, :, 0, 0].double()
    torch.testing.assert_close(corner, 0.7 * w[:, 1:, 1:].sum((1, 2)), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(added, 0.7 * w.sum((1, 2)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("kernel", "stride", "dilation"), [(1, 1, 1), (3, 2, 1), (3, 1, 2)])
def test_constant_channel_with_stride_dilation_or_1x1(kernel, stride, dilation):
    net = _tiny(kernel=kernel, stride=stride, dilation=dilation)
    small, report = compact_encoder(fold_batchnorm(net), torch.zeros(1, 3, 8, 8))
    compare_arrays(torch_features(small, X8), torch_features(net, X8), **TOL)
    assert small.conv1.out_channels == 1
    assert report.bias_maps == (0 if kernel == 1 else 1)  # a 1x1 conv: the bias alone


class _Depthwise(nn.Module):
    """conv-ReLU -> depthwise 3x3 (zero padding) -> hardswish -> 1x1 conv -> pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = F.hardswish(self.dw(F.relu(self.conv(x))))
        return torch.flatten(F.adaptive_avg_pool2d(self.pw(h), 1), 1)


def test_depthwise_of_a_constant_is_not_constant_at_the_borders():
    torch.manual_seed(0)
    net = _Depthwise().eval()
    with torch.no_grad():
        net.conv.weight[1] = 0
        net.conv.bias[1] = 0.9  # channel 1 = 0.9; after the padded depthwise: a border map
    small, report = compact_encoder(fold_batchnorm(net), torch.zeros(1, 3, 8, 8))
    compare_arrays(torch_features(small, X8), torch_features(net, X8), **TOL)
    assert small.conv.out_channels == 3 and small.dw.out_channels == 3
    assert isinstance(small.pw, ConvWithBiasMap) and report.bias_maps == 1


class _Residual(nn.Module):
    """stem -> relu(stem + conv-branch) -> 3x3 conv -> pool; channels tied by the ``+``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        s = F.relu(self.stem(x))
        y = F.relu(s + self.branch(s))
        return torch.flatten(F.adaptive_avg_pool2d(self.head(y), 1), 1)


def test_residual_constant_on_one_branch_is_kept_on_both_removed():
    torch.manual_seed(0)
    net = _Residual().eval()
    with torch.no_grad():
        for conv in (net.stem, net.branch):
            conv.weight[:2] = 0  # channels 0, 1 dead on the stem; on the branch too
            conv.bias[:2] = 0.5
        net.branch.weight[0, 2] = 0.3  # branch channel 0 reads live channel 2: not constant
    small, report = compact_encoder(fold_batchnorm(net), torch.zeros(1, 3, 8, 8))
    compare_arrays(torch_features(small, X8), torch_features(net, X8), **TOL)
    # channel 1 is constant on both sides of the +: removed; channel 0 is not: kept
    assert small.stem.out_channels == 3 and small.branch.out_channels == 3
    assert report.constant_channels_kept == 1  # stem channel 0 (0.5) is read by the branch


def test_compact_tflite_with_bias_maps_matches_sparse_encoder():
    net = _tiny(kernel=3)
    small, _ = compact_encoder(fold_batchnorm(net), torch.zeros(1, 3, 8, 8))
    compare_tflite_torch(convert_tflite(small, torch.zeros(1, 3, 8, 8)), net, X8, **TOL)
    data, _ = export_onnx(small, torch.zeros(1, 3, 8, 8), sparse=False, metadata={})
    compare_onnx_torch(data, net, X8, **TOL)


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
    compare_arrays(torch_features(small, X8), torch_features(net, X8), **TOL)
    assert small.conv.out_channels == 3


def test_widths_round_up_to_multiples_of_16_when_cheap():
    kept = {name: np.zeros(total, dtype=bool) for name, total in (("a", 64), ("b", 64), ("c", 62))}
    for name, k in (("a", 15), ("b", 3), ("c", 60)):
        kept[name][:k] = True
    added = _round_up(kept, ["a", "b", "c"], multiple=16, max_fraction=0.25)
    assert [int(kept[n].sum()) for n in "abc"] == [16, 3, 62]  # b: 13 more is too many
    assert added == 1 + 2


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
