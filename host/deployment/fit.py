"""Fit to the device: the flash and RAM every rung needs, and the best rung that fits.

For every rung of a run, every encoder form (:data:`~entropi.export.formats.ENCODER_FORMS`:
``compact``, dead channels removed; ``sparse``, pruned weights stored sparse; ``compact-dense``,
dead channels removed and weights stored dense) and every dtype a bundle can hold
(:data:`DTYPES`: float32 and int8, whatever the run's ``[export] quantize`` says),
:func:`deployment_table` builds the TFLite file the device would run (the exporter's own
writers, in memory: the same bytes ``entropi export`` writes) and records

- ``flash_bytes`` = the encoder file + the head (``(feature_dim + 1) x classes`` float32);
- ``ram_bytes`` = the inference activation peak from the graph
  (:func:`~entropi.export.footprint.tflite_footprint`: the largest sum of live activations over
  the operator sequence) + the weights that DENSIFY rebuilds in RAM at load (a sparse file is
  small in flash, not in RAM; a dense one is read in place) + the head-training plan of the
  device budget planner (:func:`~entropi.device.budget.plan_memory` for the run's
  ``[device_train]`` settings: buffers + reserve);
- ``latency_ms``: the median of one-image invocations in the LiteRT interpreter on this host
  (relative: a device is slower), and ``accuracy``: the rung's probe accuracy (float features);
- int8 rows, ``int8_mean_cos``: the mean cosine of the int8 file's features to the float
  file's on the run's verification images (``[export] verify_images`` target test images), the
  measure ``entropi export`` checks.

int8 rows are calibrated on demand, on the run's own calibration set
(:func:`~entropi.host.deployment.rung_export.run_calibration`: a seeded draw of its target training
images,
``[export] calibration_images``); the compact and compact-dense rows of a rung share one
quantization (they differ only in how the weights are stored). A row that cannot be built (no
int8 quantizer installed, the run's target not loadable, an op without an int8 kernel) or whose
int8 features fall below ``[export] min_cosine`` (so that ``entropi export`` would refuse the
file) is left out of the table, and :func:`deployment_table` logs each one with its reason.

``runtime="tflm"`` (``[deploy] runtime``, ``entropi select --runtime tflm``): a microcontroller
running TensorFlow Lite Micro. The rows are the MCU form (:data:`MCU_FORM`:
:func:`~entropi.export.mcu.mcu_tflite_bytes` of the compacted module: dense weights, NHWC
input, float32 and int8); ``flash_bytes`` = that file + the head, ``ram_bytes`` = the arena
TFLM's recording allocator measures for it (``tflm_arena_bytes``, run on the host) + the
head-training plan. ``activation_peak_bytes`` (the graph rule above) is kept beside it, and
``rule_over_tflm_arena`` says how far the rule is from TFLM's figure.

The table is cached in RUNDIR/deploy/table.json, keyed by each rung file's sha256 and the
settings, so a second ``entropi select --flash`` reads it. :func:`fit_rule` is the selection:
among the rows that fit both limits, the rung the criterion rates best (ties: the denser
rung,
as :func:`~entropi.host.selection.rules.select_rung`), in its smallest fitting row; when nothing
fits,
:class:`DeployError` names the smallest flash and RAM needs and the rungs that have them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from entropi.common.dtypes import DTYPES
from entropi.common.errors import EntropiError
from entropi.device.budget import format_size, parse_size, plan_memory
from entropi.device.errors import BudgetError, TrainConfigError
from entropi.export import compact_encoder, fold_batchnorm, images_to_inputs
from entropi.export.footprint import tflite_footprint, tflite_latency_ms
from entropi.export.formats import ENCODER_FORMS, FORMATS
from entropi.export.mcu import mcu_tflite_bytes
from entropi.export.quantize import int8_feature_error, run_tflite_int8, tflite_int8_bytes
from entropi.export.tflite_export import sparsify_tflite
from entropi.export.tflm import tflm_arena_bytes

from ..ladder.rungs import load_rung
from ..run.config import DEFAULT_VERIFY_IMAGES
from ..run.progress import progress
from ..run.records import read_scores
from ..run.rundir import RunDir
from .rung_export import run_calibration, run_target, rung_hash
from .runtimes import MCU_FORM, RUNTIMES

__all__ = [
    "DEPLOY_VERSION",
    "DTYPES",
    "MCU_FORM",
    "RUNTIMES",
    "DeployError",
    "deployment_table",
    "fit_rule",
    "fits_device",
    "parse_limit",
    "table_markdown",
]

DEPLOY_VERSION = 3
"""Version of RUNDIR/deploy/table.json's rows (a change recomputes them)."""
FORMS = ("compact", "sparse", "compact-dense")
"""The encoder forms of the table (every form of ENCODER_FORMS)."""


class DeployError(EntropiError, ValueError):
    """No rung fits the device, or a flash / RAM limit is not a size."""


def parse_limit(value: str | int | None, what: str) -> int | None:
    """A flash / RAM limit (``"300KB"``, a number of bytes, or None / "" for no limit) in bytes."""
    if value is None or value == "":
        return None
    try:
        return parse_size(value)
    except TrainConfigError as e:
        raise DeployError(f"{what}: {e}") from None


def _head_bytes(feature_dim: int, classes: int) -> int:
    return (feature_dim + 1) * classes * 4


def _head_plan_bytes(cfg, feature_dim: int, classes: int) -> int | None:
    """Head-training RAM of the device planner for ``[device_train]`` (None: it cannot fit the
    configured budget at all)."""

    t = cfg.head_training
    try:
        plan = plan_memory(
            feature_dim,
            classes,
            t.budget_bytes,
            max_batch_size=t.batch_size,
            momentum=t.momentum > 0,
            dtype=np.dtype(t.dtype),
            epochs=t.epochs,
            fused_update=t.momentum == 0,
        )
    except BudgetError:
        return None
    return int(plan.analytic_bytes + plan.reserve_bytes)


def _float_file(modules: dict[bool, Any], encoder, info, form: str) -> tuple[Any, bytes]:
    """The module of ``form`` of a rung (folded; compacted for the compact forms, kept in
    ``modules`` by whether it is compacted) and its float32 TFLite file, weights stored as the
    form says."""
    spec = ENCODER_FORMS[form]
    module = _module(modules, encoder, info, spec.compact)
    example = torch.zeros(1, *info.input_shape)
    data, _ = FORMATS["tflite"].write(module, example, sparse=spec.sparse, metadata={})
    return module, data


def _module(modules: dict[bool, Any], encoder, info, compact: bool):
    """The rung's BN-folded module, compacted or not, made once per rung (``modules``)."""
    if False not in modules:
        modules[False] = fold_batchnorm(encoder)
    if compact and True not in modules:
        example = torch.zeros(1, *info.input_shape)
        modules[True] = compact_encoder(modules[False], example)[0]
    return modules[compact]


def _int8_file(quantized: dict[bool, bytes], module, info, form: str, calibration) -> bytes:
    """The int8 TFLite file of ``form``, quantized once per module (``quantized``, keyed by
    whether it is compacted: compact and compact-dense share it) and stored as the form says."""

    spec = ENCODER_FORMS[form]
    if spec.compact not in quantized:
        cal = images_to_inputs(calibration, info.normalization)
        quantized[spec.compact] = tflite_int8_bytes(module, cal, input_shape=info.input_shape)[0]
    return sparsify_tflite(quantized[spec.compact], sparse=spec.sparse, metadata={})[0]


def _mcu_file(modules: dict[bool, Any], quantized: dict, encoder, info, dtype, calibration):
    """The MCU form's file of a rung (:func:`~entropi.export.mcu.mcu_tflite_bytes` of the
    compacted module) in ``dtype``; ``quantized`` keeps the float and int8 files of the rung."""

    key = ("mcu", dtype)
    if key not in quantized:
        module = _module(modules, encoder, info, compact=True)
        cal = None
        if dtype == "int8":
            cal = images_to_inputs(calibration, info.normalization)
        quantized[key] = mcu_tflite_bytes(module, dtype, info.input_shape, cal)
    return quantized[key]


def _mcu_int8_cos(float_data: bytes, int8_data: bytes, info, images: np.ndarray) -> float:
    """Mean cosine of the int8 MCU file's features to the float MCU file's on ``images``."""

    x = np.ascontiguousarray(images_to_inputs(images, info.normalization).transpose(0, 2, 3, 1))
    return int8_feature_error(run_tflite_int8(float_data, x), run_tflite_int8(int8_data, x))[
        "mean_cos"
    ]


def _measure(data: bytes, runtime: str = "litert") -> dict:
    """What one TFLite file needs: its bytes, activation peak, densified weights, latency."""

    fp = tflite_footprint(data)
    out = {
        "file_bytes": len(data),
        "activation_peak_bytes": fp["activation_peak_bytes"],
        "densified_bytes": fp["densified_bytes"],
        "latency_ms": tflite_latency_ms(data, num_threads=1),
    }
    if runtime == "tflm":
        out["tflm_arena_bytes"] = tflm_arena_bytes(data)
    return out


def _int8_cos(float_data: bytes, int8_data: bytes, info, images: np.ndarray) -> float:
    """Mean cosine of the int8 file's features to the float file's on ``images`` (uint8)."""

    x = images_to_inputs(images, info.normalization)
    tfl = FORMATS["tflite"]
    return int8_feature_error(tfl.run(float_data, x), tfl.run_quantized(int8_data, x))["mean_cos"]


class _Int8Inputs:
    """The run's int8 calibration and verification images, loaded on the first int8 row (or
    the reason they cannot be: then every int8 row is left out with it)."""

    def __init__(self, cfg, run: RunDir, calibration: np.ndarray | None) -> None:
        self.cfg, self.run, self.calibration = cfg, run, calibration
        self.verify: np.ndarray | None = None
        self.error: str | None = None

    def load(self) -> bool:
        if self.verify is not None or self.error is not None:
            return self.error is None

        try:
            tgt = run_target(self.run)
            if self.calibration is None:
                self.calibration = run_calibration(self.run, target=tgt)
            self.verify = tgt.x_test[: self.cfg.export.checked_images]
            if len(self.verify) == 0:
                self.verify = self.calibration[:DEFAULT_VERIFY_IMAGES]
        except (EntropiError, OSError) as e:
            self.error = f"the run's target images (int8 calibration) cannot be loaded: {e}"
        return self.error is None


def _runtime_forms(run: RunDir, runtime: str, forms: Sequence[str]) -> Sequence[str]:
    """The forms a runtime can run: ``forms`` for litert, the MCU form alone (logged) for tflm."""
    if runtime not in RUNTIMES:
        raise DeployError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if runtime == "tflm":
        forms = (MCU_FORM,)
        run.log(
            "select: deploy: runtime tflm: the MCU form only (dead channels removed, dense "
            "weights, NHWC input); TFLite Micro has no DENSIFY kernel, so the sparse forms "
            "cannot run there"
        )
    return forms


def _checked_dtypes_forms(
    dtypes: Sequence[str] | None, forms: Sequence[str]
) -> tuple[tuple[str, ...], Sequence[str]]:
    """``dtypes`` (default :data:`DTYPES`) and ``forms``, refused when empty or unknown."""
    dtypes = tuple(DTYPES if dtypes is None else dtypes)
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        raise DeployError(f"unknown dtype(s) {bad or list(dtypes)}; valid: {list(DTYPES)}")
    bad = [f for f in forms if f not in (*FORMS, MCU_FORM)]
    if bad or not forms:
        raise DeployError(f"unknown form(s) {bad or list(forms)}; valid: {list(FORMS)}")
    return dtypes, forms


def _cached_rows(run: RunDir, cache_path) -> dict[str, dict]:
    """The measured rows of RUNDIR/deploy/table.json by key; none if damaged or of another
    :data:`DEPLOY_VERSION`."""
    try:
        cache = run.read_json(cache_path, {}) or {}
    except ValueError:  # a damaged cache is rebuilt
        cache = {}
    return cache.get("rows", {}) if cache.get("version") == DEPLOY_VERSION else {}


def _target_class_count(run: RunDir) -> int | None:
    """The number of the run's target classes, None when it has not recorded them."""
    names = run.read_json(run.target_classes)
    return len(names) if names else None


def _below_min_cosine(measured: dict, min_cosine: float) -> str | None:
    """Why an int8 row is left out (its features too far from float32's), or None."""
    cos = measured.get("int8_mean_cos")
    if cos is not None and not cos >= min_cosine:
        return (
            f"int8 features' mean cosine {cos:.4f} < [export] "
            f"min_cosine {min_cosine}, so `entropi export` would refuse the file"
        )
    return None


def deployment_table(
    cfg,
    run: RunDir,
    *,
    dtypes: Sequence[str] | None = None,
    forms: Sequence[str] = FORMS,
    calibration: np.ndarray | None = None,
    num_classes: int | None = None,
    runtime: str = "litert",
) -> list[dict[str, Any]]:
    """Every (rung, form, dtype) row of the run (module docstring), cached
    in
    RUNDIR/deploy/table.json. ``dtypes`` default to :data:`DTYPES`; ``calibration``: uint8
    target images for the int8 rows (default:
    :func:`~entropi.host.deployment.rung_export.run_calibration`).
    ``runtime="tflm"``: the rows are the MCU form's (:data:`MCU_FORM`) with TFLite Micro's
    measured arena (``forms`` is ignored). Rows left out (module docstring) are logged with
    their reason."""
    forms = _runtime_forms(run, runtime, forms)

    dtypes, forms = _checked_dtypes_forms(dtypes, forms)
    cache_path = run.root / "deploy" / "table.json"
    rows_cache = _cached_rows(run, cache_path)
    classes = num_classes if num_classes is not None else _target_class_count(run)
    n_rungs = len(run.rung_files())
    if n_rungs == 0:
        raise DeployError(f"{run.root} has no rungs; run `entropi run` or `entropi prune` first")
    e = cfg.export
    settings = f"cal{e.calibration_images}-seed{cfg.seed}-verify{e.verify_images}"
    todo = [(i, form, dtype) for i in range(n_rungs) for form in forms for dtype in dtypes]
    rows, left_out, fresh = [], [], 0
    int8_inputs = _Int8Inputs(cfg, run, calibration)
    bar = progress(total=len(todo), desc="deploy table", unit="file")
    try:
        digests = {i: rung_hash(run, i) for i in range(n_rungs)}
        loaded: dict[int, Any] = {}
        built: dict[str, tuple[Any, bytes]] = {}  # form -> (module, float file) of that rung
        modules: dict[bool, Any] = {}  # compacted? -> the folded module of that rung
        quantized: dict[bool, bytes] = {}  # compacted? -> the dense int8 file of that rung
        head_plans: dict[tuple[int, int], int | None] = {}  # (feature_dim, classes) -> bytes
        for i, form, dtype in todo:
            bar.update(1)
            key = f"{digests[i][:16]}-{form}-{dtype}-{settings if dtype == 'int8' else ''}"
            measured = rows_cache.get(key)
            if measured is None:
                if dtype == "int8" and not int8_inputs.load():
                    left_out.append((i, form, dtype, int8_inputs.error))
                    continue
                if i not in loaded:  # one rung in memory at a time
                    loaded, built, modules, quantized = {i: load_rung(run, i)}, {}, {}, {}
                encoder, info = loaded[i]
                try:
                    if form == MCU_FORM:
                        measured = _mcu_row(modules, quantized, encoder, info, dtype, int8_inputs)
                    else:
                        measured = _litert_row(built, modules, quantized, encoder, info, form,
                                               dtype, int8_inputs)  # fmt: skip
                except EntropiError as err:
                    left_out.append((i, form, dtype, str(err)))
                    continue
                rows_cache[key] = measured
                fresh += 1
            why = _below_min_cosine(measured, e.min_cosine)
            if why:
                left_out.append((i, form, dtype, why))
                continue
            rows.append(_table_row(cfg, run, i, form, dtype, measured, classes, head_plans))
    finally:
        bar.close()
    if fresh:
        run.write_json(cache_path, {"version": DEPLOY_VERSION, "rows": rows_cache})
    for i, form, dtype, why in left_out:
        run.log(f"select: deploy: left out rung {i} {form} {dtype}: {why}")
    return rows


def _litert_row(built, modules, quantized, encoder, info, form, dtype, int8_inputs) -> dict:
    """The measured file of one rung, form and dtype (a ``litert`` row, before the head);
    ``built`` keeps the rung's float file per form, shared by its dtypes."""
    if form not in built:
        built[form] = _float_file(modules, encoder, info, form)
    module, data = built[form]
    extra = {}
    if dtype == "int8":
        int8 = _int8_file(quantized, module, info, form, int8_inputs.calibration)
        extra["int8_mean_cos"] = _int8_cos(data, int8, info, int8_inputs.verify)
        data = int8
    return _measured_row(data, "litert", extra, encoder, info)


def _mcu_row(modules, quantized, encoder, info, dtype, int8_inputs) -> dict:
    """The measured MCU-form file of one rung and dtype (a ``tflm`` row, before the head)."""
    data = _mcu_file(modules, quantized, encoder, info, "float32", None)
    extra = {}
    if dtype == "int8":
        int8 = _mcu_file(modules, quantized, encoder, info, "int8", int8_inputs.calibration)
        extra["int8_mean_cos"] = _mcu_int8_cos(data, int8, info, int8_inputs.verify)
        data = int8
    return _measured_row(data, "tflm", extra, encoder, info)


def _measured_row(data: bytes, runtime: str, extra: dict, encoder, info) -> dict:
    """A row before the head: the file's measures in ``runtime`` (:func:`_measure`), ``extra``
    (the int8 cosine), the rung's feature dimension and alpha."""
    return {
        **_measure(data, runtime),
        **extra,
        "feature_dim": int(info.feature_dim or encoder.feature_dim),
        "alpha": float(info.alpha),
    }


def _table_row(cfg, run: RunDir, i, form, dtype, measured, classes, head_plans) -> dict:
    """One row of the table: a measured file plus the head's flash and training RAM."""
    accuracy = read_scores(run, i).probe_accuracy if run.score(i).is_file() else None
    d = measured["feature_dim"]
    c = classes or 2
    if (d, c) not in head_plans:
        head_plans[d, c] = _head_plan_bytes(cfg, d, c)
    head_plan = head_plans[d, c]
    arena = measured.get("tflm_arena_bytes")  # tflm rows: what TFLM measured, not the rule
    inference = (
        arena
        if arena is not None
        else measured["activation_peak_bytes"] + measured["densified_bytes"]
    )
    ram = None if head_plan is None else inference + head_plan
    return {
        "rung": i,
        "alpha": measured["alpha"],
        "form": form,
        "dtype": dtype,
        "format": "tflite",
        "file_bytes": measured["file_bytes"],
        "head_bytes": _head_bytes(d, c),
        "flash_bytes": measured["file_bytes"] + _head_bytes(d, c),
        "activation_peak_bytes": measured["activation_peak_bytes"],
        "densified_bytes": measured["densified_bytes"],
        "head_train_bytes": head_plan,
        "ram_bytes": ram,
        "latency_ms": measured["latency_ms"],
        **(
            {  # the graph rule beside TFLM's own figure: how far the model is from the runtime
                "tflm_arena_bytes": arena,
                "rule_over_tflm_arena": measured["activation_peak_bytes"] / arena,
            }
            if arena is not None
            else {}
        ),
        "accuracy": accuracy,
        **({"int8_mean_cos": measured["int8_mean_cos"]} if dtype == "int8" else {}),
    }


def fits_device(row: dict, flash: int | None, ram: int | None) -> bool:
    """Whether a table row fits ``flash`` / ``ram`` (None: no limit); a row whose head cannot
    be trained in the device budget (``ram_bytes`` None) never fits."""
    if row["ram_bytes"] is None:
        return False
    return (flash is None or row["flash_bytes"] <= flash) and (
        ram is None or row["ram_bytes"] <= ram
    )


def fit_rule(
    rows: Sequence[dict],
    values: Sequence[float],
    *,
    flash: int | None = None,
    ram: int | None = None,
) -> dict[str, Any]:
    """The deployment pick: among ``rows`` (dicts with ``rung``, ``flash_bytes``,
    ``ram_bytes``; ``ram_bytes`` None = the head cannot be trained in the device budget) whose
    needs fit ``flash`` / ``ram`` (None: no limit), the rung with the best ``values[rung]``
    (signed so that higher is better, NaN = undefined; ties within 1e-9 to the lower rung
    index), in its fitting row with the smallest flash (then RAM). Returns that row plus
    ``fits`` (the rungs with a fitting row). Raises :class:`DeployError` when nothing fits,
    naming the smallest flash and RAM needs and their rungs."""
    if not rows:
        raise DeployError("the deployment table is empty")
    fitting = [r for r in rows if fits_device(r, flash, ram)]
    if not fitting:
        by_flash = min(rows, key=lambda r: r["flash_bytes"])
        with_ram = [r for r in rows if r["ram_bytes"] is not None]
        limits = " and ".join(
            f"{what} {format_size(v)}" for what, v in (("flash", flash), ("RAM", ram)) if v
        )
        msg = (
            f"no rung fits {limits or 'the device'}: the smallest flash need is "
            f"{format_size(by_flash['flash_bytes'])} ({_label(by_flash)})"
        )
        if with_ram:
            by_ram = min(with_ram, key=lambda r: r["ram_bytes"])
            msg += f", the smallest RAM need {format_size(by_ram['ram_bytes'])} ({_label(by_ram)})"
        else:
            msg += "; no rung's head training fits the [device_train] budget"
        if flash is not None and ram is not None:  # how far the other limit is, given one
            in_ram = [r for r in with_ram if r["ram_bytes"] <= ram]
            in_flash = [r for r in with_ram if r["flash_bytes"] <= flash]
            if in_ram:
                r = min(in_ram, key=lambda r: r["flash_bytes"])
                msg += (
                    f"; within RAM {format_size(ram)} the smallest flash need is "
                    f"{format_size(r['flash_bytes'])} ({_label(r)})"
                )
            if in_flash:
                r = min(in_flash, key=lambda r: r["ram_bytes"])
                msg += (
                    f"; within flash {format_size(flash)} the smallest RAM need is "
                    f"{format_size(r['ram_bytes'])} ({_label(r)})"
                )
        raise DeployError(msg)
    rungs = sorted({r["rung"] for r in fitting})
    v = np.array([values[i] for i in rungs], dtype=np.float64)
    v = np.where(np.isfinite(v), v, -np.inf)
    best = rungs[int(np.flatnonzero(v >= v.max() - 1e-9)[0])] if np.isfinite(v).any() else rungs[0]
    pick = min(
        (r for r in fitting if r["rung"] == best), key=lambda r: (r["flash_bytes"], r["ram_bytes"])
    )
    return {**pick, "fits": rungs}


def _label(r: dict) -> str:
    return f"rung {r['rung']}, {r['form']} {r['dtype']}"


def table_markdown(rows: Sequence[dict], pick: dict | None = None) -> str:
    """The deployment table as markdown (the report's section)."""
    tflm = any("tflm_arena_bytes" in r for r in rows)
    lines = [
        "| rung | alpha | form | dtype | flash | RAM | "
        + ("TFLM arena | graph rule | " if tflm else "")
        + "latency (ms) | probe acc | int8 cos |",
        "|---:|---:|---|---|---:|---:|" + ("---:|---:|" if tflm else "") + "---:|---:|---:|",
    ]
    for r in rows:
        mark = (
            " **picked**"
            if pick
            and (r["rung"], r["form"], r["dtype"]) == (pick["rung"], pick["form"], pick["dtype"])
            else ""
        )
        ram = "-" if r["ram_bytes"] is None else format_size(r["ram_bytes"])
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}"
        cos = "-" if r.get("int8_mean_cos") is None else f"{r['int8_mean_cos']:.4f}"
        arena = ""
        if tflm:
            arena = (
                f"{format_size(r['tflm_arena_bytes'])} | "
                f"{format_size(r['activation_peak_bytes'])} | "
                if "tflm_arena_bytes" in r
                else "- | - | "
            )
        lines.append(
            f"| {r['rung']} | {r['alpha']:.4f} | {r['form']} | {r['dtype']}{mark} | "
            f"{format_size(r['flash_bytes'])} | {ram} | {arena}{r['latency_ms']:.2f} | {acc} | "
            f"{cos} |"
        )
    return "\n".join(lines) + "\n"
