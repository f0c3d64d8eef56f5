"""Safe tar extraction and checksum-verified, atomic downloads."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from entropi.common.errors import EntropiError, one_line

from .base import ChecksumError, DataError, UnsafeArchiveError, progress_bar

__all__ = ["DownloadError", "check_members", "download_file", "extract_tar"]

_CHUNK = 1 << 20


class DownloadError(EntropiError, OSError):
    """A download failed (offline machine, bad URL, HTTP error); the message is one line."""


MAX_EXPANSION = 50
"""An archive may expand to at most this many times its size (images barely compress: CIFAR and
PACS archives expand 1.0-1.2x)..."""
EXPANSION_FLOOR_BYTES = 256 << 20
"""...once it holds more than this (small archives of text or zeros compress well)."""
MAX_EXTRACT_BYTES = 64 << 30
"""And never more than this in all."""


def check_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Return the members of ``tar`` or raise :class:`UnsafeArchiveError` for the first bad one.

    Only regular files and folders with relative paths and no ``..`` component are accepted;
    links, devices and absolute paths are rejected, since a dataset archive never needs them;
    so is an archive whose members would expand far beyond its size (:data:`MAX_EXPANSION`).
    The sizes are the tar headers' (what extraction writes), read before anything is written.
    """
    members = tar.getmembers()
    total = sum(m.size for m in members if m.isfile())
    packed = os.path.getsize(tar.name) if tar.name and os.path.isfile(tar.name) else 0
    if total > MAX_EXTRACT_BYTES or (
        total > EXPANSION_FLOOR_BYTES and total > MAX_EXPANSION * max(packed, 1)
    ):
        raise UnsafeArchiveError(
            f"refusing to extract {tar.name}: its {len(members)} members hold {total} bytes, "
            f"{total / max(packed, 1):.0f}x the archive's {packed} bytes (at most "
            f"{MAX_EXPANSION}x above {EXPANSION_FLOOR_BYTES >> 20} MB, and "
            f"{MAX_EXTRACT_BYTES >> 30} GB in all); image datasets barely compress, so this is a "
            "decompression bomb or a corrupt file"
        )
    for m in members:
        parts = PurePosixPath(m.name).parts
        if m.name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
            raise UnsafeArchiveError(
                f"refusing to extract {tar.name}: member {m.name!r} has an absolute path or a "
                f"'..' component and would be written outside the target folder; the archive is "
                f"corrupt or malicious, get a fresh copy from the official source"
            )
        if not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(
                f"refusing to extract {tar.name}: member {m.name!r} is a link or special file "
                f"(type {m.type!r}); only regular files and folders are allowed in a dataset "
                f"archive"
            )
    return members


def extract_tar(
    archive: str | os.PathLike, dest: str | os.PathLike, *, merge: bool = False
) -> Path:
    """Extract ``archive`` (any tar, compressed or not) safely into the folder ``dest``.

    Every member is checked first (:func:`check_members`); nothing is written if one is unsafe.
    The archive is extracted into a temp folder next to ``dest``, then either renamed to ``dest``
    (``merge=False``: ``dest`` must not exist, so an interrupted extraction never leaves a
    half-filled ``dest``) or moved file by file into an existing ``dest`` (``merge=True``,
    replacing files of the same name).
    """
    archive, dest = Path(archive), Path(dest)
    if not merge and dest.exists():
        raise FileExistsError(f"extraction target {dest} already exists; remove it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = check_members(tar)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tar.extractall(tmp, members=members)
        if not merge:
            try:
                os.replace(tmp, dest)
            except OSError as e:  # another process finished the same extraction first
                if dest.is_dir():
                    raise FileExistsError(f"extraction target {dest} already exists") from e
                raise
            return dest
        for dirpath, _dirnames, filenames in os.walk(tmp):
            rel = Path(dirpath).relative_to(tmp)
            (dest / rel).mkdir(parents=True, exist_ok=True)
            for fn in filenames:
                os.replace(Path(dirpath) / fn, dest / rel / fn)
        return dest
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            f"cannot read archive {archive}: {one_line(e)}; the file is corrupt or not a tar "
            f"archive, download it again"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, checking the MD5 before the file appears; resumable.

    The bytes go to ``<dest>.part``; ``dest`` only appears (by an atomic rename) once the whole
    file is there and its MD5 matches. When a ``.part`` file is already there (an earlier
    download broke off) the rest is asked for with an HTTP ``Range: bytes=N-`` request and
    appended; a server that ignores the range (status 200, not 206) sends the whole file, which
    then replaces the partial one. A transfer that breaks off (connection closed before
    ``Content-Length`` bytes, network error) raises :class:`DownloadError` and keeps the
    ``.part`` file for the next try; an MD5 mismatch (:class:`ChecksumError`) deletes it. A
    progress bar goes to stderr when tqdm is installed and ``progress`` is true.
    """
    dest = Path(dest)
    if not url.startswith(("http://", "https://", "file://")):
        raise DataError(f"download URL must be http(s):// or file://, got {url!r}")
    part = _part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = urllib.request.urlopen(  # noqa: S310 - http(s)/file only, checked above
            urllib.request.Request(url, headers=headers), timeout=timeout_s
        )
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is not a prefix the server knows
            part.unlink(missing_ok=True)
            return download_file(url, dest, md5=md5, timeout_s=timeout_s, progress=progress)
        raise DownloadError(
            f"could not download {url}: {one_line(e)}. The machine may be offline; "
            f"download the file by hand and put it at {dest}"
        ) from e
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise DownloadError(
            f"could not download {url}: {one_line(e)}. The machine may be offline; "
            f"download the file by hand and put it at {dest}"
        ) from e
    try:
        _receive(resp, url, dest, part, have, md5, progress)
    except BaseException:
        if part.is_file() and part.stat().st_size == 0:  # nothing arrived: nothing to resume
            part.unlink()
        raise
    os.replace(part, dest)
    return dest


def _receive(resp, url: str, dest: Path, part: Path, have: int, md5, progress: bool) -> None:
    with resp:
        resumed = bool(have) and getattr(resp, "status", None) == 206
        if not resumed:
            have = 0
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        total = have + expected if expected is not None else None
        bar = progress_bar(total, dest.name, enabled=progress)
        if bar is not None and have:
            bar.update(have)
        h = hashlib.md5()
        got = 0
        with open(part, "r+b" if resumed else "wb") as f:
            if resumed:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                f.seek(have)
                f.truncate()
            try:
                while chunk := resp.read(_CHUNK):
                    h.update(chunk)
                    f.write(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                if expected is not None and got < expected:
                    raise DownloadError(
                        f"download of {url} broke off after {have + got} of {total} bytes; "
                        f"the partial file {part} is kept, run again to resume"
                    )
            except (OSError, http.client.HTTPException) as e:
                if isinstance(e, DownloadError):
                    raise
                raise DownloadError(
                    f"download of {url} broke off after {have + got} bytes: {one_line(e)}; "
                    f"the partial file {part} is kept, run again to resume"
                ) from e
            finally:
                if bar is not None:
                    bar.close()
                f.flush()
                os.fsync(f.fileno())
    if md5 is not None and h.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            url, md5, h.hexdigest(), f"nothing was saved to {dest}; check the URL and retry"
        )
