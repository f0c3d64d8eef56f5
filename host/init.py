"""``[pretrain] init``: start rung 0 from a state dict the user already has.

Accepted files (``torch.load(..., weights_only=True)``, so no pickled code runs):

- an entropi encoder state dict (the keys of :func:`~entropi.host.models.build_encoder`), a
  classifier state dict (``encoder.*`` + ``head.*``; the head is dropped), or a rung file;
- a dict wrapping one of these under ``state_dict`` or ``model`` (common training checkpoints);
- a **torchvision-layout ResNet18** (``conv1``, ``bn1``, ``layer{1-4}.{0,1}.*`` with
  ``downsample``, ``fc``): mapped block by block onto ``resnet18_imagenet`` exactly, or onto the
  CIFAR ``resnet18`` with every layer but the stem convolution (7x7 there, 3x3 here), which keeps
  its random init and is named in the returned summary. ``fc`` (the ImageNet head) is dropped.

Written by hand because the mapping is a rename between two layouts of the same network; no
library here knows entropi's layout. Every mismatch is a :class:`CheckpointError` naming keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from entropi.export.rung import CheckpointError, load_payload

from .models import BasicBlock

__all__ = ["load_init", "torchvision_resnet18_keys"]

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
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        raise CheckpointError(
            f"{path} does not fit pretrain.arch = {arch!r}: unknown keys {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}, missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
    skipped = [k for k in state if state[k].shape != own[k].shape]
    stem_only = layout.startswith("torchvision") and skipped == ["0.weight"]
    if skipped and not stem_only:
        k = skipped[0]
        raise CheckpointError(
            f"{path}: {k} has shape {tuple(state[k].shape)}, pretrain.arch = {arch!r} needs "
            f"{tuple(own[k].shape)} ({len(skipped)} tensors differ)"
        )
    encoder.load_state_dict({**own, **{k: v for k, v in state.items() if k not in skipped}})
    note = "; stem conv kept at random init (7x7 there, 3x3 here)" if skipped else ""
    return f"init from {path} ({layout} layout, {len(state) - len(skipped)} tensors){note}"
