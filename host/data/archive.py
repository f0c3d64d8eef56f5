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
from typing import BinaryIO

from entropi.device.errors import EntropiError
from entropi.device.io import atomic_write

from .base import ChecksumError, DataError, UnsafeArchiveError, progress_bar

__all__ = ["DownloadError", "check_members", "download_file", "extract_tar"]

_CHUNK = 1 << 20


class DownloadError(EntropiError, OSError):
    """A download failed (offline machine, bad URL, HTTP error); the message is one line."""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def check_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Return the members of ``tar`` or raise :class:`UnsafeArchiveError` for the first bad one.

    Only regular files and folders with relative paths and no ``..`` component are accepted;
    links, devices and absolute paths are rejected, since a dataset archive never needs them.
    """
    members = tar.getmembers()
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
            f"cannot read archive {archive}: {_one_line(e)}; the file is corrupt or not a tar "
            f"archive, download it again"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking the MD5 before the file appears.

    The bytes go to a temp file next to ``dest``; on an MD5 mismatch (:class:`ChecksumError`), a
    network error (:class:`DownloadError`) or Ctrl-C the temp file is removed and ``dest`` is not
    created. A progress bar goes to stderr when tqdm is installed and ``progress`` is true.
    """
    dest = Path(dest)

    def write(f: BinaryIO) -> None:
        try:
            resp = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310 - http(s) only
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            raise DownloadError(
                f"could not download {url}: {_one_line(e)}. The machine may be offline; "
                f"download the file by hand and put it at {dest}"
            ) from e
        with resp:
            length = resp.headers.get("Content-Length")
            bar = progress_bar(int(length) if length else None, dest.name, enabled=progress)
            h = hashlib.md5()
            try:
                while chunk := resp.read(_CHUNK):
                    h.update(chunk)
                    f.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(
                    f"download of {url} broke off: {_one_line(e)}; try again"
                ) from e
            finally:
                if bar is not None:
                    bar.close()
        if md5 is not None and h.hexdigest() != md5:
            raise ChecksumError(
                url, md5, h.hexdigest(), f"nothing was saved to {dest}; check the URL and retry"
            )

    if not url.startswith(("http://", "https://", "file://")):
        raise DataError(f"download URL must be http(s):// or file://, got {url!r}")
    return atomic_write(dest, write)
