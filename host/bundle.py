"""`entropi bundle`: package an exported encoder for the device (no pickle, checksummed).

The bundle holds one encoder form (``compact``: dead channels removed, fastest; or ``sparse``:
pruned weights stored sparse, smallest file) in every exported format, plus ``manifest.json``
written by :func:`entropi.device.bundle.write_bundle`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, resolve_rung

__all__ = ["FORMS", "bundle_rung", "ensure_export"]

FORMS = {"compact": "encoder_compact", "sparse": "encoder"}


def ensure_export(
    rundir: str | os.PathLike,
    rung: str | int = "selected",
    *,
    formats: tuple[str, ...] = ("onnx", "tflite"),
    compact: bool = True,
    verify_images=None,
) -> tuple[Path, dict[str, Any]]:
    """Export ``rung`` into RUNDIR/export unless an export of that rung with those files exists."""
    from entropi.export import export_rung

    rundir = Path(rundir)
    index = resolve_rung(rundir, rung)
    out = rundir / "export"
    info_path = out / "export.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        wanted = {
            f"{stem}.{fmt}"
            for fmt in formats
            for stem in (["encoder", "encoder_compact"] if compact else ["encoder"])
        }
        same_rung = info.get("provenance", {}).get("rung_index") == index
        if same_rung and wanted <= set(info["files"]) and all((out / f).is_file() for f in wanted):
            return out, info
    info = export_rung(
        rundir, index, formats=formats, compact=compact, out_dir=out, verify_images=verify_images
    )
    return out, info


def bundle_rung(
    rundir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    rung: str | int = "selected",
    form: str = "compact",
    formats: tuple[str, ...] = ("onnx", "tflite"),
    class_names: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export (if needed) and bundle rung ``rung`` of ``rundir`` into ``out``."""
    from entropi.device.bundle import write_bundle

    if form not in FORMS:
        raise ValueError(f"form must be one of {sorted(FORMS)}, got {form!r}")
    rundir = Path(rundir)
    export_dir, info = ensure_export(rundir, rung, formats=formats, compact=form == "compact")
    stem = FORMS[form]
    files = {f"{stem}.{fmt}": export_dir / f"{stem}.{fmt}" for fmt in formats}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"export is missing {missing}; re-run `entropi export`")
    if class_names is None:
        classes_path = rundir / "target_classes.json"
        if classes_path.is_file():
            class_names = json.loads(classes_path.read_text())
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
