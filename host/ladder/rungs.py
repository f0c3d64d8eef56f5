"""The rungs of a run folder as PyTorch modules: list, resolve, load, rebuild.

A rung file is one rung record (:mod:`entropi.export.rung`: :class:`RungInfo` plus the encoder,
source-head and mask state dicts, read with :func:`load_rung_file`); the layout of the run folder
is in :mod:`entropi.host.run.rundir`'s docstring. This module adds what needs the host's model
registry: building the encoder (or the whole source classifier) a rung describes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from entropi.export.rung import CheckpointError, Rung, RungInfo, load_rung_file

from ..run.records import read_selection
from ..run.rundir import RunDir
from .channels import resize_to_widths
from .models import ARCHITECTURES, Classifier, build_encoder, prunable_parameters

__all__ = [
    "CheckpointError",
    "as_rundir",
    "classifier_from_rung",
    "list_rungs",
    "load_rung",
    "resolve_rung",
]


def as_rundir(rundir: str | os.PathLike | RunDir) -> RunDir:
    """The run folder ``rundir`` names (a :class:`RunDir` is returned as it is)."""
    return rundir if isinstance(rundir, RunDir) else RunDir(rundir)


def list_rungs(rundir: str | os.PathLike | RunDir) -> list[Path]:
    """Rung files of a run, in ladder order (dense first)."""
    run = as_rundir(rundir)
    if not run.root.is_dir():
        raise CheckpointError(f"run directory {run.root} does not exist")
    return run.rung_files()


def resolve_rung(rundir: str | os.PathLike | RunDir, rung: str | int = "selected") -> int:
    """Turn ``"selected"`` (``selected_index`` of results.json) or an index into a rung index."""
    run = as_rundir(rundir)
    rungs = list_rungs(run)
    if not rungs:
        raise CheckpointError(
            f"run directory {run.root} has no pruning ladder (no rungs/rung_NNN.pt); "
            "run `entropi prune` (or `entropi run`) first"
        )
    if rung == "selected":
        if not run.results.is_file():
            raise CheckpointError(
                f"{run.results} does not exist, so no rung is selected yet; run `entropi select` "
                "or pass a rung index"
            )
        index, _ = read_selection(run.results)
        if isinstance(index, bool) or not isinstance(index, int):
            raise CheckpointError(
                f"{run.results} names no selected rung (selected_index is {index!r}); run "
                f"`entropi select {run.root}` or pass a rung index"
            )
    else:
        if isinstance(rung, bool):
            raise CheckpointError(f"rung must be 'selected' or an integer, got {rung!r}")
        try:
            index = int(rung)
        except (TypeError, ValueError):
            raise CheckpointError(f"rung must be 'selected' or an integer, got {rung!r}") from None
    if not 0 <= index < len(rungs):
        raise CheckpointError(
            f"rung {index} does not exist in {run.root}: the ladder has rungs 0..{len(rungs) - 1}"
        )
    return index


def load_rung(
    rundir: str | os.PathLike | RunDir, rung: str | int = "selected"
) -> tuple[torch.nn.Module, RungInfo]:
    """Load one rung of a run as an eval-mode encoder plus its :class:`RungInfo` (``index`` set)."""
    run = as_rundir(rundir)
    index = resolve_rung(run, rung)
    path = run.rung(index)
    record = load_rung_file(path, index)
    encoder = _build_encoder(record.info, path)
    _load_state(encoder, record.encoder, "encoder", record.info, path)
    return encoder.eval(), record.info


def classifier_from_rung(rung: Rung) -> Classifier:
    """Rebuild the full source classifier (encoder + source head) of a rung record."""
    info = rung.info
    where = f"rung {info.index}" if info.index is not None else None
    encoder = _build_encoder(info, where)
    model = Classifier(encoder, encoder.feature_dim, info.num_source_classes)
    _load_state(model.encoder, rung.encoder, "encoder", info, where)
    _load_state(model.head, rung.head, "head", info, where)
    prunable = {k for k, _ in prunable_parameters(model.encoder)}
    stray = [k for k in rung.masks if k not in prunable]
    if stray:
        raise CheckpointError(
            f"checkpoint {where or '(in memory)'}: mask {stray[0]!r} masks no weight of arch "
            f"{info.arch!r}; the rung file is damaged"
        )
    return model


def _build_encoder(info: RungInfo, where) -> torch.nn.Module:
    if info.arch not in ARCHITECTURES:
        raise CheckpointError(
            f"checkpoint {where or '(in memory)'} has architecture {info.arch!r}, which this "
            f"entropi does not know (known: {', '.join(sorted(ARCHITECTURES))})"
        )
    if ARCHITECTURES[info.arch].feature_dim != info.feature_dim:
        raise CheckpointError(
            f"checkpoint {where or '(in memory)'}: feature_dim {info.feature_dim} is not the "
            f"{ARCHITECTURES[info.arch].feature_dim} of arch {info.arch!r}; the rung file is "
            "damaged"
        )
    encoder = build_encoder(info.arch)
    if info.widths is not None:  # a channel rung: the smaller network its widths describe
        resize_to_widths(encoder, info.widths, f"checkpoint {where or '(in memory)'}")
    return encoder


def _load_state(
    module: torch.nn.Module, state: dict[str, Any], key: str, info: RungInfo, where
) -> None:
    """``module.load_state_dict(state)``, a mismatch reported as :class:`CheckpointError`."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {where or '(in memory)'}: {key} does not match arch {info.arch!r}: {e}"
        ) from e
