"""`entropi` command line: a thin layer over the Python API, one function per subcommand.

Subcommands beyond the pipeline's come from plugins: a package names a function
``add(subparsers) -> {name: run}`` in the ``entropi.commands`` entry-point group (the benchmarks
add ``entropi bench`` this way, so the host never imports the layer above it). ``entropi finetune``
and ``entropi analyze cka`` are host commands (:mod:`.analysis.commands`).

Each subcommand's arguments are added by its ``_args_*`` function (:data:`COMMANDS`). A flag that
sets a config field is generated from that field (:mod:`entropi.common.cliargs`): its type, its
help and its default come from the dataclass, or it is unset and the run's own config decides.
Building the parser imports no torch, so `entropi --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy

from entropi.common.cliargs import (
    LazyChoices,
    add_dataclass_arguments,
    add_field_argument,
    attach_dash_values,
    keep_choices_lazy,
    rung_arg,
)
from entropi.common.dtypes import QUANTIZE, QUANTIZE_DTYPE
from entropi.common.errors import (
    EntropiError,
    Terminated,
    one_line,
    report_bug,
    say,
    sigterm_raises,
)
from entropi.common.lock import lock_folder
from entropi.common.provenance import package_version
from entropi.device.budget import format_size

from .analysis.commands import add_command as add_analysis_commands
from .deployment.runtimes import RUNTIMES
from .run.config import (
    ConfigError,
    DataConfig,
    DeployConfig,
    EntropyConfig,
    ExportConfig,
    SelectConfig,
    load_config,
)
from .selection.criteria import (
    CRITERIA,
    CriterionError,
    CriterionOptions,
    as_criterion,
    compute_criteria,
)
from .selection.entropy import FeatureError, state_entropy
from .selection.rules import stored_value

__all__ = ["main"]

PLUGIN_GROUP = "entropi.commands"


# The export registries are read on first use (LazyChoices): entropi.export imports torch.
def _formats() -> list[str]:
    # lazy: keeps `entropi --help` from importing torch
    from entropi.export.formats import FORMATS

    return list(FORMATS)


def _forms() -> list[str]:
    # lazy: keeps `entropi --help` from importing torch
    from entropi.export.formats import ENCODER_FORMS

    return list(ENCODER_FORMS)


def _overrides(a: argparse.Namespace) -> list[str]:
    """``--set`` plus the ``--source`` / ``--target`` shorthands, in that order."""
    sets = list(a.set or [])
    sets += [f"data.{k}={getattr(a, k)}" for k in ("source", "target") if getattr(a, k, None)]
    return sets


def _load(a: argparse.Namespace):

    return load_config(a.config, _overrides(a))


def _run_args(a: argparse.Namespace) -> list[str]:
    """``entropi run``'s arguments as given (without --nproc / --max-restarts)."""
    argv = [a.config] if a.config else []
    argv += ["--out", a.out] if a.out else []
    argv += ["--resume"] if a.resume else []
    for key in ("set", "source", "target"):
        values = getattr(a, key, None)
        for v in values if isinstance(values, list) else [values] if values else []:
            argv += [f"--{key}", v]
    return argv


def _study_args(a: argparse.Namespace) -> list[str]:
    """``entropi study``'s arguments as given (without --nproc / --max-restarts)."""
    return [a.study, "--out", a.out]


_RELAUNCHED = {"run": _run_args, "study": _study_args}
"""The subcommands ``--nproc`` starts under torchrun, and how each repeats its arguments."""


def _torchrun_argv(a: argparse.Namespace, command: str = "run") -> list[str]:
    """torchrun (through :mod:`.launch`, which reports a failed job in one line) starting
    ``a.nproc`` copies of this ``command`` (``run`` or ``study``)."""
    argv = [sys.executable, "-m", "entropi.host.launch", "--standalone"]
    argv += ["--nproc-per-node", str(a.nproc), "--max-restarts", str(a.max_restarts)]
    return argv + ["-m", "entropi.host.cli", command, *_RELAUNCHED[command](a)]


def _torchrun(a: argparse.Namespace, command: str) -> int | None:
    """With ``--nproc N`` > 1 or ``--max-restarts K`` > 0: run ``command`` under torchrun and
    return its exit status; None when this process is to run it itself."""

    if a.nproc < 1 or a.max_restarts < 0:
        raise ConfigError(
            f"--nproc must be >= 1 and --max-restarts >= 0, got {a.nproc} and {a.max_restarts}"
        )
    if a.nproc == 1 and a.max_restarts == 0:
        return None

    if os.environ.get("TORCHELASTIC_RUN_ID"):
        raise ConfigError("--nproc / --max-restarts start torchrun: not from inside torchrun")
    return subprocess.call(_torchrun_argv(a, command))


def _in_job(fn: Callable[[], Any], again: str) -> tuple[Any, bool]:
    """``fn()`` (it joins the torchrun job, if any) and whether this process is rank 0; the
    process group is left afterwards. A peer lost mid-collective, or a collective timed out,
    becomes a :class:`~entropi.host.run.distributed.RankFailedError` saying so (``again``: how to
    continue by hand)."""
    # lazy: keeps `entropi --help` from importing torch
    from torch.distributed import DistError

    # lazy: keeps `entropi --help` from importing torch
    from .run import distributed

    try:
        value = fn()
        return value, distributed.is_main()
    except (DistError, RuntimeError) as e:
        lost = isinstance(e, DistError) or distributed.lost_peer(e)
        if isinstance(e, distributed.DistributedError) or not lost:
            raise
        # a peer died mid-collective (gloo raises a plain RuntimeError), or a collective timed out
        raise distributed.RankFailedError(
            f"rank {distributed.rank()}: the job lost a process or timed out ({e}); torchrun "
            f"restarts it with --max-restarts, or {again}"
        ) from e
    finally:
        distributed.shutdown()


def _cmd_run(a: argparse.Namespace) -> int:

    status = _torchrun(a, "run")
    if status is not None:
        return status

    # lazy: keeps `entropi --help` from importing torch
    from .run import distributed

    # lazy: keeps `entropi --help` from importing torch
    from .run.pipeline import run_all

    cfg = _load(a) if a.config else None
    if cfg is None and not (a.resume and a.out):
        raise ConfigError("a CONFIG is needed unless --resume continues an existing --out RUNDIR")
    if cfg is None and _overrides(a):
        raise ConfigError(
            "--set/--source/--target need a CONFIG (a resumed run keeps its own); to deploy a "
            f"finished run as int8, `entropi select {a.out} --flash SIZE --ram SIZE` considers "
            f"int8 rows and `entropi bundle --run {a.out} --out BUNDLE` bundles the pick "
            "(or `--quantize int8`)"
        )
    out = a.out or f"runs/{cfg.name}"
    # torchrun restarted the workers (--max-restarts): continue the run their first try began
    resume = a.resume or distributed.restart_count() > 0
    results, main = _in_job(
        lambda: run_all(cfg, out, resume=resume),
        "continue with `entropi run --out RUNDIR --resume`",
    )
    if not main:
        return 0  # rank 0 prints
    _print_summary(results, out)
    if results.report:
        print(f"report: {Path(out) / results.report}")
    return 0


def _print_summary(results: Any, out) -> None:
    """The rung table and the pick of a :class:`~entropi.host.run.records.RunResults`."""

    crit = results.criterion
    value = f"{crit[:12]:>12}"
    print(f"{'rung':>4} {'alpha':>9} {'nnz':>9} {'src acc':>8} {'entropy':>8} {value} {'probe':>7}")
    for r in results.rungs:
        mark = " <- selected" if r.index == results.selected_index else ""
        mark += " (best probe)" if r.index == results.best_probe_index else ""
        v = stored_value(r, crit)
        v = float("nan") if v is None else v
        print(
            f"{r.index:>4} {r.alpha:>9.5f} {r.nnz:>9} {r.source_accuracy:>8.4f} "
            f"{r.entropy:>8.4f} {v:>12.4f} {r.probe_accuracy:>7.4f}{mark}"
        )
    summary = results.criteria_summary
    if summary:
        print(f"\n{'criterion':<16} {'pick':>4} {'regret':>7} {'tau':>6} {'w.tau':>6}")
        for name, s in summary.items():
            mark = " <- used" if name == crit else ""
            tau, wtau = ("-" if t is None else f"{t:.2f}" for t in (s.kendall_tau, s.weighted_tau))
            print(
                f"{name:<16} {s.selected_index:>4} {100 * s.regret:>7.2f} {tau:>6} {wtau:>6}{mark}"
            )
        print("(regret in probe points; tau = Kendall tau vs probe accuracy)")
    conf = results.selection_confidence
    tail = f"; confidence {conf:.2f}" if conf is not None else ""
    se = results.probe_se
    se = f"test-set SE {100 * se:.2f}, " if se is not None else ""
    print(
        f"selected rung {results.selected_index} by {crit} ({results.rule}); regret "
        f"{100 * results.regret:.2f} points ({se}probe spread "
        f"{100 * results.probe_spread:.2f}){tail}; results in "
        f"{Path(out) / 'results.json'}"
    )


def _open(a: argparse.Namespace):
    """Reopen RUNDIR with its saved config."""
    # lazy: keeps `entropi --help` from importing torch
    from .run.rundir import open_run

    # lazy: keeps `entropi --help` from importing torch
    from .run.torch_device import pick_device

    cfg, run = open_run(None, a.run, resume=True)
    return cfg, run, pick_device(cfg.device)


def _cmd_pretrain(a: argparse.Namespace) -> int:
    # lazy: keeps `entropi --help` from importing torch
    from .run.rundata import load_source

    # lazy: keeps `entropi --help` from importing torch
    from .run.rundir import open_run

    # lazy: keeps `entropi --help` from importing torch
    from .run.stages import stage_pretrain

    # lazy: keeps `entropi --help` from importing torch
    from .run.torch_device import pick_device

    cfg, run = open_run(_load(a), a.out, resume=a.resume)
    device = pick_device(cfg.device)
    stage_pretrain(cfg, run, load_source(cfg, device), device)
    return 0


def _cmd_prune(a: argparse.Namespace) -> int:
    # lazy: keeps `entropi --help` from importing torch
    from .run.rundata import load_source

    # lazy: keeps `entropi --help` from importing torch
    from .run.stages import stage_prune

    cfg, run, device = _open(a)
    stage_prune(cfg, run, load_source(cfg, device), device)
    return 0


def _cmd_probe(a: argparse.Namespace) -> int:
    # lazy: keeps `entropi --help` from importing torch
    from .run.rundata import load_target

    # lazy: keeps `entropi --help` from importing torch
    from .run.stages import reuse_ladder, stage_score, stage_select

    overrides = _overrides(a)
    if not overrides and not a.out:
        cfg, run, device = _open(a)
        scores = stage_score(cfg, run, load_target(cfg), device)
        print(json.dumps([s.to_dict() for s in scores], indent=2))
        return 0
    # score RUNDIR's ladder, as it is, on another target: a new run folder sharing its rungs;
    # RUNDIR is only read (not locked, no invocation recorded), so ladders can be probed at once

    # lazy: keeps `entropi --help` from importing torch
    from .run.rundir import NotARunError, RunDir

    # lazy: keeps `entropi --help` from importing torch
    from .run.torch_device import pick_device

    run = RunDir(a.run)
    if not run.config.is_file():
        raise NotARunError(f"{run.root} is not a run directory (no config.toml)")
    cfg = load_config(run.config)
    device = pick_device(cfg.device)
    cfg, new = reuse_ladder(cfg, run, a.out, overrides)
    stage_score(cfg, new, load_target(cfg), device)
    _print_summary(stage_select(cfg, new), new.root)
    return 0


def _cmd_select(a: argparse.Namespace) -> int:
    # lazy: keeps `entropi --help` from importing torch
    from .run.stages import stage_select

    if a.criterion is not None:  # before the run is opened
        as_criterion(a.criterion)
    # lazy: keeps `entropi --help` from importing torch
    from .deployment.fit import parse_limit, table_markdown

    flash, ram = parse_limit(a.flash, "--flash"), parse_limit(a.ram, "--ram")
    cfg, run, _ = _open(a)
    if a.rule is not None:  # the selection rule for this selection ([select] rule)
        cfg = dataclasses.replace(cfg, select=dataclasses.replace(cfg.select, rule=a.rule))
    if a.runtime is not None:  # the device's runtime for this selection ([deploy] runtime)
        cfg = dataclasses.replace(cfg, deploy=dataclasses.replace(cfg.deploy, runtime=a.runtime))
    results = stage_select(cfg, run, a.criterion, flash=flash, ram=ram)
    dep = results.deployment
    if dep:
        print(table_markdown(dep["table"], dep["pick"]))
    _print_summary(results, run.root)
    if dep:
        p = dep["pick"]
        print(
            f"fits the device: rung {p['rung']} as {p['form']} {p['dtype']} (flash "
            f"{p['flash_bytes']} B, RAM {p['ram_bytes']} B); rungs that fit: {dep['fitting_rungs']}"
            f"; `entropi bundle --run {run.root} --out BUNDLE` bundles it so"
        )
    return 0


def _cmd_study(a: argparse.Namespace) -> int:
    status = _torchrun(a, "study")
    if status is not None:
        return status
    # lazy: keeps `entropi --help` from importing torch
    from .selection.study import load_study, run_study

    study = load_study(a.study)
    doc, main = _in_job(
        lambda: run_study(study, a.out, log=lambda m: print(m, file=sys.stderr, flush=True)),
        "run the same `entropi study` again (it continues where it stopped)",
    )
    if not main:
        return 0  # rank 0 prints
    s = doc["summary"]
    print(
        f"study {study.name}: {s['pairs']} pairs (+{s['holdout_pairs']} held out); recommended "
        f"default {s['recommended']}; {Path(a.out) / 'study.md'}"
    )
    return 0


def _load_npy(path: str, what: str, error: type[Exception]):
    """A ``.npy`` array file, its header checked before anything is read: ``error`` (one line)
    for a folder, a file that is not ``.npy``, object arrays, or a header claiming more data than
    the file holds."""

    p = Path(path)
    if p.is_dir():
        raise error(f"{what} file {p} is a folder, not a .npy file")
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {p} does not exist")
    with open(p, "rb") as f:
        try:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):  # 3.0: 2.0 with a UTF-8 header
                shape, _, dtype = npy.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            if any(not isinstance(k, int) or k < 0 for k in shape):
                raise ValueError(f"its header claims the shape {shape}")
        except (ValueError, EOFError, SyntaxError) as e:
            raise error(f"{p} is not a .npy array file ({' '.join(str(e).split())})") from e
        start = f.tell()
    if dtype.hasobject:
        raise error(f"{p} holds Python objects (dtype {dtype}); {what} must be numbers")
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = p.stat().st_size - start
    if claimed > held:
        raise error(
            f"{p}: its header claims shape {shape} of {dtype} ({claimed} bytes) but the file "
            f"holds {held} bytes; it is truncated or corrupt"
        )
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise error(f"{p} is not a readable .npy array file ({' '.join(str(e).split())})") from e


def _cmd_criteria(a: argparse.Namespace) -> int:

    if a.list:
        for name, c in CRITERIA.items():
            way = "higher" if c.higher_is_better else "lower"
            labels = "labels" if c.needs_labels else "no labels"
            print(f"{name:<16} {way} is better, {labels}: {c.description}")
        return 0
    if a.features is None:
        raise CriterionError("FEATURES.npy is needed (or --list)")
    feats = _load_npy(a.features, "features", CriterionError)
    labels = _load_npy(a.labels, "labels", CriterionError) if a.labels else None
    names = a.criterion or None
    for name in names or ():
        if as_criterion(name).needs_labels and labels is None:
            raise CriterionError(f"criterion {name!r} needs --labels LABELS.npy")
    values = compute_criteria(feats, labels, names, CriterionOptions(levels=a.levels))
    out = {
        "n": int(feats.shape[0]),
        "dim": int(feats.shape[1]),
        "criteria": {
            k: {
                "value": v,
                "higher_is_better": CRITERIA[k].higher_is_better,
                "needs_labels": CRITERIA[k].needs_labels,
            }
            for k, v in values.items()
        },
    }
    print(json.dumps(out, indent=2, allow_nan=False))
    return 0


def _cmd_entropy(a: argparse.Namespace) -> int:

    feats = _load_npy(a.features, "features", FeatureError)
    print(json.dumps(state_entropy(feats, a.levels).as_dict(), indent=2, allow_nan=False))
    return 0


def _run_lock(rundir: str):
    """The run folder's lock (another writer of it is refused), or nothing when ``rundir`` is no
    run folder (the command then says what is wrong with the path)."""

    if not (Path(rundir) / "config.toml").is_file():  # not a run: nothing to lock or clean
        return contextlib.nullcontext()
    return lock_folder(rundir, what="run folder")


def _cmd_export(a: argparse.Namespace) -> int:
    # lazy: keeps `entropi --help` from importing torch
    from .deployment.rung_export import export_rung

    formats = tuple(a.formats or _formats())
    extra = _int8_kwargs(a, a.quantize == "int8")
    with _run_lock(a.run):
        info = export_rung(
            a.run,
            a.rung,
            formats=formats,
            forms=("sparse", "compact")[: 1 + a.compact] + tuple(a.form or ()),
            out_dir=a.out,
            quantize=a.quantize,
            **extra,
        )
    for name, f in info["files"].items():
        if "feature_error" in f:
            err = f["feature_error"]
            print(
                f"{name}: {f['bytes']} bytes, int8; on {err['n']} real images mean cosine "
                f"{err['mean_cos']:.5f}, max rel {err['max_rel']:.2e}"
            )
            continue
        print(
            f"{name}: {f['bytes']} bytes, max |diff| {f['max_abs_diff']:.2e}, "
            f"max rel {f['max_rel_diff']:.2e}"
        )
    print(
        f"nnz {info['nnz']}, dense {info['dense_bytes']} B, floor {info['floor_bytes']} B; "
        f"details in {Path(a.out) / 'export.json'}"
    )
    return 0


def _int8_kwargs(a: argparse.Namespace, int8: bool) -> dict[str, Any]:
    """``calibration`` / ``min_cosine`` of an int8 export from ``--calibration-images`` /
    ``--min-cosine`` (each left to the run's ``[export]`` settings when not given); a flag that
    has nothing to act on is refused rather than ignored."""
    # lazy: keeps `entropi --help` from importing torch
    from entropi.export import ExportError

    given = [f for f, v in (("--calibration-images", a.calibration_images),
                            ("--min-cosine", a.min_cosine)) if v is not None]  # fmt: skip
    if given and not int8:
        verb = "acts" if len(given) == 1 else "act"
        raise ExportError(f"{' and '.join(given)} {verb} on int8 files only; add --quantize int8")
    kwargs: dict[str, Any] = {}
    if a.min_cosine is not None:
        kwargs["min_cosine"] = a.min_cosine
    if a.calibration_images is not None:
        # lazy: keeps `entropi --help` from importing torch
        from .deployment.rung_export import run_calibration

        kwargs["calibration"] = run_calibration(a.run, n=a.calibration_images)
    return kwargs


def _cmd_bundle(a: argparse.Namespace) -> int:
    # lazy: keeps `entropi --help` from importing torch
    from .deployment.rung_export import bundle_choice, bundle_rung

    dtype = None if a.quantize is None else QUANTIZE_DTYPE[a.quantize]
    c = bundle_choice(a.run, a.rung, a.form, dtype, a.formats)
    extra = _int8_kwargs(a, c.dtype == "int8")
    with _run_lock(a.run):  # it may export into RUNDIR/export
        path = bundle_rung(
            a.run, a.out, rung=a.rung, form=c.form, formats=c.formats, overwrite=a.overwrite,
            dtype=c.dtype, export_kwargs=extra,
        )  # fmt: skip
    print(f"bundle written to {path}: {c.form} {c.dtype}{_why(c)}")
    if a.mcu:
        # lazy: keeps `entropi --help` from importing torch
        from .deployment.rung_export import mcu_package

        with _run_lock(a.run):
            m = mcu_package(a.run, a.mcu, rung=a.rung, dtype=c.dtype, overwrite=a.overwrite)
        enc = m["encoder"]
        print(
            f"microcontroller files written to {a.mcu}: encoder/ ({enc['dtype']}, "
            f"{format_size(enc['file_bytes'])}, TFLite Micro arena "
            f"{format_size(enc['tflm_arena_bytes'])}) and head_trainer/; flash "
            f"{format_size(m['flash_bytes'])} (model + head), RAM {format_size(m['ram_bytes'])} "
            "(arena + the trainer's static buffers)"
        )
    return 0


def _why(c) -> str:
    """The bundle's formats, and which of its form and dtype `entropi select` chose."""
    picked = [k for k in ("form", "dtype") if k in c.picked]
    formats = ", ".join(c.formats)
    if not picked:
        return f" ({formats})"
    fit = f" (the {' and '.join(picked)} that fit the device, from `entropi select`"
    if "formats" in c.picked:
        return f"{fit}; {formats} only: the format the fit was measured in, --format adds others)"
    return f"{fit}; {formats})"


def _add_config_args(
    p: argparse.ArgumentParser, *, source: bool = True, example: str = "pretrain.epochs=2"
) -> None:
    """``--set`` and the dataset shorthands ``--source`` / ``--target`` ([data] source / target)."""
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help=f"override a config key, validated like the file (repeat), e.g. {example}",
    )
    for name in ("source", "target") if source else ("target",):
        add_field_argument(
            p, DataConfig, name, metavar="SPEC", unset=f"the config's; same as --set data.{name}="
        )


def _add_torchrun_args(p: argparse.ArgumentParser, resumes: str) -> None:
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train and score on N processes of this machine (starts torchrun --standalone; "
        "GPU i for process i where CUDA is present); several machines: run torchrun yourself",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="with --nproc: torchrun restarts the processes up to K times after one fails; "
        + resumes,
    )


def _add_rundir(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUNDIR", help="run directory made by `entropi run`/`pretrain`")


def _from_run(p: argparse.ArgumentParser, cls: type, section: str, **options: dict) -> None:
    """Flags of the ``[section]`` fields named in ``options`` (their keywords), each unset: the
    run's own setting applies unless the flag is given."""
    add_dataclass_arguments(
        p,
        cls,
        only=options,
        options={k: {"unset": f"the run's [{section}] {k}", **kw} for k, kw in options.items()},
    )


def _add_export_args(p: argparse.ArgumentParser, formats: str) -> None:
    """``--run``, ``--rung`` and ``--format`` of `entropi export` / `entropi bundle`; ``formats``:
    what decides the format when none is given."""
    p.add_argument(
        "--run", required=True, metavar="RUNDIR", help="run directory made by `entropi run`"
    )
    p.add_argument(
        "--rung",
        type=rung_arg,
        default="selected",
        help="'selected' (default: the rung `entropi select` picked) or a rung index",
    )
    add_field_argument(
        p,
        ExportConfig,
        "formats",
        flag="--format",
        unset=formats,
        also="Repeat for several.",
        choices=LazyChoices(_formats),
        metavar="FORMAT",
    )


def _add_int8_args(p: argparse.ArgumentParser, **quantize: Any) -> None:
    """``--quantize`` (``quantize``: its keywords), ``--calibration-images`` and
    ``--min-cosine`` of an int8 export."""
    add_field_argument(p, ExportConfig, "quantize", choices=QUANTIZE, metavar="DTYPE", **quantize)
    _from_run(
        p, ExportConfig, "export", calibration_images={"metavar": "N"}, min_cosine={"metavar": "C"}
    )


def _args_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", metavar="CONFIG", help=CONFIG_HELP)
    p.add_argument("--out", metavar="RUNDIR", help="run directory (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_torchrun_args(p, "the run continues from its last finished rung")
    _add_config_args(p)


def _args_pretrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help=CONFIG_HELP)
    p.add_argument("--out", metavar="RUNDIR", required=True, help="run directory to write")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted pretraining in --out"
    )
    _add_config_args(p)


def _args_probe(p: argparse.ArgumentParser) -> None:
    _add_rundir(p)
    p.add_argument("--out", metavar="DIR", help="new run folder for scores on another target")
    _add_config_args(p, source=False, example="probe.epochs=10")


def _args_select(p: argparse.ArgumentParser) -> None:
    _add_rundir(p)
    _from_run(p, SelectConfig, "select", criterion={"metavar": "NAME"}, rule={"metavar": "NAME"})
    _from_run(
        p,
        DeployConfig,
        "deploy",
        flash={"metavar": "SIZE"},
        ram={"metavar": "SIZE"},
        runtime={"choices": RUNTIMES},
    )


def _args_export(p: argparse.ArgumentParser) -> None:
    _add_export_args(p, "every format")
    p.add_argument(
        "--compact",
        action="store_true",
        help="also export the compact form (dead channels removed)",
    )
    p.add_argument(
        "--form",
        action="append",
        choices=LazyChoices(_forms),
        metavar="FORM",
        help="also export this encoder form (compact, compact-dense); repeat for several "
        "(the sparse form is always written)",
    )
    _add_int8_args(
        p,
        help='"int8": also write full-integer int8 files (TFLite: int8 I/O; ONNX: QDQ), '
        'calibrated on target images; "none": float32 only',
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the exported files")


def _args_bundle(p: argparse.ArgumentParser) -> None:
    pick = "`entropi select --flash/--ram`"
    _add_export_args(p, f"the one format {pick} measured its pick in, else every format")
    add_field_argument(
        p,
        ExportConfig,
        "form",
        unset=f"the form {pick} picked, else compact",
        choices=LazyChoices(_forms),
        metavar="FORM",
    )
    _add_int8_args(p, unset=f"the dtype {pick} picked, else none")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write")
    p.add_argument(
        "--mcu",
        metavar="DIR",
        help="also write what a microcontroller firmware links into DIR: the encoder for "
        "TensorFlow Lite Micro (encoder/: model_data.c/.h, verified in TFLM, its measured arena "
        "and op list) and the C head trainer with its static memory plan (head_trainer/)",
    )


def _args_entropy(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FEATURES.npy", help="2-D float array, samples x units")
    add_field_argument(p, EntropyConfig, "levels")


def _args_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="study TOML file or shipped study name (cpu)")
    p.add_argument("--out", required=True, metavar="DIR", help="study folder (resumable)")
    _add_torchrun_args(p, "the study continues where it stopped (ladders and pairs done are kept)")
    p.description += (
        " With --nproc N (or under `torchrun --nproc-per-node N -m entropi.host.cli study ...`) "
        "the N processes build each ladder together (DDP training) and split each (ladder, "
        "target) pair's rungs for scoring, gathering the scores to rank 0; scoring is exact, so "
        "the scores, picks and summary do not depend on N. Rank 0 alone writes DIR; an error on "
        "any process stops them all with its message."
    )


def _args_criteria(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", nargs="?", metavar="FEATURES.npy", help="2-D float array, n x dim")
    p.add_argument(
        "--labels",
        metavar="LABELS.npy",
        help="1-D integer labels (n); without them only the label-free criteria are computed",
    )
    p.add_argument(
        "--criterion",
        action="append",
        metavar="NAME",
        help="a criterion to compute (repeat; default: all that the inputs allow)",
    )
    add_field_argument(p, EntropyConfig, "levels")
    p.add_argument("--list", action="store_true", help="list the criteria and exit")


CONFIG_HELP = "TOML config file or shipped config name (quickstart, paper, ...)"

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "run": (
        "Run the whole pipeline: pretrain, prune, score, select, then export the selected rung, "
        "bundle it for the device and train the device head ([export] / [device_train] "
        "enabled = false skip those).",
        _args_run,
    ),
    "pretrain": ("Train the dense source model (rung 0).", _args_pretrain),
    "prune": ("Build the pruning ladder of a pretrained run.", _add_rundir),
    "probe": (
        "Entropy and linear-probe accuracy of every rung on the target data; with --target / "
        "--set and --out DIR, score RUNDIR's ladder (reused as it is) on another target in DIR.",
        _args_probe,
    ),
    "select": (
        "Pick the rung from the saved scores (no features recomputed); write results.json. With "
        "--flash / --ram: the best rung whose encoder file and head fit the device.",
        _args_select,
    ),
    "export": (
        "Export a rung to ONNX / TFLite (pruned weights stored sparse), verified.",
        _args_export,
    ),
    "bundle": (
        "Package a rung's encoder (exported into RUNDIR/export if needed) for the device runtime.",
        _args_bundle,
    ),
    "entropy": (
        "Quantized-state entropy of a features .npy (nats, JSON).",
        _args_entropy,
    ),
    "study": (
        "Selection study: build or reuse ladders, score them on targets, rank the criteria.",
        _args_study,
    ),
    "criteria": (
        "Transferability criteria of a features .npy (JSON): entropies, LogME, NC1, k-NN, ...",
        _args_criteria,
    ),
}
"""The pipeline's subcommands: name -> (description, add its arguments); ``_cmd_NAME`` runs it
(looked up when the parser is built). Flags that set a config field are generated from the
config dataclasses (:mod:`entropi.common.cliargs`), so each has the field's default (or none:
the run's own setting decides) and its description."""


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    """The parser and ``{subcommand: run}``; builds without importing torch (`entropi --help`)."""
    parser = argparse.ArgumentParser(
        prog="entropi",
        description="ENTROPI: entropy-based pruning for transfer learning on tiny devices.",
    )
    parser.add_argument("--version", action="version", version=f"entropi {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    table: dict[str, Callable] = {}
    for name, (help_, add_args) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_, description=help_))
        table[name] = globals()[f"_cmd_{name}"]
    table.update(add_analysis_commands(sub))  # entropi finetune, entropi analyze cka
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        table.update(ep.load()(sub))
    keep_choices_lazy(parser)  # `entropi export --help` reads no registry (they import torch)
    return parser, table


def _how_to_continue(a: argparse.Namespace) -> str:
    """What continues an interrupted command, with the user's own folder in it."""
    out = getattr(a, "out", None)
    if a.command == "run" and out:
        return f"continue with `entropi run --out {out} --resume`"
    if a.command in ("pretrain", "prune") and out:
        return f"continue with `entropi {a.command} ... --out {out} --resume`"
    if a.command == "study" and out:
        return f"the same command continues it (`entropi study {a.study} --out {out}`)"
    return "what finished was written atomically; run the command again to redo the rest"


def main(argv: list[str] | None = None) -> int:
    parser, table = _build_parser()
    args = parser.parse_args(attach_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        with sigterm_raises():
            return table[args.command](args)
    except KeyboardInterrupt:
        say(f"\nentropi {args.command}: interrupted; {_how_to_continue(args)}")
        return 130
    except Terminated:
        say(f"entropi {args.command}: terminated (SIGTERM)")
        return 143
    except (EntropiError, OSError) as e:
        say(f"entropi: error: {one_line(e)}")
        return 2
    except Exception:  # noqa: BLE001 - a bug: its traceback, and a request to report it
        report_bug("entropi")
        return 1


if __name__ == "__main__":
    sys.exit(main())
