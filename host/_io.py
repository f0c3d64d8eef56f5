"""Atomic file writes (temp file + fsync + rename), shared with the device runtime.

The implementation lives in :mod:`entropi.device._io` because the device side must not import
host code; the host re-uses it rather than keeping a second copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from entropi.device._io import _umask, atomic_write

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "default_mode",
]


def default_mode(directory: bool = False) -> int:
    """Permissions a plain open()/mkdir() would give under the current umask (mkstemp and
    mkdtemp use 0600/0700, which would make shared run artifacts unreadable to others)."""
    return (0o777 if directory else 0o666) & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
