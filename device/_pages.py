"""Give back the resident pages of a memory-mapped file (the feature store on "flash").

Reading a memory-mapped file leaves every touched page mapped into the process, so a pass over
a 50 MB feature store would add 50 MB to the process RSS although the data is only needed one
batch at a time. ``madvise(MADV_DONTNEED)`` drops those pages from the process (the kernel's
page cache keeps them, and dirty pages of a shared mapping are still written back), so the next
access faults them in again. Where ``madvise`` is unavailable this does nothing.
"""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["mapping_of", "release_pages"]

_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


def mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` behind ``array`` (following ``.base``), or None for an in-memory array."""
    base = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        base = getattr(base, "base", None)
    return None


def release_pages(mapping: mmap.mmap | np.ndarray | None) -> None:
    """Drop the resident pages of ``mapping`` (an ``mmap`` or an array backed by one)."""
    if isinstance(mapping, np.ndarray):
        mapping = mapping_of(mapping)
    if mapping is not None and _DONTNEED is not None and not mapping.closed:
        mapping.madvise(_DONTNEED)
