"""Exceptions of entropi: the package root :class:`EntropiError` and the device runtime's errors.

:class:`EntropiError` is the root of every error entropi raises on bad input, in every layer; it
lives here, in the lowest layer, so that the device runtime stays importable with numpy alone.
Both CLIs print any ``EntropiError`` as one line and exit non-zero. Device errors are also
``ValueError`` subclasses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "BudgetError",
    "BundleError",
    "ChecksumError",
    "DataError",
    "DeviceError",
    "EntropiError",
    "FormatVersionError",
    "LinkError",
    "OverwriteError",
    "ResumeError",
    "Terminated",
    "TrainConfigError",
    "escape_controls",
    "one_line",
    "report_bug",
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


class DeviceError(EntropiError, ValueError):
    """Base class of every error the device runtime raises on bad input."""


class BundleError(DeviceError):
    """A bundle directory or its manifest is missing, malformed or unusable."""


class ChecksumError(BundleError):
    """A file of a bundle does not match the sha256 recorded in its manifest."""


class FormatVersionError(BundleError):
    """The bundle was written by a newer entropi than this runtime understands."""


class DataError(DeviceError):
    """Images, labels or features are unusable (shape, NaN/inf, label range, class count)."""


class BudgetError(DeviceError):
    """The training loop cannot fit the memory budget; the message states the minimum."""

    def __init__(self, message: str, *, minimum_bytes: int) -> None:
        super().__init__(message)
        self.minimum_bytes = minimum_bytes


class ResumeError(DeviceError):
    """A training checkpoint is corrupt or was made with a different configuration."""


class TrainConfigError(DeviceError):
    """A training setting (a :class:`.config.TrainConfig` field, a size string) is malformed or
    out of range."""


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
    import sys

    sys.stderr.write(escape_controls(line, keep="\n") + "\n")
    sys.stderr.flush()


def report_bug(prog: str) -> None:
    """Print the traceback of the exception being handled and a line asking to report it: for
    an exception outside entropi's error family (a bug, not bad input)."""
    import traceback

    from entropi.common.provenance import package_version

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
    import signal
    import threading

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
