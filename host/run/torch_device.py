"""The compute device a run trains on: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""

from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["DeviceUnavailableError", "pick_device"]


class DeviceUnavailableError(ConfigError, RuntimeError):
    """The configured compute device is unknown or not present on this machine (a config error:
    :func:`~entropi.host.run.rundir.open_run` checks it before it creates anything)."""


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise DeviceUnavailableError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "device = 'cuda' but no CUDA device is visible to torch on this machine; set "
            'device = "auto" or "cpu" in the config (or --set device=cpu)'
        )
    return torch.device(name)
