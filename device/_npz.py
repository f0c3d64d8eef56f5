"""``.npz`` files written and read without a full temporary copy of each array.

``numpy.savez`` writes a zip member through ``array.tobytes()``, which allocates a copy of the
array; inside a budgeted training loop that copy would double the weights' footprint. These
helpers write each array's bytes straight from its buffer (``memoryview``) into an uncompressed
zip member, and read members back into existing arrays in small chunks. The files are ordinary
``.npz`` archives: ``numpy.load(path, allow_pickle=False)`` reads them.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import atomic_write

__all__ = ["NpyMember", "load_npz", "npy_member", "read_npz_into", "save_npz", "warm_up"]

_CHUNK_BYTES = 4096
_FILE_BUFFER = 512


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` (C-contiguous, non-object) to ``path`` atomically as an ``.npz``."""

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                arr = np.asarray(arr)
                if arr.dtype.hasobject:
                    raise TypeError(f"array {name!r} has dtype object; refusing to pickle it")
                if not arr.flags.c_contiguous:
                    arr = np.ascontiguousarray(arr)
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(
                        member, np.lib.format.header_data_from_array_1_0(arr)
                    )
                    if arr.size:
                        member.write(memoryview(arr.reshape(-1)).cast("B"))

    return atomic_write(path, write, buffering=_FILE_BUFFER)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` (never unpickling) into a dict."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_npz_into(path: str | os.PathLike, outs: Mapping[str, np.ndarray]) -> None:
    """Read members ``name`` of ``path`` into the existing arrays ``outs[name]``.

    Uncompressed members (what :func:`save_npz` writes) are checked byte-for-byte against the
    ``.npy`` header ``out`` would have, then memory-mapped and copied into ``out``: no heap copy
    and no header parsing (numpy's parser allocates ~15 KB). Other members are parsed and read in
    4 KB chunks. Shapes and dtypes must match exactly (``ValueError`` otherwise).
    """
    with open(path, "rb", buffering=0) as raw, zipfile.ZipFile(raw) as zf:
        for name, out in outs.items():
            info = zf.getinfo(f"{name}.npy")
            if info.compress_type == zipfile.ZIP_STORED:
                start = _stored_data_start(raw, info)
                expected = _npy_header(out)
                raw.seek(start)
                if raw.read(len(expected)) == expected:
                    if out.size:
                        mm = np.memmap(
                            raw,
                            dtype=out.dtype,
                            mode="r",
                            offset=start + len(expected),
                            shape=out.shape,
                        )
                        np.copyto(out, mm)
                        del mm
                    continue
            with zf.open(info) as member:
                _read_header(member, path, name, out)
                view = memoryview(out.reshape(-1)).cast("B")
                pos = 0
                while pos < len(view):
                    n = member.readinto(view[pos : pos + _CHUNK_BYTES])
                    if not n:
                        raise ValueError(f"{path}: member {name!r} is truncated")
                    pos += n


@dataclass(frozen=True)
class NpyMember:
    """Where one ``.npy`` member of an ``.npz`` keeps its array."""

    name: str
    """Member name without ``.npy``."""
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int | None
    """Byte offset of the array data in the ``.npz`` file for an uncompressed member (it can be
    read in place at any row), None for a compressed one (read it sequentially)."""


def _stored_data_start(raw, info: zipfile.ZipInfo) -> int:
    """Offset of a stored member's first byte (after the local header, name and extra field)."""
    raw.seek(info.header_offset + 26)
    lengths = raw.read(4)
    return info.header_offset + 30 + lengths[0] + 256 * lengths[1] + lengths[2] + 256 * lengths[3]


def npy_member(path: str | os.PathLike, name: str) -> NpyMember:
    """Shape, dtype and data location of member ``name`` of ``path``, without reading the data.

    Raises ``KeyError`` when the member does not exist.
    """
    with open(path, "rb", buffering=0) as raw, zipfile.ZipFile(raw) as zf:
        info = zf.getinfo(f"{name}.npy")
        with zf.open(info) as member:
            shape, fortran, dtype = _parse_header(member)
            header_len = member.tell()
        offset = None
        if info.compress_type == zipfile.ZIP_STORED:
            offset = _stored_data_start(raw, info) + header_len
    return NpyMember(name, tuple(shape), np.dtype(dtype), bool(fortran), offset)


def _parse_header(member):
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    return np.lib.format.read_array_header_2_0(member)


def _npy_header(arr: np.ndarray) -> bytes:
    """The exact ``.npy`` v1.0 header :func:`save_npz` writes for ``arr``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
    return buf.getvalue()


def warm_up() -> None:
    """Run one tiny save/read round trip so that lazy imports (zip file-name codec, mmap) happen
    now, not inside a measured training loop."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "warm.npz"
        a = np.zeros(2, np.float32)
        save_npz(path, {"a": a})
        read_npz_into(path, {"a": a})


def _read_header(member, path, name, out) -> tuple[tuple[int, ...], np.dtype]:
    shape, fortran, dtype = _parse_header(member)
    if tuple(shape) != out.shape or dtype != out.dtype or fortran:
        raise ValueError(
            f"{path}: member {name!r} is {dtype}{tuple(shape)}, expected {out.dtype}{out.shape}"
        )
    return tuple(shape), dtype
