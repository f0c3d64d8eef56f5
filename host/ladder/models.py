"""CIFAR-sized encoders (32x32 inputs), each split into an encoder and a linear head.

``build_model(arch, num_classes)`` returns a :class:`Classifier` whose ``encoder`` maps an
``N x 3 x 32 x 32`` float tensor to the ``N x feature_dim`` feature vector that ENTROPI scores and
that the device trains a head on, and whose ``head`` is one ``nn.Linear``.

Architectures:

- ``resnet18``: the CIFAR ResNet18 (3x3 stem, stride 1, no max-pool), 512 features, 11.2 M params.
- ``mobilenetv3_small``: MobileNetV3-small with the stem and the first block at stride 1 (32x32
  inputs would otherwise reach 1x1 after five halvings); the encoder ends with the 576 -> 1024
  linear + hardswish of the torchvision classifier, so the head sees 1024 features.
- ``resnet18_imagenet``: torchvision's ResNet18 (7x7 stride-2 stem, max-pool), 512 features: the
  target of a torchvision-layout state dict (``[pretrain] init``, :mod:`.init`).
- ``smallnet``: four conv-BN-ReLU stages (32-64-128-256 channels), 256 features; fast on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from entropi.export.weights import prunable_parameters  # re-exported: the pruned weights

from ..errors import ConfigError

__all__ = ["ARCHITECTURES", "Classifier", "build_model", "prunable_parameters"]


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet18_layers(stem: list[nn.Module]) -> list[nn.Module]:
    """``stem`` (ending at 64 channels), the four stages of two basic blocks, global pooling."""
    layers = list(stem)
    in_ch = 64
    for out_ch, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1)]
        in_ch = out_ch
    return layers + [nn.AdaptiveAvgPool2d(1), nn.Flatten()]


class ResNet18Encoder(nn.Sequential):
    feature_dim = 512

    def __init__(self) -> None:
        stem = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        super().__init__(*resnet18_layers(stem))


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        squeeze = _make_divisible(ch // 4)
        self.fc1 = nn.Conv2d(ch, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(
        self, in_ch: int, kernel: int, exp: int, out_ch: int, se: bool, act: str, stride: int
    ) -> None:
        super().__init__()
        act_layer: Callable[[], nn.Module] = nn.Hardswish if act == "HS" else nn.ReLU
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if exp != in_ch:
            layers += [nn.Conv2d(in_ch, exp, 1, bias=False), nn.BatchNorm2d(exp), act_layer()]
        layers += [
            nn.Conv2d(exp, exp, kernel, stride, kernel // 2, groups=exp, bias=False),
            nn.BatchNorm2d(exp),
            act_layer(),
        ]
        if se:
            layers.append(SqueezeExcite(exp))
        layers += [nn.Conv2d(exp, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


# (kernel, expanded channels, out channels, squeeze-excite, activation, stride): torchvision's
# MobileNetV3-small table (also benchmarks/paper_models.py's ImageNet-size network).
MOBILENETV3_SMALL = [
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]
# the same with the first block's stride set to 1, for 32x32 inputs
_MBV3_SMALL = [(*MOBILENETV3_SMALL[0][:5], 1), *MOBILENETV3_SMALL[1:]]


def mobilenetv3_layers(
    table: list[tuple], *, stem_stride: int, last_conv: int, feature_dim: int
) -> list[nn.Module]:
    """Stem (16 channels), the inverted-residual ``table``, the last 1x1 conv, global pooling and
    the ``last_conv -> feature_dim`` linear + hardswish of torchvision's classifier."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 16, 3, stem_stride, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.Hardswish(),
    ]
    in_ch = 16
    for kernel, exp, out_ch, se, act, stride in table:
        layers.append(InvertedResidual(in_ch, kernel, exp, out_ch, se, act, stride))
        in_ch = out_ch
    return layers + [
        nn.Conv2d(in_ch, last_conv, 1, bias=False),
        nn.BatchNorm2d(last_conv),
        nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(last_conv, feature_dim),
        nn.Hardswish(),
    ]


class MobileNetV3SmallEncoder(nn.Sequential):
    feature_dim = 1024

    def __init__(self) -> None:
        super().__init__(
            *mobilenetv3_layers(_MBV3_SMALL, stem_stride=1, last_conv=576, feature_dim=1024)
        )


class SmallNetEncoder(nn.Sequential):
    feature_dim = 256

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate([32, 64, 128, 256]):
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            in_ch = out_ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)


class ResNet18ImageNetEncoder(nn.Sequential):
    """torchvision's ResNet18 layout (7x7 stride-2 stem, max-pool): what a torchvision-layout
    ResNet18 state dict loads into exactly (``[pretrain] init``)."""

    feature_dim = 512

    def __init__(self) -> None:
        stem = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        super().__init__(*resnet18_layers(stem))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    # the registry of encoders: config validation and the CLI's choices read it
    "resnet18": ResNet18Encoder,
    "mobilenetv3_small": MobileNetV3SmallEncoder,
    "smallnet": SmallNetEncoder,
    "resnet18_imagenet": ResNet18ImageNetEncoder,
}


class Classifier(nn.Module):
    """An encoder (image -> feature vector) followed by a linear head."""

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def build_encoder(arch: str) -> nn.Module:
    """Return a freshly initialised encoder; ``encoder.feature_dim`` is its output width."""
    if arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConfigError(f"unknown architecture {arch!r}; known architectures: {known}")
    return ARCHITECTURES[arch]()


def build_model(arch: str, num_classes: int) -> Classifier:
    """Build ``arch`` (see :data:`ARCHITECTURES`) with a ``num_classes``-way linear head."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    encoder = build_encoder(arch)
    return Classifier(encoder, encoder.feature_dim, num_classes)
