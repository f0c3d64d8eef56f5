"""The device runtime's errors: :class:`DeviceError` and its subclasses, all
:class:`~entropi.common.errors.EntropiError` (the family every layer shares) and ``ValueError``.
"""

from __future__ import annotations

from entropi.common.errors import EntropiError

__all__ = [
    "BudgetError",
    "BundleError",
    "ChecksumError",
    "DataError",
    "DeviceError",
    "FormatVersionError",
    "ResumeError",
    "TrainConfigError",
]


class DeviceError(EntropiError, ValueError):
    """Base class of every error the device runtime raises on bad input."""


class BundleError(DeviceError):
    """A bundle directory or its manifest is missing, malformed or unusable."""


class ChecksumError(BundleError):
    """A file of a bundle does not match the sha256 recorded in its manifest."""


class FormatVersionError(BundleError):
    """The bundle was written by a newer entropi than this runtime understands."""


class DataError(DeviceError):
    """Images, labels or features are unusable (shape, NaN/inf, label range, class count)."""


class BudgetError(DeviceError):
    """The training loop cannot fit the memory budget; the message states the minimum."""

    def __init__(self, message: str, *, minimum_bytes: int) -> None:
        super().__init__(message)
        self.minimum_bytes = minimum_bytes


class ResumeError(DeviceError):
    """A training checkpoint is corrupt or was made with a different configuration."""


class TrainConfigError(DeviceError):
    """A training setting (a :class:`.config.TrainConfig` field, a size string) is malformed or
    out of range."""
