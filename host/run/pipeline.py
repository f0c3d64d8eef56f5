"""``entropi run``: the order of the stages, nothing else.

Each stage lives in :mod:`entropi.host.run.stages`, the run folder in
:mod:`entropi.host.run.rundir`,
the run's data in :mod:`entropi.host.run.rundata` and the selection rule in
:mod:`entropi.host.selection.rules`. Every stage skips work whose artifact exists, so ``--resume``
continues an interrupted run from its last finished rung.
"""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Callable
from functools import partial
from typing import Any

from entropi.common.provenance import package_version

from . import distributed
from .config import RunConfig, config_from_dict, config_to_toml
from .records import RunResults
from .report import write_report
from .rundata import check_data, describe_sizes, load_source, load_target
from .rundir import RunDir, RunExistsError, open_run
from .stages import (
    completed_results,
    export_summary,
    stage_device,
    stage_export,
    stage_pretrain,
    stage_prune,
    stage_score,
)
from .stages import select as select_rung_results
from .torch_device import pick_device

__all__ = ["RunExistsError", "open_run", "run_all"]


def _timed(run: RunDir, stage: str, fn, *args):
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        run.add_time(stage, time.perf_counter() - t0)


def open_on_main(
    open_fn: Callable[[], tuple[RunConfig, RunDir]], root: str | os.PathLike
) -> tuple[RunConfig, RunDir]:
    """``open_fn()`` (it opens a run folder at ``root``: locks it, writes its config) on rank 0
    only, the one process that locks and writes the folder; the other processes of a torchrun
    job get its resolved config and a :class:`~entropi.host.run.distributed.FollowerRunDir`."""
    if distributed.world_size() == 1:
        return open_fn()
    opened: list = []

    def main() -> str:
        opened.extend(open_fn())
        return config_to_toml(opened[0])

    text = distributed.from_main(main)
    if distributed.is_main():
        return opened[0], opened[1]
    return config_from_dict(tomllib.loads(text)), distributed.FollowerRunDir(root)


def run_all(
    cfg: RunConfig | None, rundir: str | os.PathLike, *, resume: bool = False, argv=None
) -> RunResults | dict[str, Any]:
    """Every stage in order; returns the results record (also RUNDIR/results.json).

    Under ``torchrun`` (:mod:`.distributed`) every process runs this: all of them train (DDP)
    and score rungs, rank 0 alone writes, selects, exports and returns the results; the others
    return an empty dict after the score stage."""
    distributed.init()  # under torchrun: join the job; otherwise one process, as always
    if cfg is not None and not resume:  # a bad device or data spec fails before the folder is made
        pick_device(cfg.device)
        distributed.main_first(partial(check_data, cfg))
    cfg, run = open_on_main(partial(open_run, cfg, rundir, resume=resume, argv=argv), rundir)
    device = distributed.local_device(pick_device(cfg.device))
    world = distributed.world_size()
    run.log(
        f"run: {cfg.name} -> {run.root} (entropi {package_version()}, device {device}"
        + (f", {world} processes" if world > 1 else "")
        + ")"
    )
    done = distributed.from_main(lambda: completed_results(cfg, run) if resume else None)
    if done is not None:  # a finished run: nothing asks for new work
        run.log(
            f"run: {run.root} is already complete (every rung scored, selected"
            + (", exported" if done.export is not None else "")
            + (", head trained" if done.device is not None else "")
            + "); nothing to redo. `entropi select` re-selects; delete results.json to redo "
            "select, export and device"
        )
        return done if distributed.is_main() else {}
    if resume:  # every data spec checked (listed, not loaded) before the first stage
        distributed.main_first(partial(check_data, cfg))
    src = _timed(run, "load_source", distributed.main_first, partial(load_source, cfg, device))
    run.log(describe_sizes("source", src.sizes))
    sizes = {"source": src.sizes}
    _timed(run, "pretrain", stage_pretrain, cfg, run, src, device)
    _timed(run, "prune", stage_prune, cfg, run, src, device)
    del src
    tgt = _timed(run, "load_target", distributed.main_first, partial(load_target, cfg))
    run.log(describe_sizes("target", tgt.sizes))
    sizes["target"] = tgt.sizes
    if distributed.is_main():
        run.write_json(run.target_classes, tgt.classes)
    _timed(run, "score", stage_score, cfg, run, tgt, device)
    if not distributed.is_main():
        return {}  # rank 0 selects, exports, trains the head and writes the results
    results = select_rung_results(cfg, run)
    sel = results.selected_index
    # with [deploy] limits, the device gets the form and dtype of the row that fits
    pick = (results.deployment or {}).get("pick") or {}
    form, dtype = pick.get("form"), pick.get("dtype")
    if cfg.export.enabled:
        results.export = export_summary(
            _timed(run, "export", stage_export, cfg, run, tgt, sel, form, dtype)
        )
        if cfg.device_train.enabled:
            report = _timed(run, "device", stage_device, cfg, run, tgt, sel, form, dtype)
            results.device = report.summary()
        results.stage_seconds = run.stage_seconds()
    results.data_sizes = sizes  # the images each spec held and those the run used
    results.report = write_report(cfg, run, results).name
    run.write_json(run.results, results.to_dict())
    return results
