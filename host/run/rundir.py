"""The run folder: every path of one ``entropi run`` and its atomic writes, in one place.

Layout::

    RUNDIR/config.toml            the resolved config (every key)
    RUNDIR/run.json               provenance: invocations, package version, seed, config hash
    RUNDIR/progress.log           one timestamped line per finished step
    RUNDIR/timings.json           seconds per stage (summed over resumes)
    RUNDIR/rungs/rung_NNN.pt      the ladder, one rung record per file (rung 0 is dense)
    RUNDIR/scores/rung_NNN.json   the selection criteria and probe of each rung
    RUNDIR/features/              each rung's target-training features (float32 .npy) and their
                                  labels: selection confidence and re-selection read them
    RUNDIR/target_classes.json    class names of the target
    RUNDIR/results.json           rung table, selection, export and device summaries
    RUNDIR/report.md              the same for a person: what ran, rungs, files, device result
    RUNDIR/entropy_vs_alpha.png
    RUNDIR/export/                verified encoder files + export.json
    RUNDIR/bundle/                the device bundle
    RUNDIR/target_data.npz        the target in the device runtime's .npz layout
    RUNDIR/head/                  the trained head + train.json

Everything is written atomically (temp file + rename), so an interrupted run never leaves a
half-written artifact, and never through a symbolic link entropi did not create (a folder written
into must be a real folder, :func:`~entropi.common.files.ensure_real_dir`). A run folder may still
come from elsewhere, so everything is read through checked readers: :meth:`RunDir.read_json`
(valid JSON of the expected type), :meth:`RunDir.read_array` (a numeric ``.npy`` of the expected
shape, its header checked before any data is read), :meth:`RunDir.read_score` (a score file's
fields) and :meth:`RunDir.rung_files` (a ladder without gaps). A damaged file is one
:class:`~entropi.export.rung.CheckpointError` or :class:`~entropi.device.errors.DataError` line
naming it and what to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropi.common.errors import EntropiError, LinkError, say
from entropi.common.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    default_mode,
    ensure_real_dir,
)
from entropi.common.lock import lock_folder
from entropi.common.provenance import package_version
from entropi.device.errors import DataError
from entropi.export.rung import CheckpointError

from .config import ConfigError, config_to_toml, load_config
from .torch_device import pick_device

__all__ = [
    "MAX_JSON_BYTES",
    "NotARunError",
    "RunDir",
    "RunExistsError",
    "open_run",
]

MAX_JSON_BYTES = 64 << 20
"""A run-folder JSON file larger than this (64 MB) is refused unread: entropi writes kilobytes."""

_RUNG_NAME = re.compile(r"rung_(\d{3})\.pt")


class RunDir:
    """Paths and atomic writes of one run folder (nothing is created until written)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.lock = None
        """The folder's :class:`~entropi.common.lock.FolderLock` once :func:`open_run` holds it."""

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    # --- paths -------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def info(self) -> Path:
        return self.root / "run.json"

    @property
    def log_file(self) -> Path:
        return self.root / "progress.log"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def rungs_dir(self) -> Path:
        return self.root / "rungs"

    def rung(self, index: int) -> Path:
        return self.rungs_dir / f"rung_{index:03d}.pt"

    def score(self, index: int) -> Path:
        return self.root / "scores" / f"rung_{index:03d}.json"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def features(self, index: int) -> Path:
        return self.features_dir / f"rung_{index:03d}.npy"

    @property
    def feature_labels(self) -> Path:
        return self.features_dir / "labels.npy"

    def write_array(self, path: Path, array) -> Path:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return atomic_write_bytes(path, buf.getvalue())

    def read_array(self, path: Path, *, kind: str, ndim: int, rows: int | None = None):
        """The ``.npy`` array at ``path``, checked: a plain numeric array (``kind``: ``"f"``
        float, ``"i"`` integer) of ``ndim`` dimensions and ``rows`` rows when given, finite.

        numpy reads the header and maps the data (``mmap_mode="r"``, ``allow_pickle=False``), so
        an object array is refused and a header claiming more data than the file holds is caught
        before anything is allocated; the checks run on the map, the copy comes last. Anything
        wrong is a :class:`~entropi.device.errors.DataError` naming the file.
        """
        fix = "delete it and run `entropi run --resume` (or `entropi probe RUNDIR`) to remake it"
        if not path.is_file():  # a FIFO would block the reader, /dev/zero would never end
            raise DataError(f"{path} is not a regular file; {fix}")
        try:
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - numpy's header parser raises ValueError,
            # SyntaxError, tokenize.TokenError, OverflowError, MemoryError...: all mean "corrupt"
            why = " ".join(str(e).split())[:200]
            raise DataError(f"{path} is not a readable .npy array ({why}); {fix}") from None
        want = {"f": "float", "i": "integer"}[kind]
        ok_kind = mm.dtype.kind == kind or (kind == "i" and mm.dtype.kind == "u")
        if not isinstance(mm, np.ndarray) or not ok_kind or mm.dtype.fields is not None:
            raise DataError(f"{path} holds {mm.dtype} data, not {want} numbers; {fix}")
        if mm.ndim != ndim or (rows is not None and mm.shape[0] != rows):
            shape = ("N" if rows is None else str(rows), *("D" * (ndim - 1)))
            raise DataError(
                f"{path} has shape {mm.shape}, expected ({', '.join(shape)}{',' * (ndim == 1)})"
                f"; it does not belong to this run: {fix}"
            )
        out = np.array(mm)
        del mm
        if kind == "f" and not np.isfinite(out).all():
            raise DataError(f"{path} holds NaN or infinite values; {fix}")
        return out

    @property
    def target_classes(self) -> Path:
        return self.root / "target_classes.json"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plot(self) -> Path:
        return self.root / "entropy_vs_alpha.png"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def target_data(self) -> Path:
        return self.root / "target_data.npz"

    @property
    def head(self) -> Path:
        return self.root / "head"

    def rung_files(self) -> list[Path]:
        """Rung files in ladder order (dense first): ``rungs/rung_000.pt`` to ``rung_NNN.pt``.

        Rungs are identified by their index everywhere, so a gap in the ladder (a rung file
        missing between others) is a :class:`CheckpointError` naming the missing rungs, never a
        shorter ladder whose positions would name the wrong rungs."""
        indices = self.rung_indices()
        missing = sorted(set(range(len(indices) and indices[-1] + 1)) - set(indices))
        if missing:
            raise CheckpointError(
                f"{self.root}'s ladder has a gap: rung file(s) "
                f"{', '.join(str(self.rung(i).relative_to(self.root)) for i in missing)} are "
                f"missing (present: rungs {_ranges(indices)}); `entropi run --out {self.root} "
                "--resume` rebuilds them"
            )
        return [self.rung(i) for i in indices]

    def rung_indices(self) -> list[int]:
        """Indices of the rung files present, sorted (gaps allowed: see :meth:`rung_files`)."""
        if not self.rungs_dir.is_dir():
            return []
        found = (_RUNG_NAME.fullmatch(p.name) for p in self.rungs_dir.iterdir())
        return sorted(int(m[1]) for m in found if m)

    # --- reads and writes --------------------------------------------------------------------
    def folder(self, path: Path) -> Path:
        """Make (or accept) the folder ``path`` of the run; a symbolic link there, which
        entropi did not create, is refused (:func:`~entropi.common.files.ensure_real_dir`)."""
        ensure_real_dir(self.root)
        return ensure_real_dir(path)

    def read_json(self, path: Path, default: Any = None, *, kind: type | None = None) -> Any:
        """The JSON value in ``path`` (``default`` when there is no such file), which must be a
        ``kind`` (default: a list for target_classes.json, else a dict); a file that is not
        valid JSON of that kind is a :class:`CheckpointError` naming it."""
        kind = kind or (list if path.name == "target_classes.json" else dict)
        if not os.path.lexists(path):
            return default
        if not path.is_file():
            raise CheckpointError(f"{path} is not a regular file; the run folder is damaged")
        try:
            size = path.stat().st_size
            if size > MAX_JSON_BYTES:
                raise ValueError(f"{size} bytes, more than any entropi writes")
            value = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
            raise CheckpointError(
                f"{path} is not valid JSON ({' '.join(str(e).split())}); the run folder is "
                f"damaged: {_remake(path)}"
            ) from None
        if not isinstance(value, kind):
            raise CheckpointError(
                f"{path} holds a JSON {type(value).__name__}, not a "
                f"{'list' if kind is list else 'table (object)'}; the run folder is damaged: "
                f"{_remake(path)}"
            )
        return value

    def read_score(self, index: int) -> dict[str, Any]:
        """``scores/rung_NNN.json`` of rung ``index``, its fields checked
        (:func:`check_score`); a missing file is a :class:`CheckpointError` naming the rung."""
        path = self.score(index)
        score = self.read_json(path)
        if score is None:
            raise CheckpointError(
                f"rung {index} has no scores ({path.relative_to(self.root)} is missing); "
                f"`entropi probe {self.root}` (or `entropi run --out {self.root} --resume`) "
                "rescores it"
            )
        check_score(score, index, path)
        return score

    def write_json(self, path: Path, obj: Any) -> Path:
        return atomic_write_json(path, obj)

    def write_text(self, path: Path, text: str) -> Path:
        return atomic_write_text(path, text)

    def log(self, message: str) -> None:
        """Append a timestamped line to progress.log and echo it to stderr (a link at
        progress.log is refused, not appended through)."""
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        say(line)
        ensure_real_dir(self.root)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.log_file, flags, default_mode())
        except OSError:
            if os.path.islink(self.log_file):
                raise _link_error(self.log_file) from None
            raise
        with os.fdopen(fd, "a") as f:
            f.write(line + "\n")

    def add_time(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage`` in timings.json (resumed runs accumulate)."""
        t = self.stage_seconds()
        t[stage] = t.get(stage, 0.0) + seconds
        self.write_json(self.timings, t)

    def stage_seconds(self) -> dict[str, float]:
        """timings.json: seconds per stage (checked: stage name -> finite seconds >= 0)."""
        t = self.read_json(self.timings, {})
        bad = [k for k, v in t.items() if not _is_number(v) or v < 0]
        if bad:
            raise CheckpointError(
                f"{self.timings}: stage {bad[0]!r} has {t[bad[0]]!r}, not a number of seconds; "
                f"the run folder is damaged: {_REMAKE['timings.json']}"
            )
        return t


_REMAKE = {
    "timings.json": "delete it (only the wall times of earlier stages are lost)",
    "run.json": "delete it and rerun with --resume (only the record of earlier commands is lost)",
    "results.json": "delete it and run `entropi select RUNDIR` to remake it",
    "export.json": "delete the export folder and rerun the step to remake it",
    "target_classes.json": "delete it and run `entropi run --resume` to remake it",
}
"""What to do about a damaged JSON file of a run folder, by name."""


def _remake(path: Path) -> str:
    """What to do about the damaged JSON file ``path`` of a run folder."""
    if path.parent.name == "scores":
        return "delete it and run `entropi probe RUNDIR` (or `entropi run --resume`) to rescore"
    return _REMAKE.get(path.name, "delete it and rerun the step that wrote it")


def _link_error(path: Path, what: str = "real files of a run folder") -> EntropiError:
    return LinkError(
        f"{path} is a symbolic link; entropi writes only {what}, never through a link it did "
        "not create: remove the link, or choose another folder"
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(i) if i == start else f"{start}-{i}")
            start = None
    return ", ".join(parts) or "none"


_SCORE_FIELDS = {
    "alpha": "number",
    "nnz": "int",
    "source_accuracy": "number?",
    "entropy": "number",
    "distinct_states": "int",
    "n": "int",
    "probe_accuracy": "number",
}
"""Fields every score file has, and their kinds (``?``: None, or NaN, when not measured)."""
_SCORE_OPTIONAL = {
    "per_unit_bound": "number?",
    "probe_accuracy_std": "number",
    "probe_accuracy_se": "number?",
    "criteria_version": "int",
}


def check_score(score: dict[str, Any], index: int, path: Path | str) -> None:
    """A score file's fields (``scores/rung_NNN.json``): its ``index`` is ``index``, the fields
    the selection and the report read have their kinds (a criterion may be None: undefined on
    that rung, with the reason in ``criteria_undefined``), accuracies lie in [0, 1]; else a
    :class:`CheckpointError` naming the file and the field."""

    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}; the score file is damaged: {_remake(Path(path))}")

    if score.get("index") != index or isinstance(score.get("index"), bool):
        raise fail(f"its index is {score.get('index')!r}, not {index}")
    for key, kind in (*_SCORE_FIELDS.items(), *_SCORE_OPTIONAL.items()):
        if key not in score:
            if key in _SCORE_FIELDS:
                raise fail(f"it lacks {key!r}")
            continue
        v = score[key]
        if kind.endswith("?") and (v is None or (isinstance(v, float) and math.isnan(v))):
            continue
        ok = (
            isinstance(v, int) and not isinstance(v, bool) and v >= 0
            if kind == "int"
            else (_is_number(v))
        )
        if not ok:
            raise fail(f"{key} is {v!r}, not a {'count' if kind == 'int' else 'finite number'}")
    for key in ("probe_accuracy", "source_accuracy", "alpha"):
        v = score.get(key)
        if _is_number(v) and not 0.0 <= v <= 1.0:
            raise fail(f"{key} is {v!r}, outside [0, 1]")
    criteria = score.get("criteria", {})
    if not isinstance(criteria, dict) or not all(
        isinstance(k, str) and (v is None or _is_number(v)) for k, v in criteria.items()
    ):
        raise fail("its criteria are not a table of names -> numbers (or null)")
    undefined = score.get("criteria_undefined", {})
    if not isinstance(undefined, dict) or not all(isinstance(v, str) for v in undefined.values()):
        raise fail("criteria_undefined is not a table of names -> reasons")


class RunExistsError(EntropiError, FileExistsError):
    """The run directory already holds a run and --resume was not given (or another config)."""


class NotARunError(EntropiError, FileNotFoundError):
    """The folder is not a run directory (no config.toml)."""


def open_run(cfg, root: str | os.PathLike, *, resume: bool = False, argv=None):
    """Create (or, with ``resume``, reopen) a run folder; record provenance in run.json.

    A new run needs ``cfg`` (a :class:`~entropi.host.run.config.RunConfig`); a resumed run reads
    RUNDIR/config.toml and refuses a different ``cfg``, since mixing two configs in one ladder
    would make the results meaningless. Returns ``(cfg, RunDir)``.
    """

    run = RunDir(root)
    if os.path.islink(run.root):  # the lock file, config and rungs would land where it points
        raise _link_error(run.root, "a run folder")
    # one writer per run folder, taken before the checks below (two fresh runs started together
    # must not both find the folder empty); held until the process ends or the RunDir goes
    run.lock = lock_folder(run.root, what="run folder")
    try:
        cfg = _checked_config(run, cfg, resume)
        info = run.read_json(run.info, {"invocations": []})
        _check_invocations(run, info.get("invocations"))
    except BaseException:
        run.lock.release()  # and removes the folder again if it made it and it is still empty
        raise
    run.write_text(run.config, config_to_toml(cfg))
    info.update(
        package_version=package_version(),
        seed=cfg.seed,
        config_sha256=cfg.digest(),
        python=platform.python_version(),
        torch=torch.__version__,
        host=platform.node(),
    )
    info["invocations"].append(
        {
            "argv": shlex.join(argv if argv is not None else sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resume": resume,
        }
    )
    run.write_json(run.info, info)
    return cfg, run


def _checked_config(run: RunDir, cfg, resume: bool):
    """The config of the run in ``run``: ``cfg`` for a new run, the saved one when resuming
    (refusing a different ``cfg``)."""

    if run.config.is_file():
        try:
            existing = load_config(run.config)
        except ConfigError as e:
            raise ConfigError(
                f"the saved config {run.config} does not validate ({e}): this run cannot be "
                "resumed; start it again in another --out"
            ) from None
        if not resume:
            raise RunExistsError(
                f"{run.root} already holds a run; pass --resume to continue it or choose another "
                "--out"
            )
        if cfg is not None and cfg.digest() != existing.digest():
            raise RunExistsError(
                f"{run.root} was started with a different config; resume it without a config "
                "(entropi run --resume uses the saved one) or choose another --out"
            )
        _check_unedited(run)
        cfg = existing
    elif cfg is None:
        raise NotARunError(f"{run.root} is not a run directory (no config.toml)")
    pick_device(cfg.device)  # device = "cuda" without one: a ConfigError before anything is written
    return cfg


def _check_invocations(run: RunDir, invocations: Any) -> None:
    """run.json's ``invocations``: a list of ``{"argv": str, "started": str, "resume": bool}``."""
    ok = isinstance(invocations, list) and all(
        isinstance(i, dict)
        and isinstance(i.get("argv"), str)
        and isinstance(i.get("started"), str)
        and isinstance(i.get("resume"), bool)
        for i in invocations
    )
    if not ok:
        raise CheckpointError(
            f"{run.info} has no list of invocations (argv, started, resume); the run folder is "
            f"damaged: {_REMAKE['run.json']}"
        )


def _check_unedited(run: RunDir) -> None:
    """config.toml is the file entropi wrote: its sha256 is run.json's ``config_sha256`` (the
    digest of the config as written, so a newer entropi that writes more keys still agrees).
    A hand-edited config would mix two configs in one ladder: a :class:`RunExistsError`. A
    folder with no run.json yet (a run stopped right after writing its config) holds nothing
    made with it unless it has rungs."""

    info = run.read_json(run.info)
    recorded = info.get("config_sha256") if info is not None else None
    if info is None and not run.rung_indices():
        return
    actual = hashlib.sha256(run.config.read_bytes()).hexdigest()
    if recorded != actual:
        what = (
            f"its sha256 {actual[:12]} is not the {recorded[:12]} run.json records"
            if isinstance(recorded, str)
            else "run.json records no config_sha256 for it"
        )
        raise ConfigError(
            f"{run.config} is not the config this run was made with ({what}): it was edited "
            "by hand, and a ladder made with two configs means nothing. Undo the edit, or start "
            "a new run with the edited config in another --out"
        )
