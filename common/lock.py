"""One writer per output folder: an advisory lock file, ``FOLDER/.entropi.lock``.

Run folders, device head folders and export folders are written by long jobs; two jobs writing
one folder corrupt it (both train, one dies on a shared temporary file, the survivor's results
differ from an uninterrupted run). :func:`lock_folder` takes an exclusive ``flock`` on the lock
file before anything is read or written and keeps it until :meth:`FolderLock.release`, the end
of the process, or the :class:`FolderLock` being garbage-collected (keep a reference). A second
writer is refused with :class:`LockError` naming the holder (pid, host, start time, command),
read from the lock file. The lock file is opened without following a link
(``O_NOFOLLOW``): a symbolic link, a hard link to another file or any other non-regular file
planted at its name is refused with :class:`LockError`, so the lock never writes through it.

The kernel drops an ``flock`` when its process dies, however it dies (SIGKILL included), so a
stale lock file left by a dead process is simply taken over; nothing has to guess whether a pid
is alive. Once it holds the lock of a folder an entropi writer has locked before,
:func:`lock_folder` removes the temporaries a killed writer left in it (entropi's own names,
:data:`_TEMPORARY`, at most two folders deep, not in a sub-folder locked by a writer of its
own): no other writer can own them.

The lock is re-entrant within a process (the study opens one ladder folder for many targets): a
second :func:`lock_folder` of the same folder in the same process shares the first lock, which is
released when the last holder releases it.

Locks are advisory and need a file system with ``flock`` (local POSIX file systems; on NFS,
Linux emulates it with byte-range locks). Where ``fcntl`` is missing (Windows) folders are not
locked. Standard library only: the device imports it.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import stat
import sys
import threading
import time
from pathlib import Path

from .errors import EntropiError

__all__ = ["LOCK_NAME", "FolderLock", "LockError", "lock_folder", "remove_stale_temporaries"]

LOCK_NAME = ".entropi.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class LockError(EntropiError):
    """Another process is writing the folder; the message names it."""


_held: dict[str, list] = {}  # resolved folder -> [fd, holders]
_mutex = threading.Lock()


class FolderLock:
    """One holder's share of a folder's lock; :meth:`release` it (or use it as a context)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.removed: list[Path] = []
        """Temporary files of killed writers this lock removed when it was taken."""
        self._released = False

    def release(self) -> None:
        """Drop this holder; the lock file is unlocked when the last holder in the process goes."""
        if self._released:
            return
        self._released = True
        with _mutex:
            entry = _held.get(str(self.folder))
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _held[str(self.folder)]
                fd, _, created = entry
                if created:  # a folder this lock made and nothing else filled: remove it again
                    try:
                        if [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
                            os.unlink(self.folder / LOCK_NAME)  # still locked: see lock_folder
                            os.rmdir(self.folder)
                    except OSError:
                        pass
                os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _holder(path: Path) -> str:
    """Who holds the lock, from its file. A holder writes it just after taking the lock, so an
    empty or partial file is read again for up to half a second."""
    for _ in range(20):
        try:
            info = json.loads(path.read_text())
            return (
                f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
            )
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.025)
    return "another process (its lock file is unreadable)"


def lock_folder(folder: str | os.PathLike, *, what: str = "folder") -> FolderLock:
    """Create ``folder`` if needed and lock it for this process; :class:`LockError` when another
    process holds it. ``what`` names the folder in the message ("run folder", ...)."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    key = Path(os.path.realpath(folder))
    with _mutex:
        entry = _held.get(str(key))
        if entry is not None:
            entry[1] += 1
            return FolderLock(key)
        if fcntl is None:  # pragma: no cover - Windows: no locking
            _held[str(key)] = [os.open(os.devnull, os.O_RDONLY), 1, False]
            return FolderLock(key)
        reused = (key / LOCK_NAME).is_file()  # an entropi writer has used this folder before
        fd = _flock(key / LOCK_NAME, folder, what)
        try:
            info = {
                "pid": os.getpid(),
                "host": platform.node(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv) or sys.executable,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        _held[str(key)] = [fd, 1, created]
        lock = FolderLock(key)
    if reused:
        lock.removed = remove_stale_temporaries(key)
    return lock


_TEMPORARY = re.compile(r"^\..+\.(?:\d+\.)?[A-Za-z0-9_]{8}\.(?:tmp|old)$|^\..+\.\d+\.tmp$")
"""The names entropi's writers give temporaries: ``.NAME.XXXXXXXX.tmp`` / ``.old`` (mkstemp and
mkdtemp in :mod:`.io`), ``.NAME.PID.XXXXXXXX.tmp`` (export folders), ``.NAME.PID.tmp`` (the
feature store)."""


def _is_temporary(name: str) -> bool:
    return bool(_TEMPORARY.match(name)) and name != LOCK_NAME


def remove_stale_temporaries(folder: Path, *, depth: int = 2) -> list[Path]:
    """Remove entropi's temporary files and folders (:data:`_TEMPORARY`) in ``folder`` and its
    sub-folders down to ``depth`` levels, which the caller has locked; the removed paths. Called
    only for a folder an entropi writer has locked before (its lock file was there), and a
    sub-folder with a lock file of its own (another writer's, say a head folder inside a run) is
    left to its writer."""
    removed = []
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            if _is_temporary(name):
                path = Path(root) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        level = len(Path(root).parts) - base
        dirs[:] = [
            d
            for d in dirs
            if not _is_temporary(d)
            and level < depth
            and not (Path(root) / d / LOCK_NAME).exists()
            and not (Path(root) / d).is_symlink()
        ]
    return removed


def _flock(path: Path, folder: Path, what: str) -> int:
    """Open and lock ``path``; the descriptor. A holder that removes its lock file (and folder)
    does so while it still holds the lock, so a lock taken on a file that is no longer at
    ``path`` is dropped and taken again on the file that is."""
    for _ in range(100):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockError(
                f"{what} {folder} is in use by {_holder(path)}; wait for it to finish, or use "
                "another folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise LockError(f"could not lock {what} {folder}: its lock file keeps being replaced")


def _open_lock_file(path: Path) -> int:
    """Open (or create) the lock file ``path`` for writing without following a link: a planted
    symbolic link (or a FIFO, a device..., or a hard link to another file) would make the lock's
    JSON overwrite whatever it points to, so anything but a regular file with one link is
    refused with :class:`LockError`."""
    why = "a symbolic link"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
    else:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            os.set_blocking(fd, True)
            return fd
        os.close(fd)
        why = "a hard link to another file" if stat.S_ISREG(st.st_mode) else "not a regular file"
    raise LockError(
        f"lock file {path} is {why}; entropi never writes through a link or into a special "
        "file: remove it, or use another folder"
    )
