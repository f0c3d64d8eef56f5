"""Exceptions raised by the exporter (all :class:`~entropi.common.errors.EntropiError`)."""

from __future__ import annotations

import importlib

from entropi.common.errors import EntropiError

__all__ = [
    "ExportError",
    "MissingDependencyError",
    "UnsupportedModuleError",
    "VerificationError",
]


class ExportError(EntropiError, ValueError):
    """An encoder or a run cannot be exported as asked."""


class UnsupportedModuleError(ExportError):
    """The encoder holds a module or op that BN folding or compaction cannot handle."""


class VerificationError(ExportError):
    """An exported file does not reproduce the PyTorch encoder within the stated tolerance."""


class MissingDependencyError(EntropiError, ImportError):
    """An optional dependency of the exporter is not installed; the message names the extra."""


def require(module: str, extra: str, purpose: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs the Python package {module!r}, which is not installed "
            f'({e}); install it with: pip install "entropi[{extra}]"'
        ) from e
