"""``[pretrain] init``: start rung 0 from a state dict the user already has.

Accepted files (``torch.load(..., weights_only=True)``, so no pickled code runs):

- an entropi encoder state dict (the keys of :func:`~entropi.host.ladder.models.build_encoder`), a
  classifier state dict (``encoder.*`` + ``head.*``; the head is dropped), or a rung file;
- a dict wrapping one of these under ``state_dict`` or ``model`` (common training checkpoints);
- a **torchvision-layout ResNet18** (``conv1``, ``bn1``, ``layer{1-4}.{0,1}.*`` with
  ``downsample``, ``fc``): mapped block by block onto ``resnet18_imagenet`` exactly, or onto the
  CIFAR ``resnet18`` with every layer but the stem convolution (7x7 there, 3x3 here), which keeps
  its random init and is named in the returned summary. ``fc`` (the ImageNet head) is dropped;
- a **torchvision-layout MobileNetV3-small** (``features.0`` stem, ``features.{1-11}.block.*``
  inverted residuals with ``fc1``/``fc2`` squeeze-excitation, ``features.12`` last conv,
  ``classifier.0`` 576 -> 1024 linear, ``classifier.3`` head): mapped onto ``mobilenetv3_small``
  exactly, every parameter and buffer (the stride-1 stem and first block change no shapes).
  ``classifier.3`` (the ImageNet head) is dropped. torchvision's BatchNorm ``eps`` (1e-3) is not
  in a state dict; the encoder keeps its own (1e-5), as the returned summary says.

Written by hand because the mapping is a rename between two layouts of the same network; no
library here knows entropi's layout. Every mismatch is a :class:`CheckpointError` naming keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from entropi.export.rung import CheckpointError, load_payload

from .models import BasicBlock, InvertedResidual, SqueezeExcite

__all__ = ["load_init", "torchvision_mobilenetv3_keys", "torchvision_resnet18_keys"]

_TV_BLOCK = re.compile(r"^layer([1-4])\.([01])\.(.+)$")


def _unwrap(payload, path: Path) -> dict[str, torch.Tensor]:
    if (
        isinstance(payload, dict)
        and "format" in payload
        and isinstance(payload.get("encoder"), dict)
    ):
        return payload["encoder"]  # an entropi rung file
    for key in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict (str -> tensor)")
    if any(k.startswith("encoder.") for k in payload):
        return {k[len("encoder.") :]: v for k, v in payload.items() if k.startswith("encoder.")}
    return payload


def torchvision_resnet18_keys(encoder: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """torchvision ResNet18 names -> ``encoder``'s names (``fc`` dropped)."""
    first = next(i for i, m in enumerate(encoder) if isinstance(m, BasicBlock))
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if key.startswith("conv1."):
            out["0." + key[len("conv1.") :]] = value
        elif key.startswith("bn1."):
            out["1." + key[len("bn1.") :]] = value
        elif m := _TV_BLOCK.match(key):
            layer, block, rest = int(m[1]), int(m[2]), m[3].replace("downsample.", "shortcut.")
            out[f"{first + 2 * (layer - 1) + block}.{rest}"] = value
        else:
            raise CheckpointError(f"unexpected key {key!r} in a torchvision-layout ResNet18")
    return out


def _conv_bn_names(
    modules: list[nn.Module], own: str, tv: str, own_start: int = 0, tv_start: int = 0
) -> dict[str, str]:
    """entropi module names -> torchvision names for a run of conv, BN(, activation) and
    squeeze-excite modules (``{own}{own_start}`` on): each conv + BN pair is one torchvision
    ``Conv2dNormActivation`` (``{tv}.{j}.0`` / ``{tv}.{j}.1``, ``j`` from ``tv_start``), a
    squeeze-excite is ``{tv}.{j}`` itself (``fc1``, ``fc2``); activations hold no tensors."""
    names, j = {}, tv_start
    for i, m in enumerate(modules, start=own_start):
        if isinstance(m, SqueezeExcite):
            names |= {f"{own}{i}.{fc}": f"{tv}.{j}.{fc}" for fc in ("fc1", "fc2")}
            j += 1
        elif isinstance(m, nn.Conv2d):
            names[f"{own}{i}"] = f"{tv}.{j}.0"
        elif isinstance(m, nn.BatchNorm2d):  # always right after its conv in entropi's encoders
            names[f"{own}{i}"] = f"{tv}.{j}.1"
            j += 1
    return names


def _mbv3_module_names(encoder: nn.Module) -> dict[str, str]:
    """``encoder``'s (a ``mobilenetv3_small``) module names -> torchvision's."""
    modules = list(encoder)
    blocks = [i for i, m in enumerate(modules) if isinstance(m, InvertedResidual)]
    first, last = blocks[0], blocks[-1]
    names = _conv_bn_names(modules[:first], "", "features")  # stem: features.0.{0,1}
    for n, i in enumerate(blocks, start=1):  # features.{1-11}.block.*
        names |= _conv_bn_names(list(modules[i].block), f"{i}.block.", f"features.{n}.block")
    # the last conv: features.12.{0,1}
    names |= _conv_bn_names(modules[last + 1 :], "", "features", last + 1, len(blocks) + 1)
    (linear,) = [i for i, m in enumerate(modules) if isinstance(m, nn.Linear)]
    return names | {str(linear): "classifier.0"}


def torchvision_mobilenetv3_keys(encoder: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """torchvision MobileNetV3-small names -> ``encoder``'s names (``classifier.3`` dropped).

    Raises :class:`CheckpointError` naming, in torchvision's names, the keys ``state`` has that
    the encoder does not, the ones it lacks, and the first tensor whose shape differs."""
    modules = _mbv3_module_names(encoder)
    table = {}  # torchvision key -> entropi key, for every tensor of the encoder
    for key in encoder.state_dict():
        module, tensor = key.rsplit(".", 1)
        table[f"{modules[module]}.{tensor}"] = key
    state = {k: v for k, v in state.items() if not k.startswith("classifier.3.")}
    unknown, missing = sorted(set(state) - set(table)), sorted(set(table) - set(state))
    if unknown or missing:
        raise CheckpointError(
            "not a torchvision-layout MobileNetV3-small: unexpected keys "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}, missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
    own = encoder.state_dict()
    wrong = [k for k, v in state.items() if v.shape != own[table[k]].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{k} has shape {tuple(state[k].shape)}, mobilenetv3_small's {table[k]} needs "
            f"{tuple(own[table[k]].shape)} ({len(wrong)} tensors differ)"
        )
    return {table[k]: v for k, v in state.items()}


def load_init(encoder: nn.Module, arch: str, path: str | Path) -> str:
    """Load the state dict at ``path`` into ``encoder`` (in place); return a one-line summary."""
    path = Path(path)
    state = _unwrap(load_payload(path), path)
    own = encoder.state_dict()
    layout = "entropi"
    if "layer1.0.conv1.weight" in state:
        if not arch.startswith("resnet18"):
            raise CheckpointError(
                f"{path} is a torchvision-layout ResNet18; set pretrain.arch = "
                f'"resnet18_imagenet" (exact) or "resnet18" (all but the stem), not {arch!r}'
            )
        state, layout = torchvision_resnet18_keys(encoder, state), "torchvision ResNet18"
    elif any(k.startswith("features.") for k in state):
        if arch != "mobilenetv3_small":
            raise CheckpointError(
                f"{path} is a torchvision-layout MobileNetV3 (features.*); set pretrain.arch = "
                f'"mobilenetv3_small", not {arch!r}'
            )
        try:
            state = torchvision_mobilenetv3_keys(encoder, state)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        layout = "torchvision MobileNetV3-small"
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        raise CheckpointError(
            f"{path} does not fit pretrain.arch = {arch!r}: unknown keys {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}, missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{path}: {bad[0]} holds NaN or infinite values ({len(bad)} tensors do); training "
            "from it would diverge: use a file with finite weights"
        )
    skipped = [k for k in state if state[k].shape != own[k].shape]
    stem_only = layout == "torchvision ResNet18" and skipped == ["0.weight"]
    if skipped and not stem_only:
        k = skipped[0]
        raise CheckpointError(
            f"{path}: {k} has shape {tuple(state[k].shape)}, pretrain.arch = {arch!r} needs "
            f"{tuple(own[k].shape)} ({len(skipped)} tensors differ)"
        )
    encoder.load_state_dict({**own, **{k: v for k, v in state.items() if k not in skipped}})
    note = "; stem conv kept at random init (7x7 there, 3x3 here)" if skipped else ""
    if layout == "torchvision MobileNetV3-small":
        note = (
            "; every parameter and buffer mapped exactly, classifier.3 dropped; BatchNorm eps "
            "stays 1e-5 (torchvision's is 1e-3)"
        )
    return f"init from {path} ({layout} layout, {len(state) - len(skipped)} tensors){note}"
