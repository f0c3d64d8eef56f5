"""Export and bundle a rung of a run: `entropi export` and `entropi bundle`.

:func:`export_rung` loads a rung of a run folder (the host's model registry builds its encoder)
and hands it to :func:`entropi.export.export_encoder`; :func:`ensure_export` does so only when
RUNDIR/export does not already hold that rung's files: an export is keyed by the sha256 of the
rung file (export.json ``rung_sha256``), so a rung file replaced since is exported again, and its
files must still have the sha256 export.json records. :func:`bundle_rung` packages one encoder
form (``compact``: dead channels removed, fastest; or ``sparse``: pruned weights stored sparse,
smallest file) in every exported format, plus ``manifest.json`` written by
:func:`entropi.device.bundle.write_bundle` (no pickle, checksummed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from entropi.device.bundle import sha256_file
from entropi.export import ExportError, export_encoder
from entropi.export.formats import FORMAT_NAMES, FORMATS, resolve_formats
from entropi.export.rung import CheckpointError

from .checkpoint import load_rung, resolve_rung
from .rundir import RunDir

__all__ = ["FORMS", "bundle_rung", "config_hash", "ensure_export", "export_rung", "rung_hash"]

FORMS = {"compact": "encoder_compact", "sparse": "encoder"}
"""Bundle form -> the stem of its files in the export folder."""


def _run(rundir: str | os.PathLike | RunDir) -> RunDir:
    return rundir if isinstance(rundir, RunDir) else RunDir(rundir)


def config_hash(rundir: str | os.PathLike | RunDir) -> str | None:
    """sha256 of ``RUNDIR/config.toml`` (the resolved config), or None if there is none."""
    path = _run(rundir).config
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def rung_hash(rundir: str | os.PathLike | RunDir, rung: str | int = "selected") -> str:
    """sha256 of the file of rung ``rung`` (``"selected"`` or an index) of the run."""
    run = _run(rundir)
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
    compact: bool = False,
    out_dir: str | os.PathLike | None = None,
    verify_images: np.ndarray | None = None,
    n_random: int = 4,
    atol: float | None = None,
    rtol: float | None = None,
) -> dict[str, Any]:
    """Export rung ``rung`` (``"selected"`` or an index) of the run in ``rundir``.

    Writes to ``out_dir`` (default ``RUNDIR/export``) and returns export.json's content (see
    :func:`entropi.export.export_encoder` for the rest of the arguments). Raises
    :class:`~entropi.export.rung.CheckpointError` for a run without a ladder, a rung that does
    not exist or a corrupt checkpoint, :class:`~entropi.export.ExportError` for bad export
    arguments (checked before the rung is loaded).
    """
    run = _run(rundir)
    resolve_formats(formats)
    index = resolve_rung(run, rung)
    digest = rung_hash(run, index)
    encoder, info = load_rung(run, index)
    return export_encoder(
        encoder,
        info,
        run.export if out_dir is None else out_dir,
        formats=formats,
        compact=compact,
        verify_images=verify_images,
        n_random=n_random,
        atol=atol,
        rtol=rtol,
        config_sha256=config_hash(run),
        rung_sha256=digest,
    )


def _stems(compact: bool) -> list[str]:
    return [FORMS["sparse"], FORMS["compact"]] if compact else [FORMS["sparse"]]


def ensure_export(
    rundir: str | os.PathLike | RunDir,
    rung: str | int = "selected",
    *,
    formats: tuple[str, ...] = FORMAT_NAMES,
    compact: bool = True,
    verify_images=None,
) -> tuple[Path, dict[str, Any]]:
    """Export ``rung`` into RUNDIR/export unless an export of that rung with those files exists.

    An export is reused only when export.json records the same rung index and the sha256 of the
    rung file as it is now (``rung_sha256``; an export without it, from an older entropi, is
    redone), and every wanted file is there with the sha256 export.json records. Returns the
    export folder and export.json's content.
    """
    run = _run(rundir)
    chosen = resolve_formats(formats)
    index = resolve_rung(run, rung)
    out = run.export
    try:
        info = run.read_json(out / "export.json")
    except ValueError:  # a corrupt export.json describes nothing: export again
        info = None
    if isinstance(info, dict):
        wanted = {fmt.filename(stem) for fmt in chosen for stem in _stems(compact)}
        if _reusable(info, out, index, rung_hash(run, index), wanted):
            return out, info
    info = export_rung(
        run, index, formats=formats, compact=compact, out_dir=out, verify_images=verify_images
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


def bundle_rung(
    rundir: str | os.PathLike | RunDir,
    out: str | os.PathLike,
    *,
    rung: str | int = "selected",
    form: str = "compact",
    formats: tuple[str, ...] = FORMAT_NAMES,
    class_names: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export (if needed) and bundle rung ``rung`` of ``rundir`` into ``out``.

    ``class_names`` default to RUNDIR/target_classes.json (when the run has one).
    """
    from entropi.device.bundle import write_bundle

    if form not in FORMS:
        raise ExportError(f"form must be one of {sorted(FORMS)}, got {form!r}")
    run = _run(rundir)
    resolve_formats(formats)
    export_dir, info = ensure_export(run, rung, formats=formats, compact=form == "compact")
    stem = FORMS[form]
    order = [formats] if isinstance(formats, str) else dict.fromkeys(formats)  # as asked
    names = [FORMATS[f].filename(stem) for f in order]
    files = {name: export_dir / name for name in names}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"export is missing {missing}; re-run `entropi export`")
    if class_names is None:
        class_names = run.read_json(run.target_classes)
    prov = info["provenance"]
    return write_bundle(
        out,
        encoder_files=files,
        input_shape=prov["input_shape"],
        dtype="float32",
        normalization=prov["normalization"],
        feature_dim=prov["feature_dim"],
        class_names=class_names,
        alpha=prov["alpha"],
        provenance={**prov, "form": form, "export": {f: info["files"][f] for f in files}},
        overwrite=overwrite,
    )
