"""FLOP counts: analytic counter vs torch's FlopCounterMode, and hand counts for sparse weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from entropi.host.analysis.flops import count_step_flops, flop_counter_step_flops
from entropi.host.ladder.models import Classifier, build_model

ARCHS = ["smallnet", "resnet18", "mobilenetv3_small"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {arch: build_model(arch, 5) for arch in ARCHS}


@pytest.mark.parametrize("mode", ["full", "head"])
@pytest.mark.parametrize("arch", ARCHS)
def test_step_flops_match_flop_counter_mode(models, arch, mode):
    # Tolerance 1% (the spec); the conv/linear rules are the same formulas, so it is exact.
    report = count_step_flops(models[arch], mode, 2)
    reference = flop_counter_step_flops(models[arch], mode, 2)
    assert report.step(matmul=True) == pytest.approx(reference, rel=0.01)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_flops_match_unmodified_flop_counter_mode(models, arch):
    model = models[arch].eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
    report = count_step_flops(model, "full", 3)
    assert report.forward(matmul=True) == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_torch_counter_overcounts_depthwise_weight_grad_by_groups(models):
    # torch 2.13's convolution_backward formula ignores groups in the weight-gradient term; the
    # whole difference to our count is (groups - 1) x each grouped conv's weight-gradient FLOPs.
    model = models["mobilenetv3_small"]
    report = count_step_flops(model, "full", 2)
    groups = {name: m.groups for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    excess = sum((groups[o.name] - 1) * o.grad_weight for o in report.ops if o.op == "conv2d")
    raw = flop_counter_step_flops(model, "full", 2, fix_grouped_weight_grad=False)
    assert excess > 0
    assert raw == report.step(matmul=True) + excess


def _tiny_sparse_model() -> Classifier:
    encoder = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    model = Classifier(encoder, 3, 2)
    with torch.no_grad():
        conv = encoder[0].weight  # 3 x 2 x 3 x 3 = 54 weights; keep 27
        conv.copy_(torch.arange(1, 55, dtype=torch.float32).view_as(conv))
        conv.view(-1)[::2] = 0.0
        model.head.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]))  # 3 of 6
    return model


def test_effective_sparse_flops_equal_hand_count():
    model = _tiny_sparse_model()
    report = count_step_flops(model, "full", 2, input_shape=(2, 4, 4))
    # conv: N=2, C_out=3, 4x4 outputs, C_in=2, 3x3 -> 1728 MACs, 3456 FLOPs; first layer: no
    # input gradient; weight gradient 3456. Head: 2 * N * 3 * 2 = 24 forward, input grad, weight
    # grad each.
    assert report.forward(matmul=True) == 3456 + 24
    assert report.backward(matmul=True) == 3456 + 24 + 24
    # half of each layer's weights are zero: every conv/linear term halves
    assert report.forward(sparse=True, matmul=True) == 1728 + 12
    assert report.backward(sparse=True, matmul=True) == 1728 + 12 + 12
    assert report.step(sparse=True, matmul=True) == 3492
    # elementwise: ReLU on 2*3*16 = 96 outputs (1 + 1), pooling of 96 inputs (1 + 1), head bias
    # on 4 logits (1 + 1)
    assert report.step(matmul=False) == 96 + 96 + 96 + 96 + 4 + 4
    assert report.step(sparse=True, matmul=False) == report.step(matmul=False)
    assert report.trained_nonzero == 27 + 3 + 2  # plus the two (non-zero) head biases


def test_head_only_step_is_paper_head_count():
    # The paper's 0.16 MFLOPs = 2 x 32 x 512 x 5: one weight-gradient GEMM of the head.
    model = build_model("resnet18", 5)
    report = count_step_flops(model, "head", 32)
    assert report.backward(matmul=True) == 2 * 32 * 512 * 5 == 163_840
    assert report.forward(matmul=True) == 163_840
    assert report.frozen_forward(matmul=True) > 1e9  # the frozen encoder is reported apart


def test_bad_mode_and_batch():
    model = _tiny_sparse_model()
    with pytest.raises(ValueError, match="mode must be 'head' or 'full', got 'both'"):
        count_step_flops(model, "both", 2)
    with pytest.raises(ValueError, match="batch must be an integer >= 1, got 0"):
        count_step_flops(model, "full", 0)


def test_unknown_op_is_named():
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.GELU())
    with pytest.raises(NotImplementedError, match="no FLOP rule for torch op 'gelu'"):
        count_step_flops(Classifier(encoder, 4, 2), "full", 2, input_shape=(3, 2, 2))


def test_batch_one_is_half_of_batch_two():
    # ImageNet-style ResNet18 at 32x32 ends in 1x1 maps: BN cannot train on one sample, so the
    # counter traces two and halves; every count is per sample.
    from entropi.benchmarks.paper_models import build_paper_model

    model = build_paper_model("resnet18_imagenet", 5)
    one, two = count_step_flops(model, "full", 1), count_step_flops(model, "full", 2)
    assert one.batch == 1
    for matmul in (True, False):
        assert 2 * one.step(matmul=matmul) == two.step(matmul=matmul)
