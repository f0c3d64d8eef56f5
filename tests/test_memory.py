"""Backprop memory accounting vs hand-computed byte counts; saved-tensor deduplication."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from entropi.host.analysis.memory import analytic_step, measure_step, saved_tensor_bytes
from entropi.host.ladder.models import Classifier, build_model


def _mlp() -> Classifier:
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU()), 8, 3)


def _conv_bn() -> Classifier:
    encoder = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Classifier(encoder, 4, 2)


# Linear(12, 8) - ReLU - Linear(8, 3), batch 4, float32, SGD with momentum:
# weights (12*8 + 8 + 8*3 + 3) * 4 = 524 B, gradients 524, momentum 524;
# activations: the first linear saves the batch (excluded, counted as batch), ReLU saves its
# output 4*8*4 = 128 B, which the head also saves (same storage, counted once); cross-entropy
# saves log-softmax 4*3*4 = 48 B and a 4 B total weight -> 180 B;
# batch: 4*12*4 = 192 B of inputs + 4*8 = 32 B of int64 labels.
MLP_SGD = {
    "weights": 524,
    "buffers": 0,
    "gradients": 524,
    "optimizer_state": 524,
    "activations": 180,
    "batch": 224,
    "total": 1976,
}

# Conv(3->4, 3x3, no bias) - BN(4) - ReLU - global pool - Linear(4, 2), batch 4, 3x4x4 inputs:
# weights (108 + 8 + 8 + 2) * 4 = 504 B; buffers: running mean/var 2*4*4 + int64 counter 8 = 40 B;
# activations: BN saves the conv output 4*4*16*4 = 1024 B plus batch mean and inverse std
# 2*4*4 = 32 B; ReLU saves its output 1024 B; global average pooling is a mean (saves nothing);
# the head saves the pooled features 4*4*4 = 64 B; cross-entropy 4*2*4 + 4 = 36 B -> 2180 B;
# batch 4*3*16*4 = 768 B + 32 B labels.
CONV_BN_SGD = {
    "weights": 504,
    "buffers": 40,
    "gradients": 504,
    "optimizer_state": 504,
    "activations": 2180,
    "batch": 800,
    "total": 4532,
}


@pytest.mark.parametrize(
    ("make", "shape", "expected"),
    [(_mlp, (3, 2, 2), MLP_SGD), (_conv_bn, (3, 4, 4), CONV_BN_SGD)],
)
def test_full_step_equals_hand_count(make, shape, expected):
    model = make()
    measured = measure_step(model, "full", 4, input_shape=shape)
    assert measured.breakdown.as_dict() == expected
    assert analytic_step(model, "full", 4, input_shape=shape).as_dict() == expected
    assert measured.cuda_max_allocated is None


def test_adam_state_is_two_buffers_and_a_step_counter():
    model = _mlp()
    measured = measure_step(model, "full", 4, optimizer="adam", input_shape=(3, 2, 2))
    assert measured.breakdown.optimizer_state == 2 * 524 + 4 * 4  # 4 parameter tensors
    analytic = analytic_step(model, "full", 4, optimizer="adam", input_shape=(3, 2, 2))
    assert analytic == measured.breakdown


def test_head_only_step_equals_hand_count():
    # head 512 -> 5 on a batch of 32 features: weights/grads/momentum (512*5 + 5) * 4 = 10260 B
    # each; activations: log-softmax 32*5*4 + 4 = 644 B (the features are the batch);
    # batch 32*512*4 + 32*8 = 65792 B.
    model = build_model("resnet18", 5)
    measured = measure_step(model, "head", 32).breakdown
    assert (measured.weights, measured.gradients, measured.optimizer_state) == (10260,) * 3
    assert (measured.activations, measured.batch, measured.buffers) == (644, 65792, 0)
    assert analytic_step(model, "head", 32) == measured


@pytest.mark.parametrize("arch", ["smallnet", "mobilenetv3_small"])
def test_analytic_equals_measured_on_real_encoders(arch):
    torch.set_num_threads(1)
    model = build_model(arch, 5)
    measured = measure_step(model, "full", 2).breakdown
    assert analytic_step(model, "full", 2) == measured
    # activations dominate at 32x32: far more than the logits
    assert measured.activations > 10 * measured.batch


def test_measure_step_restores_the_model():
    model = _conv_bn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_step(model, "full", 4, input_shape=(3, 4, 4))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_saved_tensors_dedupe_by_storage():
    a = torch.randn(10, requires_grad=True)

    def fn() -> torch.Tensor:
        b = a * 2.0  # saves nothing that needs grad-tracking beyond a scalar
        v = b[:5]
        return (b * b).sum() + (v * v).sum()  # b saved twice, then two views of b's storage

    nbytes, count, _ = saved_tensor_bytes(fn)
    assert count == 4
    assert nbytes == 10 * 4  # one storage of 10 floats, counted once at full size

    nbytes, _, _ = saved_tensor_bytes(lambda: (a * a).sum(), exclude=[a])
    assert nbytes == 0


def test_bad_optimizer():
    with pytest.raises(ValueError, match="optimizer must be 'sgd' .* got 'rmsprop'"):
        measure_step(_mlp(), "full", 4, optimizer="rmsprop", input_shape=(3, 2, 2))
    with pytest.raises(ValueError, match="mode must be 'head' or 'full', got 'all'"):
        analytic_step(_mlp(), "all", 4, input_shape=(3, 2, 2))
