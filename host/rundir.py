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
half-written artifact and ``--resume`` can trust every file it finds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from entropi.device.errors import EntropiError, say
from entropi.device.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    package_version,
)
from entropi.device.lock import lock_folder

__all__ = ["NotARunError", "RunDir", "RunExistsError", "open_run", "rung_arg"]


class RunDir:
    """Paths and atomic writes of one run folder (nothing is created until written)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.lock = None
        """The folder's :class:`~entropi.device.lock.FolderLock` once :func:`open_run` holds it."""

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
        import io

        import numpy as np

        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return atomic_write_bytes(path, buf.getvalue())

    def read_array(self, path: Path):
        import numpy as np

        return np.load(path, allow_pickle=False)

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
        """Rung files in ladder order (dense first)."""
        return sorted(self.rungs_dir.glob("rung_[0-9][0-9][0-9].pt"))

    # --- reads and writes --------------------------------------------------------------------
    def read_json(self, path: Path, default: Any = None) -> Any:
        return json.loads(path.read_text()) if path.is_file() else default

    def write_json(self, path: Path, obj: Any) -> Path:
        return atomic_write_json(path, obj)

    def write_text(self, path: Path, text: str) -> Path:
        return atomic_write_text(path, text)

    def log(self, message: str) -> None:
        """Append a timestamped line to progress.log and echo it to stderr."""
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        say(line)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as f:
            f.write(line + "\n")

    def add_time(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage`` in timings.json (resumed runs accumulate)."""
        t = self.read_json(self.timings, {})
        t[stage] = t.get(stage, 0.0) + seconds
        self.write_json(self.timings, t)

    def stage_seconds(self) -> dict[str, float]:
        return self.read_json(self.timings, {})


class RunExistsError(EntropiError, FileExistsError):
    """The run directory already holds a run and --resume was not given (or another config)."""


class NotARunError(EntropiError, FileNotFoundError):
    """The folder is not a run directory (no config.toml)."""


def open_run(cfg, root: str | os.PathLike, *, resume: bool = False, argv=None):
    """Create (or, with ``resume``, reopen) a run folder; record provenance in run.json.

    A new run needs ``cfg`` (a :class:`~entropi.host.config.RunConfig`); a resumed run reads
    RUNDIR/config.toml and refuses a different ``cfg``, since mixing two configs in one ladder
    would make the results meaningless. Returns ``(cfg, RunDir)``.
    """
    import platform
    import shlex

    import torch

    from .config import config_to_toml

    run = RunDir(root)
    # one writer per run folder, taken before the checks below (two fresh runs started together
    # must not both find the folder empty); held until the process ends or the RunDir goes
    run.lock = lock_folder(run.root, what="run folder")
    try:
        cfg = _checked_config(run, cfg, resume)
    except BaseException:
        run.lock.release()  # and removes the folder again if it made it and it is still empty
        raise
    run.write_text(run.config, config_to_toml(cfg))
    info = run.read_json(run.info, {"invocations": []})
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
    from .config import ConfigError, load_config
    from .train import pick_device

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
        cfg = existing
    elif cfg is None:
        raise NotARunError(f"{run.root} is not a run directory (no config.toml)")
    pick_device(cfg.device)  # device = "cuda" without one: a ConfigError before anything is written
    return cfg


def rung_arg(value: str) -> str | int:
    """argparse type of a ``--rung`` option (``entropi export``, ``bundle``, ``finetune``):
    ``selected`` or a rung index."""
    return value if value == "selected" else int(value)
