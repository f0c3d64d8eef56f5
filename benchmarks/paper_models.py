"""The ImageNet-style networks the paper's Table 2 probably counted, for reconstructing its numbers.

Only used to test readings of the paper's cost table (:mod:`.table2`), never for training:

- ``resnet18_imagenet``: torchvision's ResNet18 (7x7 stride-2 stem, max-pool), 512 features;
  11,689,512 parameters with 1000 classes, as torchvision's.
- ``mobilenetv3_large``: torchvision's MobileNetV3-large (960-channel last conv, then the
  960 -> 1280 linear + hardswish), 1280 features; 5,483,032 parameters with 1000 classes.
- ``mobilenetv3_small_imagenet``: torchvision's MobileNetV3-small, 1024 features; 2,542,856.

Built from the blocks of :mod:`entropi.host.ladder.models` (torchvision does not import on this
machine,
see REFERENCE section 6); the parameter counts are checked against torchvision's in the tests.
"""

from __future__ import annotations

from torch import nn

from entropi.host.ladder.models import (
    MOBILENETV3_SMALL,
    Classifier,
    ResNet18ImageNetEncoder,
    mobilenetv3_layers,
)

__all__ = ["PAPER_ARCHITECTURES", "build_paper_model"]

# (kernel, expanded, out, squeeze-excite, activation, stride), torchvision's table; the small
# network's is host/ladder/models.py's MOBILENETV3_SMALL
_LARGE = [
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]


class _MobileNetV3(nn.Sequential):
    def __init__(self, table: list[tuple], last_conv: int, feature_dim: int) -> None:
        super().__init__(
            *mobilenetv3_layers(table, stem_stride=2, last_conv=last_conv, feature_dim=feature_dim)
        )
        self.feature_dim = feature_dim


PAPER_ARCHITECTURES = ("resnet18_imagenet", "mobilenetv3_large", "mobilenetv3_small_imagenet")


def build_paper_model(arch: str, num_classes: int) -> Classifier:
    """An ImageNet-style model (see the module docstring) with a ``num_classes`` head."""
    if arch == "resnet18_imagenet":
        encoder: nn.Module = ResNet18ImageNetEncoder()
    elif arch == "mobilenetv3_large":
        encoder = _MobileNetV3(_LARGE, 960, 1280)
    elif arch == "mobilenetv3_small_imagenet":
        encoder = _MobileNetV3(MOBILENETV3_SMALL, 576, 1024)
    else:
        raise ValueError(f"unknown paper architecture {arch!r}; known: {PAPER_ARCHITECTURES}")
    return Classifier(encoder, encoder.feature_dim, num_classes)
