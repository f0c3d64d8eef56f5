"""``.npz`` files written and read without a full temporary copy of each array.

``numpy.savez`` writes a zip member through ``array.tobytes()``, which allocates a copy of the
array; inside a budgeted training loop that copy would double the weights' footprint. These
helpers write each array's bytes straight from its buffer (``memoryview``) into an uncompressed
zip member, and read members back into existing arrays in small chunks. The files are ordinary
``.npz`` archives: ``numpy.load(path, allow_pickle=False)`` reads them.

Reading treats every file as untrusted. Before any array is allocated, each member's ``.npy``
header is checked (:func:`npy_member`): a known compression (stored or deflate), a non-object
dtype, C order, and the byte size the header claims (``prod(shape) * itemsize``) equal to the
member's uncompressed size in the zip directory, itself consistent with the file size (a stored
member must lie inside the file; a deflated one cannot expand more than deflate's maximum ratio).
Every read computes the member's CRC-32 (:func:`zlib.crc32`, incrementally) and compares it with
the zip directory's. Whatever is wrong (not a zip, truncated, a lying header, a flipped byte)
raises :class:`.errors.DataError` naming the file and the member.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from entropi.common.files import atomic_write

from .errors import DataError

__all__ = [
    "NpyMember",
    "crc_check",
    "load_npz",
    "npy_member",
    "npz_names",
    "read_member",
    "read_npz_into",
    "save_npz",
    "warm_up",
]

_CHUNK_BYTES = 4096
_FILE_BUFFER = 512
_DEFLATE_MAX_RATIO = 1032
"""Deflate cannot expand data more than ~1032:1; a directory claiming more is lying."""
_MAX_HEADER_BYTES = 100_000
"""Longest ``.npy`` header read (numpy itself refuses more than 10,000 bytes by default)."""
_SLACK_BYTES = 4096
"""Allowance for a deflated member's tiny-input overhead in the ratio check."""

#: What may go wrong while parsing a zip or a member (wrapped into DataError).
_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    OSError,
    ValueError,
    NotImplementedError,
    KeyError,
    OverflowError,
    TypeError,
)


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


@contextmanager
def _open_zip(path: str | os.PathLike) -> Iterator[tuple[object, zipfile.ZipFile]]:
    """``(raw file, ZipFile)`` of ``path``; :class:`DataError` when it is not a readable zip."""
    raw = _open_regular(path)
    try:
        try:
            zf = zipfile.ZipFile(raw)
        except _READ_ERRORS as e:  # NotImplementedError: a zip version Python cannot read
            size = os.fstat(raw.fileno()).st_size
            what = "empty" if size == 0 else f"not a valid .npz (zip) file of {size} bytes"
            raise DataError(f"{path} is {what}: {e}; is it truncated?") from e
        with zf:
            yield raw, zf
    finally:
        raw.close()


def _open_regular(path: str | os.PathLike):
    """``path`` opened for unbuffered binary reading; :class:`DataError` unless it is a
    regular file (a FIFO would block the reader, a device such as ``/dev/zero`` never ends)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError as e:
        raise DataError(f"{path} is a directory, not an .npz file") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{path} is not a regular file (a FIFO, device or socket); not an .npz")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def npz_names(path: str | os.PathLike) -> list[str]:
    """The names of the ``.npy`` members of ``path``, without ``.npy`` (other members, which
    hold no array, are ignored)."""
    with _open_zip(path) as (_, zf):
        return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]


@dataclass(frozen=True)
class NpyMember:
    """Where one ``.npy`` member of an ``.npz`` keeps its array (its header, checked)."""

    name: str
    """Member name without ``.npy``."""
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int | None
    """Byte offset of the array data in the ``.npz`` file for an uncompressed member (it can be
    read in place at any row), None for a compressed one (read it sequentially)."""
    header_len: int = 0
    """Bytes of the ``.npy`` header (magic included) before the data."""
    header_crc: int = 0
    """CRC-32 of those header bytes: the start value of the data's running CRC."""
    crc: int = 0
    """The member's CRC-32 recorded in the zip directory (header and data)."""

    @property
    def nbytes(self) -> int:
        """Bytes of the array data the header claims."""
        return math.prod(self.shape) * self.dtype.itemsize


def _stored_data_start(raw, info: zipfile.ZipInfo, path: object = "") -> int:
    """Offset of a stored member's first byte (after the local header, name and extra field)."""
    raw.seek(info.header_offset)
    local = raw.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise DataError(f"{path}: member {info.filename!r} has a bad zip local header")
    return (
        info.header_offset
        + 30
        + int.from_bytes(local[26:28], "little")
        + int.from_bytes(local[28:30], "little")
    )


def _header_total(prefix: bytes) -> int:
    """Bytes of a ``.npy`` header (magic, version, length, dict) from its first 12 bytes (just
    those bytes when they are no ``.npy`` magic: the parser then says what is wrong)."""
    if len(prefix) < 10 or prefix[:6] != b"\x93NUMPY":
        return len(prefix)
    if prefix[6] == 1:
        return 10 + int.from_bytes(prefix[8:10], "little")
    return 12 + int.from_bytes(prefix[8:12], "little")


def _member_header(path, raw, zf: zipfile.ZipFile, name: str) -> tuple[NpyMember, object]:
    """Checked header of member ``name`` and its ZipInfo (:class:`DataError` on any lie)."""
    where = f"{path}:{name}"
    try:
        info = zf.getinfo(f"{name}.npy")
    except KeyError:
        raise KeyError(name) from None
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(
            f"{where} uses zip compression method {info.compress_type}; only stored "
            "(np.savez) and deflate (np.savez_compressed) are read"
        )
    file_size = os.fstat(raw.fileno()).st_size
    if info.header_offset + info.compress_size > file_size:
        raise DataError(
            f"{where} claims {info.compress_size} bytes at offset {info.header_offset} but "
            f"the file has {file_size} bytes: it is truncated"
        )
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise DataError(f"{where} is stored but its zip sizes differ: the directory is corrupt")
    if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + _SLACK_BYTES:
        raise DataError(
            f"{where} claims {info.file_size} uncompressed bytes from {info.compress_size} "
            "compressed ones, more than deflate can expand: the file is corrupt"
        )
    try:
        with zf.open(info) as member:
            prefix = member.read(12)
            total = _header_total(prefix)
            if total > _MAX_HEADER_BYTES:
                raise DataError(f"{where} has a {total}-byte .npy header: the file is corrupt")
            prefix += member.read(max(0, total - len(prefix)))
    except DataError:
        raise
    except _READ_ERRORS as e:
        raise DataError(f"{where} is unreadable ({e}); the file is corrupt or truncated") from e
    buf = io.BytesIO(prefix)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except _READ_ERRORS as e:
        raise DataError(f"{where} has no valid .npy header ({e})") from e
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise DataError(f"{where} has dtype object; refusing to unpickle it")
    if any(not isinstance(s, int) or s < 0 for s in shape):
        raise DataError(f"{where} has an invalid shape {shape}")
    header_len = buf.tell()
    m = NpyMember(
        name,
        tuple(int(s) for s in shape),
        dtype,
        bool(fortran),
        None,
        header_len,
        zlib.crc32(prefix[:header_len]),
        info.CRC,
    )
    if header_len + m.nbytes != info.file_size:
        raise DataError(
            f"{where}: its header claims {dtype} {m.shape} ({m.nbytes} bytes of data) but the "
            f"member holds {info.file_size - header_len} bytes: the file is corrupt"
        )
    if info.compress_type == zipfile.ZIP_STORED:
        offset = _stored_data_start(raw, info, path) + header_len
        if offset + m.nbytes > file_size:
            raise DataError(f"{where} ends past the end of the file: it is truncated")
        m = dataclasses.replace(m, data_offset=offset)
    return m, info


def npy_member(path: str | os.PathLike, name: str) -> NpyMember:
    """Checked shape, dtype and data location of member ``name`` of ``path``, without reading
    the data (module docstring). ``KeyError`` when the member does not exist,
    :class:`.errors.DataError` when the file or the header is unusable."""
    with _open_zip(path) as (raw, zf):
        m, _ = _member_header(path, raw, zf, name)
    return m


def crc_check(path, member: NpyMember, crc: int) -> None:
    """Raise :class:`.errors.DataError` unless ``crc`` (the running CRC-32 of the member's
    header and data) is the CRC the zip directory records."""
    if crc & 0xFFFFFFFF != member.crc:
        raise DataError(
            f"{path}:{member.name} fails its CRC-32 check (the zip records {member.crc:08x}, the "
            f"data gives {crc & 0xFFFFFFFF:08x}): the file is corrupt"
        )


def _read_data(path, raw, zf, m: NpyMember, info, view: memoryview) -> None:
    """The data bytes of ``m`` into ``view`` (exactly ``m.nbytes``), CRC-checked. A stored
    member is read with plain file reads at its offset, a deflated one through the zip reader in
    :data:`_CHUNK_BYTES` pieces (its buffers stay small)."""
    try:
        if m.data_offset is not None:
            raw.seek(m.data_offset)
            crc = _read_into(path, m, raw, view, 1 << 20)
        else:
            with zf.open(info) as member:
                member.read(m.header_len)
                crc = _read_into(path, m, member, view, _CHUNK_BYTES)
    except DataError:
        raise
    except _READ_ERRORS as e:
        raise DataError(f"{path}:{m.name} is unreadable ({e}); the file is corrupt") from e
    crc_check(path, m, crc)


def _read_into(path, m: NpyMember, f, view: memoryview, chunk: int) -> int:
    """Fill ``view`` from ``f`` in ``chunk``-byte reads; the running CRC-32 of the member."""
    crc, pos = m.header_crc, 0
    while pos < len(view):
        n = f.readinto(view[pos : pos + chunk])
        if not n:
            raise DataError(f"{path}:{m.name} is truncated at byte {pos} of {m.nbytes}")
        crc = zlib.crc32(view[pos : pos + n], crc)
        pos += n
    return crc


def read_member(path: str | os.PathLike, name: str, *, max_bytes: int | None = None) -> np.ndarray:
    """Array ``name`` of ``path`` (checked header, CRC-checked data, never unpickled).

    ``max_bytes``: refuse (:class:`.errors.DataError`) a member claiming more data before
    allocating it. ``KeyError`` when the member does not exist.
    """
    with _open_zip(path) as (raw, zf):
        m, info = _member_header(path, raw, zf, name)
        if max_bytes is not None and m.nbytes > max_bytes:
            raise DataError(
                f"{path}:{name} claims {m.dtype} {m.shape} ({m.nbytes} bytes), more than the "
                f"{max_bytes} bytes it may have"
            )
        out = np.empty(m.shape[::-1] if m.fortran_order else m.shape, m.dtype)
        if m.nbytes:
            _read_data(path, raw, zf, m, info, memoryview(out.reshape(-1)).cast("B"))
        elif m.crc != m.header_crc:
            crc_check(path, m, m.header_crc)
    return out.T if m.fortran_order else out


def load_npz(path: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (:func:`read_member` each) in a dict; ``max_bytes`` bounds
    each member."""
    return {name: read_member(path, name, max_bytes=max_bytes) for name in npz_names(path)}


def read_npz_into(path: str | os.PathLike, outs: Mapping[str, np.ndarray]) -> None:
    """Read members ``name`` of ``path`` into the existing arrays ``outs[name]``.

    Uncompressed members (what :func:`save_npz` writes) are checked byte-for-byte against the
    ``.npy`` header ``out`` would have, then memory-mapped and copied into ``out``: no heap copy
    and no header parsing (numpy's parser allocates ~15 KB). Other members are parsed and read in
    4 KB chunks. Shapes and dtypes must match exactly, the zip sizes must agree with the header
    and the CRC-32 must match (:class:`.errors.DataError`, a ``ValueError``, otherwise).
    """
    with _open_zip(path) as (raw, zf):
        file_size = os.fstat(raw.fileno()).st_size
        for name, out in outs.items():
            try:
                info = zf.getinfo(f"{name}.npy")
            except KeyError:
                raise DataError(f"{path} has no member {name!r}") from None
            if info.compress_type == zipfile.ZIP_STORED:
                start = _stored_data_start(raw, info, path)
                expected = _npy_header(out)
                raw.seek(start)
                if raw.read(len(expected)) == expected:
                    if info.file_size != len(expected) + out.nbytes or (
                        start + info.file_size > file_size
                    ):
                        raise DataError(f"{path}: member {name!r} is truncated or corrupt")
                    crc = zlib.crc32(expected)
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
                        crc = zlib.crc32(memoryview(out.reshape(-1)).cast("B"), crc)
                    if crc != info.CRC:
                        raise DataError(
                            f"{path}: member {name!r} fails its CRC-32 check: the file is corrupt"
                        )
                    continue
            m, info = _member_header(path, raw, zf, name)
            if m.shape != out.shape or m.dtype != out.dtype or m.fortran_order:
                raise DataError(
                    f"{path}: member {name!r} is {m.dtype}{m.shape}, expected "
                    f"{out.dtype}{out.shape}"
                )
            if out.size:
                _read_data(path, raw, zf, m, info, memoryview(out.reshape(-1)).cast("B"))


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
