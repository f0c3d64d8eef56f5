"""Atomic writes for every artifact of entropi, and real folders to write them into.

Shared by every layer; standard library only.

Every file is written to a temp file in the target folder, fsynced and renamed over the target,
so a failure leaves the previous file (or nothing), never a half-written one. Nothing is written
through a link entropi did not create: a folder written into must be a real folder
(:func:`ensure_real_dir`; a symbolic link there is refused with :class:`.errors.LinkError`), and
a file is replaced by a rename, which replaces a link at its name rather than writing through
it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import LinkError, OverwriteError

__all__ = [
    "atomic_dir",
    "check_replaceable",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "default_mode",
    "ensure_real_dir",
]


def ensure_real_dir(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents) or accept an existing one; ``path``.

    :class:`.errors.LinkError` when ``path`` is a symbolic link (whatever it points to: entropi
    writes into a folder, never through a link it did not create) or exists and is not a
    folder. Links among the parents of ``path`` are the user's own layout and are followed.
    """
    path = Path(path)
    if not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass  # made meanwhile: checked below
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        raise LinkError(
            f"{path} is a symbolic link; entropi writes only into real folders, never through "
            "a link it did not create: remove the link, or choose another folder"
        )
    if not stat.S_ISDIR(mode):
        raise LinkError(f"{path} exists and is not a folder; remove it, or choose another folder")
    return path


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], None], *, buffering: int = -1
) -> Path:
    """Call ``write(f)`` on a temp file next to ``path`` and rename it to ``path`` on success.

    ``buffering`` is passed to ``open`` (the default buffer is the file system's block size,
    often 64 KB or more; the training loop asks for less). The folder of ``path`` is made if
    needed and must be a real folder (:func:`ensure_real_dir`); a link at ``path`` itself is
    replaced, never written through.
    """
    path = Path(path)
    ensure_real_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb", buffering=buffering) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e  # name the file
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path``, atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``, atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """Permissions a plain open()/mkdir() would give under the current umask (mkstemp and
    mkdtemp use 0600/0700, which would make shared run artifacts unreadable to others)."""
    return (0o777 if directory else 0o666) & ~_umask()


@contextmanager
def atomic_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    foreign: Callable[[Path], str | None] | None = None,
) -> Iterator[Path]:
    """Yield a temp folder next to ``path``; rename it to ``path`` when the block succeeds.

    On an exception the temp folder is removed and ``path`` is untouched. An existing empty
    folder at ``path`` is replaced. An existing non-empty one is replaced (moved aside first,
    then deleted) only with ``overwrite`` and only when ``foreign(path)`` is None: the caller's
    test that entropi wrote that folder (a bundle: its manifest lists every file), returning
    why it is not otherwise. Everything else is refused with :class:`.errors.OverwriteError`
    before anything is made or moved: a non-empty folder without ``overwrite``, a folder entropi
    did not write, the current folder or one of its parents, a file; a symbolic link at ``path``
    or its folder is a :class:`.errors.LinkError`.
    """
    path = Path(os.path.abspath(path))  # "." gets its real name (temporaries are named after it)
    check_replaceable(path, overwrite, foreign)
    ensure_real_dir(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(
    path: Path, overwrite: bool, foreign: Callable[[Path], str | None] | None
) -> None:
    """Refuse (see :func:`atomic_dir`) what may not be replaced by a folder: callers with long
    work before the write check their output with it first."""
    path = Path(os.path.abspath(path))
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        raise LinkError(
            f"{path} is a symbolic link; entropi replaces only folders it wrote, never a link: "
            "remove it, or choose another path"
        )
    if not path.is_dir():
        raise OverwriteError(f"{path} exists and is not a folder; choose another path")
    cwd = Path.cwd().resolve()
    if path.resolve() == cwd or path.resolve() in cwd.parents:
        raise OverwriteError(
            f"{path} is the current folder or one of its parents; it cannot be replaced: "
            "choose a new sub-folder as the output"
        )
    if not any(path.iterdir()):
        return
    if not overwrite:
        raise OverwriteError(f"{path} exists and is not empty; choose another path")
    why = foreign(path) if foreign is not None else "nothing says entropi wrote it"
    if why is not None:
        raise OverwriteError(
            f"{path} exists and will not be replaced: {why}; entropi overwrites only a folder "
            "it wrote. Move it away, or choose another path"
        )


def _replace_dir(tmp: Path, path: Path) -> None:
    """Rename the folder ``tmp`` to ``path``, an existing ``path`` moved aside first and then
    deleted; if the rename fails, ``path`` is moved back and no temporary is left behind."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    try:
        os.replace(path, old / "x")
    except BaseException:
        os.rmdir(old)
        raise
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old / "x", path)
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)
