"""The error family of entropi and how its CLIs print errors, for every layer.

:class:`EntropiError` is the root of every error entropi raises on bad input, in every layer; each
layer adds its own subclasses (the device runtime's are in :mod:`entropi.device.errors`). Both
CLIs print any ``EntropiError`` as one line (:func:`one_line`, :func:`say`) and exit non-zero;
anything else is a bug (:func:`report_bug`). Standard library only.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from .provenance import package_version

__all__ = [
    "EntropiError",
    "LinkError",
    "OverwriteError",
    "Terminated",
    "escape_controls",
    "one_line",
    "report_bug",
    "say",
    "sigterm_raises",
]


class EntropiError(Exception):
    """Root of every error entropi raises on bad input (a config, a path, data, a budget...)."""


class LinkError(EntropiError):
    """A path entropi would write (a folder, a lock file) is a symbolic link it did not create,
    or not a real folder where one is needed: entropi never writes through a link."""


class OverwriteError(EntropiError, FileExistsError):
    """An output path exists and entropi will not replace it (not empty without overwrite, not
    a folder entropi wrote, the current folder); the message says why."""


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line, as both CLIs print it (an OSError: its text and the path
    it concerns), control characters escaped (:func:`escape_controls`)."""
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    else:
        text = str(e) or type(e).__name__
    return escape_controls(" ".join(text.split()))


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character but those in ``keep`` written as its Python
    escape (ESC as ``\\x1b``, BEL, NUL, DEL, the C1 controls, format characters such as
    U+202E, a lone surrogate of an undecodable file name): a file name in an error line cannot
    then move the cursor, recolour the terminal or hide what follows it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def say(line: str) -> None:
    """Write ``line`` and its newline to stderr in one write, flushed: processes that share the
    pipe (the ranks of a torchrun job) then never splice each other's lines, as ``print``'s
    separate writes of text and newline can. Control characters but newlines are escaped
    (:func:`escape_controls`)."""
    sys.stderr.write(escape_controls(line, keep="\n") + "\n")
    sys.stderr.flush()


def report_bug(prog: str) -> None:
    """Print the traceback of the exception being handled and a line asking to report it: for
    an exception outside entropi's error family (a bug, not bad input)."""
    say(traceback.format_exc().rstrip("\n"))  # escaped: a file name in it cannot drive the tty
    say(
        f"{prog}: internal error (a bug in entropi {package_version()}, not in your input); "
        "please report it with the traceback above and the command you ran"
    )


class Terminated(BaseException):
    """SIGTERM arrived while a CLI ran (raised by the handler :func:`sigterm_raises` installs):
    like ``KeyboardInterrupt`` on Ctrl-C, it unwinds the command, so that locks are released and
    temporaries removed, and the CLI prints one line and exits 143 (128 + SIGTERM)."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises :class:`Terminated` instead of
    killing the process at once; the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
