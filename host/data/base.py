"""The in-memory dataset type, data errors, checksums and the uint8 array cache.

A :class:`Dataset` holds a whole split as one ``uint8`` NHWC array plus ``int64`` labels; this is
small for 32x32 data (CIFAR-10 train is 150 MB) and lets training index batches on the device.

The cache: every source that is slow to read (JPEG/PNG folders, tar archives, MD5-checked pickles)
is decoded once into ``<cache_dir>/arrays/<name>-<split>-<key>.npz`` (uncompressed ``x``, ``y``,
``classes``), written atomically; ``key`` hashes the source's path, size and mtime (see
:func:`source_key`), so a changed source is decoded again and a later load only reads the ``.npz``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from entropi.common.errors import EntropiError
from entropi.common.files import atomic_write

__all__ = [
    "DataError",
    "ChecksumError",
    "Dataset",
    "DatasetNotFoundError",
    "UnsafeArchiveError",
    "cached_arrays",
    "default_cache_dir",
    "file_md5",
    "progress_bar",
    "source_key",
    "verify_md5",
]

CACHE_ENV = "ENTROPI_CACHE"
QUIET_ENV = "ENTROPI_QUIET"
_CACHE_FORMAT = "1"


class DataError(EntropiError, ValueError):
    """A dataset, one of its files, or an argument naming a part of it is invalid."""


class DatasetNotFoundError(EntropiError, FileNotFoundError):
    """A dataset's files are not where they were looked for (the message lists where and how)."""


class ChecksumError(DataError):
    """A file's MD5 does not match the published one."""

    def __init__(self, path: str | os.PathLike, expected: str, actual: str, advice: str) -> None:
        self.path, self.expected, self.actual = Path(path), expected, actual
        super().__init__(
            f"MD5 mismatch for {self.path}: expected {expected}, got {actual}. "
            f"The file is corrupt or not the official one; {advice}"
        )


class UnsafeArchiveError(DataError):
    """A tar member would be written outside the extraction folder (or is a link or device)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of an image classification dataset, fully in memory."""

    x: np.ndarray
    """Images, ``uint8``, shape ``[N, H, W, 3]`` (NHWC, RGB)."""
    y: np.ndarray
    """Labels, ``int64``, shape ``[N]``, values in ``[0, len(classes))``."""
    classes: list[str]
    """Class names; ``classes[k]`` is the name of label ``k``."""
    name: str
    """Registry name of the dataset (``cifar10``, ``cifar100``, ``pacs``, ``imagefolder``)."""
    split: str
    """The split this holds (``train``, ``test``, ``val``, ...)."""
    info: dict = field(default_factory=dict)
    """Provenance: source path, cache file, domains, ... (plain JSON-able values)."""

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
            raise DataError(
                f"Dataset.x must be a uint8 array of shape [N, H, W, 3], got "
                f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}"
            )
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (x.shape[0],):
            raise DataError(
                f"Dataset.y must be an int64 array of shape [{x.shape[0]}], got "
                f"{getattr(y, 'dtype', type(y))} {getattr(y, 'shape', '')}"
            )
        if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
            raise DataError(
                f"Dataset.y values must lie in [0, {len(self.classes)}), "
                f"got min {y.min()} max {y.max()}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> np.ndarray:
        """Number of samples per label, ``int64 [num_classes]``."""
        return np.bincount(self.y, minlength=self.num_classes)

    def subset(self, indices: np.ndarray | Iterable[int]) -> Dataset:
        """A new :class:`Dataset` holding the rows ``indices`` (e.g. from ``stratified_subset``)."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            x=self.x[idx],
            y=self.y[idx],
            classes=list(self.classes),
            name=self.name,
            split=self.split,
            info={**self.info, "subset_of": len(self), "subset_size": int(idx.size)},
        )


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def verify_md5(path: str | os.PathLike, expected: str, *, advice: str) -> None:
    """Raise :class:`ChecksumError` (naming ``path``, both digests and ``advice``) on mismatch."""
    actual = file_md5(path)
    if actual != expected:
        raise ChecksumError(path, expected, actual, advice)


def progress_bar(total: int | None, desc: str, *, unit: str = "B", enabled: bool = True):
    """A tqdm bar on stderr, or ``None`` if tqdm is missing, ``enabled`` is false or the
    environment sets ``ENTROPI_QUIET`` (tests, CI). Callers do ``bar.update(n)``/``bar.close()``.
    """
    if not enabled or os.environ.get(QUIET_ENV, "") not in ("", "0"):
        return None
    try:
        # lazy: tqdm loads only when a bar is shown
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a host dependency
        return None
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr)


def default_cache_dir() -> Path:
    """``$ENTROPI_CACHE`` if set, else ``<cwd>/.cache/entropi`` (git-ignored in the repo)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.cwd() / ".cache" / "entropi"


def source_key(*paths: str | os.PathLike, extra: str = "") -> str:
    """A short hash of the resolved paths, sizes and mtimes of ``paths`` plus ``extra``.

    A directory contributes every file below it (relative path, size, mtime), so editing,
    adding or removing an image changes the key. Cheap: one ``stat`` per file, no reading.
    """
    h = hashlib.sha256(f"{_CACHE_FORMAT}|{extra}".encode())
    for p in paths:
        p = Path(p).resolve()
        h.update(str(p).encode())
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for fn in sorted(filenames):
                    st = os.stat(os.path.join(dirpath, fn))
                    rel = os.path.relpath(os.path.join(dirpath, fn), p)
                    h.update(f"|{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            st = p.stat()
            h.update(f"|{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_arrays(
    cache_dir: str | os.PathLike,
    stem: str,
    key: str,
    build: Callable[[], tuple[np.ndarray, np.ndarray, list[str]]],
) -> tuple[np.ndarray, np.ndarray, list[str], Path]:
    """Return ``(x, y, classes, cache_file)`` from the cache, calling ``build()`` on a miss.

    ``build`` returns ``(x uint8 NHWC, y int64, classes)``; the result is written atomically to
    ``<cache_dir>/arrays/<stem>-<key>.npz`` (uncompressed, so a load is one read of the bytes).
    """
    path = Path(cache_dir) / "arrays" / f"{stem}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["x"], z["y"], [str(c) for c in z["classes"]], path
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache (e.g. disk trouble): rebuild it below
    x, y, classes = build()
    names = np.asarray(classes, dtype=np.str_)
    atomic_write(path, lambda f: np.savez(f, x=x, y=y, classes=names))
    return x, y, list(classes), path
