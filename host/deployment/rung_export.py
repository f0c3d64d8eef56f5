"""Export and bundle a rung of a run: `entropi export` and `entropi bundle`.

:func:`export_rung` loads a rung of a run folder (the host's model registry builds its encoder)
and hands it to :func:`entropi.export.export_encoder`; :func:`ensure_export` does so only when
RUNDIR/export does not already hold that rung's files: an export is keyed by the sha256 of the
rung file (export.json ``rung_sha256``), so a rung file replaced since is exported again, and its
files must still have the sha256 export.json records. :func:`bundle_rung` packages one encoder
form (:data:`~entropi.export.formats.ENCODER_FORMS`: ``compact``, dead channels removed, fastest;
``sparse``, pruned weights stored sparse, smallest file; ``compact-dense``, weights stored dense,
least RAM) in every exported format, plus ``manifest.json`` written by
:func:`entropi.device.bundle.write_bundle` (no pickle, checksummed).

int8 (``quantize="int8"``): the export also holds ``<stem>_int8`` files, calibrated on
:func:`calibration_images` (a seeded draw of the run's target training images);
:func:`int8_downstream` measures what quantization costs the head (linear probes on float and
int8 features of the target, recorded in export.json ``downstream``); a ``dtype="int8"`` bundle
carries each file's input quantization and output dequantization in its manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entropi.common.dtypes import DEFAULT_MIN_COSINE, DEFAULT_QUANTIZE, DTYPES, QUANTIZE_DTYPE
from entropi.common.files import check_replaceable, ensure_real_dir
from entropi.device.bundle import check_bundle_out, sha256_file, write_bundle
from entropi.device.mcu_trainer import mcu_plan, not_a_trainer_folder, write_mcu_trainer
from entropi.export import ExportError, export_encoder, images_to_inputs
from entropi.export.exporter import DEFAULT_N_RANDOM, calibration_digest
from entropi.export.formats import (
    ENCODER_FORMS,
    FORMAT_NAMES,
    FORMATS,
    resolve_formats,
    resolve_forms,
    resolve_quantize,
)
from entropi.export.mcu import mcu_export, mcu_module, not_an_mcu_folder
from entropi.export.quantize import int8_feature_error
from entropi.export.rung import CheckpointError

from ..ladder.rungs import as_rundir, load_rung, resolve_rung
from ..run.config import DEFAULT_CALIBRATION_IMAGES, load_config
from ..run.records import read_selection
from ..run.rundata import TargetData, load_target
from ..run.rundir import RunDir
from ..selection.probe import linear_probe

__all__ = [
    "BundleChoice",
    "bundle_rung",
    "calibration_images",
    "run_calibration",
    "config_hash",
    "bundle_choice",
    "ensure_export",
    "export_rung",
    "int8_downstream",
    "run_target",
    "rung_hash",
]


def config_hash(rundir: str | os.PathLike | RunDir) -> str | None:
    """sha256 of ``RUNDIR/config.toml`` (the resolved config), or None if there is none."""
    path = as_rundir(rundir).config
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def rung_hash(rundir: str | os.PathLike | RunDir, rung: str | int = "selected") -> str:
    """sha256 of the file of rung ``rung`` (``"selected"`` or an index) of the run."""
    run = as_rundir(rundir)
    path = run.rung(resolve_rung(run, rung))
    try:
        return sha256_file(path)
    except OSError as e:
        raise CheckpointError(f"cannot read rung file {path}: {e}") from e


def export_rung(
    rundir: str | os.PathLike | RunDir,
    rung: str | int = "selected",
    *,
    formats: Sequence[str] = FORMAT_NAMES,
    forms: Sequence[str] = ("sparse",),
    out_dir: str | os.PathLike | None = None,
    verify_images: np.ndarray | None = None,
    n_random: int = DEFAULT_N_RANDOM,
    atol: float | None = None,
    rtol: float | None = None,
    quantize: str = DEFAULT_QUANTIZE,
    calibration: np.ndarray | None = None,
    min_cosine: float | None = None,
) -> dict[str, Any]:
    """Export rung ``rung`` (``"selected"`` or an index) of the run in ``rundir``.

    With ``quantize="int8"`` the int8 files are calibrated on ``calibration`` (uint8 images;
    default :func:`calibration_images` of the run) and checked on ``verify_images`` (default:
    the run's target test images) against the float encoder: refused below ``min_cosine``
    (default: the run's ``[export] min_cosine``).

    Writes to ``out_dir`` (default ``RUNDIR/export``) and returns export.json's content (see
    :func:`entropi.export.export_encoder` for the rest of the arguments). Raises
    :class:`~entropi.export.rung.CheckpointError` for a run without a ladder, a rung that does
    not exist or a corrupt checkpoint, :class:`~entropi.export.ExportError` for bad export
    arguments (checked before the rung is loaded).
    """
    run = as_rundir(rundir)
    resolve_formats(formats)
    resolve_forms(forms)
    quantize = resolve_quantize(quantize)
    return _export(
        run, resolve_rung(run, rung), quantize, formats=formats, forms=forms, out_dir=out_dir,
        verify_images=verify_images, n_random=n_random, atol=atol, rtol=rtol,
        calibration=calibration, min_cosine=min_cosine,
    )  # fmt: skip


def _export(
    run: RunDir,
    index: int,
    quantize: str,
    *,
    formats: Sequence[str],
    forms: Sequence[str],
    out_dir: str | os.PathLike | None = None,
    verify_images: np.ndarray | None = None,
    n_random: int = DEFAULT_N_RANDOM,
    atol: float | None = None,
    rtol: float | None = None,
    calibration: np.ndarray | None = None,
    min_cosine: float | None = None,
) -> dict[str, Any]:
    """:func:`export_rung` of rung ``index``, its arguments already checked (``quantize``
    resolved: ``"none"`` or ``"int8"``)."""
    int8 = QUANTIZE_DTYPE[quantize] == "int8"
    digest = rung_hash(run, index)
    if int8 and (calibration is None or verify_images is None):
        tgt = run_target(run)  # loaded once for both
        if calibration is None:
            calibration = run_calibration(run, target=tgt)
        if verify_images is None:
            verify_images = tgt.x_test[: _run_config(run).export.checked_images]
    if min_cosine is None:
        min_cosine = _run_config(run).export.min_cosine if int8 else DEFAULT_MIN_COSINE
    encoder, info = load_rung(run, index)
    return export_encoder(
        encoder,
        info,
        run.export if out_dir is None else out_dir,
        formats=formats,
        forms=forms,
        verify_images=verify_images,
        n_random=n_random,
        atol=atol,
        rtol=rtol,
        config_sha256=config_hash(run),
        rung_sha256=digest,
        quantize=quantize,
        calibration_images=calibration,
        min_cosine=min_cosine,
    )


def _run_config(run: RunDir):
    if not run.config.is_file():
        raise CheckpointError(f"{run.root} has no config.toml: is it a run folder?")
    return load_config(run.config)


def run_target(rundir: str | os.PathLike | RunDir):
    """The run's target data (:class:`~entropi.host.run.rundata.TargetData`): RUNDIR/target_data.npz
    when the run wrote it (its device stage), else loaded again from the run's config."""

    run = as_rundir(rundir)
    path = run.target_data
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                x = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test", "class_names")}
            names = [str(c) for c in x["class_names"]]
            return TargetData(x["x_train"], x["y_train"], x["x_test"], x["y_test"], names)
        except (OSError, ValueError, KeyError):  # a damaged cache: load the target again
            pass
    return load_target(_run_config(run))


def calibration_images(
    x_train: np.ndarray, export_cfg=None, *, n: int | None = None, seed: int = 0
) -> np.ndarray:
    """``n`` (default ``[export] calibration_images``) target training images drawn without
    replacement by ``seed`` (every image when there are fewer), in index order: the int8
    calibration set, the same for the same data and seed."""
    if n is None:
        n = export_cfg.calibration_images if export_cfg is not None else DEFAULT_CALIBRATION_IMAGES
    if len(x_train) == 0:
        raise ExportError("the calibration set is empty: the target has no training images")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ExportError(f"the calibration set needs at least 1 image, got {n!r}")
    n = min(int(n), len(x_train))
    idx = np.sort(np.random.default_rng(seed).choice(len(x_train), n, replace=False))
    return np.ascontiguousarray(x_train[idx])


def run_calibration(
    rundir: str | os.PathLike | RunDir, n: int | None = None, *, target=None
) -> np.ndarray:
    """The run's int8 calibration set: :func:`calibration_images` of its target training images
    (``target``: the run's :func:`run_target`, when the caller has it) with its ``[export]``
    count (or ``n``) and its seed."""
    run = as_rundir(rundir)
    cfg = _run_config(run)
    x_train = (target if target is not None else run_target(run)).x_train
    return calibration_images(x_train, cfg.export, n=n, seed=cfg.seed)


def ensure_export(
    rundir: str | os.PathLike | RunDir,
    rung: str | int = "selected",
    *,
    formats: tuple[str, ...] = FORMAT_NAMES,
    forms: Sequence[str] = ("sparse", "compact"),
    verify_images=None,
    quantize: str = DEFAULT_QUANTIZE,
    calibration: np.ndarray | None = None,
    min_cosine: float | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Export ``rung`` into RUNDIR/export unless an export of that rung with those files exists.

    An export is reused only when export.json records the same rung index and the sha256 of the
    rung file as it is now (``rung_sha256``; an export without it, from an older entropi, is
    redone), and every wanted file is there with the sha256 export.json records; with
    ``quantize``, also the same calibration set (``calibration_sha256``; default: the run's
    :func:`calibration_images`) and ``min_cosine`` (default: the run's ``[export]
    min_cosine``). A new export of the same rung also writes the forms the old one had. Returns
    the export folder and export.json's content.
    """

    run = as_rundir(rundir)
    chosen = resolve_formats(formats)
    stems = [form.stem for form in resolve_forms(forms)]
    quantize = resolve_quantize(quantize)
    dtypes = dict.fromkeys(("float32", QUANTIZE_DTYPE[quantize]))
    int8 = "int8" in dtypes
    index = resolve_rung(run, rung)
    if int8 and calibration is None:
        calibration = run_calibration(run)
    if int8 and min_cosine is None:
        min_cosine = _run_config(run).export.min_cosine
    out = run.export
    try:
        info = run.read_json(out / "export.json")
    except ValueError:  # a corrupt export.json describes nothing: export again
        info = None
    if isinstance(info, dict):
        wanted = {fmt.filename(stem, dtype) for fmt in chosen for stem in stems for dtype in dtypes}
        quant = info.get("quantization")
        same_int8 = not int8 or (
            isinstance(quant, dict)
            and quant.get("calibration_sha256") == calibration_digest(calibration)
            and quant.get("min_cosine") == float(min_cosine)
        )
        digest = rung_hash(run, index)
        if same_int8 and _reusable(info, out, index, digest, wanted):
            return out, info
        if info.get("rung_sha256") == digest and isinstance(info.get("forms"), list):
            # the forms this rung's export has stay (a bundle of another form adds one)
            forms = [f for f in ENCODER_FORMS if f in forms or f in info["forms"]]
    info = _export(
        run,
        index,
        quantize,
        formats=formats,
        forms=forms,
        out_dir=out,
        verify_images=verify_images,
        calibration=calibration,
        min_cosine=min_cosine,
    )
    return out, info


def _reusable(info: dict, out: Path, index: int, digest: str, wanted: set[str]) -> bool:
    """Whether export.json ``info`` describes rung ``index`` with file sha256 ``digest`` and the
    files ``wanted`` are in ``out`` unchanged."""
    prov = info.get("provenance")
    files = info.get("files")
    if not (isinstance(prov, dict) and isinstance(files, dict)):
        return False
    if prov.get("rung_index") != index or info.get("rung_sha256") != digest:
        return False
    for name in wanted:
        entry, path = files.get(name), out / name
        if not (isinstance(entry, dict) and path.is_file()):
            return False
        try:
            if sha256_file(path) != entry.get("sha256"):
                return False
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class BundleChoice:
    """What `entropi bundle` packages (:func:`bundle_choice`)."""

    form: str
    dtype: str
    formats: tuple[str, ...]
    picked: tuple[str, ...]
    """Which of ``form``, ``dtype``, ``formats`` the row ``entropi select --flash/--ram`` picked
    supplied (the others were asked for, or are the defaults)."""


def bundle_choice(
    rundir: str | os.PathLike | RunDir,
    rung: str | int = "selected",
    form: str | None = None,
    dtype: str | None = None,
    formats: Sequence[str] | None = None,
) -> BundleChoice:
    """The form, dtype and formats to bundle: each as given; for one not given, the row
    ``entropi select --flash/--ram`` picked for the selected rung (results.json
    ``deployment.pick``) when ``rung`` is ``"selected"`` and there is a pick (its formats: the
    one format the fit was measured in, the one the device runs), else ``compact``, ``float32``
    and every format."""
    pick: dict = {}
    if rung == "selected" and (form is None or dtype is None or formats is None):
        pick = _deploy_pick(as_rundir(rundir))
    given = {"form": form, "dtype": dtype, "formats": tuple(formats) if formats else None}
    picked = tuple(k for k, v in given.items() if v is None and k in pick)
    if pick and formats is None and ("form" in picked or "dtype" in picked):
        given["formats"] = pick["formats"]
        picked += ("formats",)
    return BundleChoice(
        form=given["form"] or pick.get("form", "compact"),
        dtype=given["dtype"] or pick.get("dtype", "float32"),
        formats=given["formats"] or FORMAT_NAMES,
        picked=tuple(k for k in given if k in picked),
    )


def _deploy_pick(run: RunDir) -> dict:
    """``{"form", "dtype", "formats"}`` of the deployment pick of the selected rung in
    results.json; empty when there is none (or it names no known form, dtype or format)."""
    try:
        selected, deployment = read_selection(run.results)
    except ValueError:
        return {}
    pick = deployment.get("pick") if isinstance(deployment, dict) else None
    if not (isinstance(pick, dict) and pick.get("rung") == selected):
        return {}
    form, dtype, fmt = pick.get("form"), pick.get("dtype"), pick.get("format", "tflite")
    if not all(isinstance(v, str) for v in (form, dtype, fmt)):
        return {}
    if form not in ENCODER_FORMS or dtype not in DTYPES or fmt not in FORMATS:
        return {}
    return {"form": form, "dtype": dtype, "formats": (fmt,)}


def bundle_rung(
    rundir: str | os.PathLike | RunDir,
    out: str | os.PathLike,
    *,
    rung: str | int = "selected",
    form: str = "compact",
    formats: tuple[str, ...] = FORMAT_NAMES,
    class_names: list[str] | None = None,
    overwrite: bool = False,
    dtype: str = "float32",
    export_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Export (if needed) and bundle rung ``rung`` of ``rundir`` into ``out``.

    ``class_names`` default to RUNDIR/target_classes.json (when the run has one). ``dtype``
    ``"int8"`` bundles the int8 files (exported with ``quantize="int8"`` if they are not there;
    ``export_kwargs`` go to :func:`ensure_export`): the manifest records each one's input
    quantization and output dequantization.
    """

    if form not in ENCODER_FORMS:
        raise ExportError(f"form must be one of {list(ENCODER_FORMS)}, got {form!r}")
    if dtype not in DTYPES:
        raise ExportError(f"bundle dtype must be 'float32' or 'int8', got {dtype!r}")
    check_bundle_out(out, overwrite)  # before minutes of export, not after
    run = as_rundir(rundir)
    resolve_formats(formats)
    kwargs = dict(export_kwargs or {})
    if dtype == "int8":
        kwargs["quantize"] = "int8"
    export_dir, info = ensure_export(run, rung, formats=formats, forms=("sparse", form), **kwargs)
    stem = ENCODER_FORMS[form].stem
    order = [formats] if isinstance(formats, str) else dict.fromkeys(formats)  # as asked
    names = [FORMATS[f].filename(stem, dtype) for f in order]
    files = {name: export_dir / name for name in names}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"export is missing {missing}; re-run `entropi export`")
    if class_names is None:
        class_names = run.read_json(run.target_classes)
    prov = info["provenance"]
    quant = {f: info["files"][f]["quantization"] for f in files if dtype != "float32"}
    return write_bundle(
        out,
        encoder_files=files,
        encoder_quantization=quant or None,
        input_shape=prov["input_shape"],
        dtype="float32",
        normalization=prov["normalization"],
        feature_dim=prov["feature_dim"],
        class_names=class_names,
        alpha=prov["alpha"],
        provenance={
            **prov,
            "form": form,
            "dtype": dtype,
            "export": {f: info["files"][f] for f in files},
        },
        overwrite=overwrite,
    )


def _features(run_fn, path: Path, images: np.ndarray, normalization, chunk: int = 512):
    parts = [
        run_fn(path, images_to_inputs(images[i : i + chunk], normalization))
        for i in range(0, len(images), chunk)
    ]
    return np.concatenate(parts).reshape(len(images), -1)


def int8_downstream(
    export_dir: str | os.PathLike,
    info: dict[str, Any],
    tgt,
    probe_cfg,
    *,
    form: str = "compact",
    formats: Sequence[str] = FORMAT_NAMES,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """What int8 costs downstream, per format: the encoder files of ``form`` (float and int8) run
    in their runtimes on the target's training and test images, a linear probe
    (:func:`~entropi.host.selection.probe.linear_probe`, ``probe_cfg``, seed ``seed``) trained on
    each
    kind of feature and tested on the same kind; plus the int8 feature error over the test
    images. Returns ``{file: {"float_file", "float_accuracy", "int8_accuracy", "delta_points",
    "feature_error"}}`` keyed by the int8 file name."""

    export_dir = Path(export_dir)
    prov = info["provenance"]
    norm = prov["normalization"]
    num_classes = int(max(tgt.y_train.max(), tgt.y_test.max())) + 1
    out = {}
    for name in dict.fromkeys([formats] if isinstance(formats, str) else formats):
        fmt = FORMATS[name]
        float_file, int8_file = (fmt.filename(ENCODER_FORMS[form].stem, d) for d in DTYPES)
        if int8_file not in info["files"]:
            raise ExportError(f"export has no {int8_file}; export with quantize = 'int8' first")
        feats = {}
        for kind, fname, run_fn in (
            ("float", float_file, fmt.run),
            ("int8", int8_file, fmt.run_quantized),
        ):
            feats[kind] = [
                _features(run_fn, export_dir / fname, x, norm) for x in (tgt.x_train, tgt.x_test)
            ]
        acc = {
            kind: linear_probe(
                f[0],
                tgt.y_train,
                f[1],
                tgt.y_test,
                probe_cfg,
                num_classes=num_classes,
                seed=seed,
                device=device,
            ).test_accuracy
            for kind, f in feats.items()
        }
        out[int8_file] = {
            "float_file": float_file,
            "float_accuracy": float(acc["float"]),
            "int8_accuracy": float(acc["int8"]),
            "delta_points": 100.0 * float(acc["int8"] - acc["float"]),
            "feature_error": int8_feature_error(feats["float"][1], feats["int8"][1]),
            "train_images": len(tgt.x_train),
            "test_images": len(tgt.x_test),
        }
    return out


def mcu_package(
    rundir: str | os.PathLike | RunDir,
    out: str | os.PathLike,
    *,
    rung: str | int = "selected",
    dtype: str = "int8",
    overwrite: bool = False,
) -> dict[str, Any]:
    """What a microcontroller firmware links, for rung ``rung`` of a run, in folder ``out``:

    - ``out/encoder/``: the encoder's MCU form (:func:`~entropi.export.mcu.mcu_export` of the
      compacted rung: dense weights, NHWC input, ``dtype``), verified in TensorFlow Lite Micro
      against LiteRT and PyTorch on the run's target test images, as ``model_data.c/.h`` with
      the measured arena and the op resolver list;
    - ``out/head_trainer/``: the C99 head trainer with the static memory plan of the run's
      ``[device_train]`` settings (:func:`~entropi.device.mcu_trainer.write_mcu_trainer`).

    Returns ``{"encoder": mcu.json, "head_trainer": folder, "flash_bytes", "ram_bytes"}``
    (flash: the model array + the head's float32 weights; RAM: TFLM's arena + the trainer's
    static buffers, from its plan). A budget the trainer cannot fit raises the planner's
    ``BudgetError`` before anything is written."""

    root = ensure_real_dir(out)
    for part, ours in (("encoder", not_an_mcu_folder), ("head_trainer", not_a_trainer_folder)):
        check_replaceable(root / part, overwrite, ours)  # before the conversions, not after
    run = as_rundir(rundir)
    cfg = _run_config(run)
    encoder, info = load_rung(run, rung)
    target = run_target(run)
    classes = len(target.classes)
    plan = mcu_plan(info.feature_dim, classes, cfg.head_training, n_train=len(target.x_train))
    module = mcu_module(encoder, tuple(info.input_shape))
    verify = target.x_test[: cfg.export.checked_images]
    cal = run_calibration(run, target=target) if dtype == "int8" else None
    enc = mcu_export(
        module,
        root / "encoder",
        input_shape=tuple(info.input_shape),
        verify_inputs=images_to_inputs(verify, info.normalization),
        calibration=None if cal is None else images_to_inputs(cal, info.normalization),
        dtype=dtype,
        min_cosine=cfg.export.min_cosine,
        overwrite=overwrite,
    )
    trainer = write_mcu_trainer(
        root / "head_trainer",
        cfg.head_training,
        num_classes=classes,
        feature_dim=info.feature_dim,
        n_train=len(target.x_train),
        overwrite=overwrite,
    )
    head = (info.feature_dim + 1) * classes * 4
    return {
        "rung": info.index,
        "encoder": enc,
        "head_trainer": str(trainer),
        "flash_bytes": enc["file_bytes"] + head,
        "ram_bytes": enc["tflm_arena_bytes"] + plan.static_bytes,
    }
