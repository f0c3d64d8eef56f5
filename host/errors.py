"""The host's errors that several rooms raise (each room keeps its own narrower ones)."""

from __future__ import annotations

from entropi.common.errors import EntropiError

__all__ = ["ConfigError"]


class ConfigError(EntropiError, ValueError):
    """A config file or value is invalid."""
