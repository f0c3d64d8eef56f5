"""The device bundle: encoder file(s) + ``manifest.json``, verified before use.

Layout of a bundle folder::

    manifest.json        format_version, files (sha256, bytes), encoders, input, feature_dim, ...
    encoder.tflite       and/or encoder.onnx (float32 NCHW normalized input -> (N, feature_dim))

The manifest records, besides checksums: ``input`` (``shape`` [C, H, W], ``layout`` NCHW,
``dtype``, ``mean``/``std`` applied as ``(pixel / 255 - mean) / std`` per channel),
``feature_dim``, ``class_names`` (or null), ``alpha`` (or null), ``preprocess`` (how any image
becomes the encoder's input: :meth:`.imageprep.Preprocess.to_dict`, ``size`` [H, W], ``mode``,
``filter``; a manifest without it, written before it existed, means the default
:class:`.imageprep.Preprocess` at the input's size) and ``provenance`` (free-form JSON from the
host: run, rung, package version, ...). Nothing in a bundle needs pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError, ChecksumError, DataError, FormatVersionError
from .imageprep import Preprocess
from .io import atomic_dir, atomic_write_json

__all__ = ["FORMAT_VERSION", "MANIFEST", "Bundle", "load_bundle", "sha256_file", "write_bundle"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_FORMATS = {".tflite": "tflite", ".onnx": "onnx"}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(
    out_dir: str | os.PathLike,
    *,
    encoder_files: dict[str, str | os.PathLike],
    input_shape: tuple[int, int, int] | list[int],
    dtype: str = "float32",
    normalization: dict[str, list[float]],
    feature_dim: int,
    class_names: list[str] | None = None,
    alpha: float | None = None,
    provenance: dict[str, Any] | None = None,
    preprocess: dict[str, Any] | Preprocess | None = None,
    overwrite: bool = False,
) -> Path:
    """Copy ``encoder_files`` (bundle name -> source path) into ``out_dir`` with a manifest.

    Built in a temp folder and renamed into place, so a failure leaves no half-written bundle.
    Encoder names must end in ``.tflite`` or ``.onnx``. ``preprocess`` (a
    :meth:`.imageprep.Preprocess.to_dict` dict, or the object) defaults to
    ``Preprocess(size=(H, W))`` of ``input_shape``; its size must be the input's (H, W).
    """
    if not encoder_files:
        raise BundleError("a bundle needs at least one encoder file (.tflite or .onnx)")
    if len(input_shape) != 3:
        raise BundleError(f"input_shape must be [channels, height, width], got {input_shape}")
    for key in ("mean", "std"):
        if len(normalization.get(key, [])) != input_shape[0]:
            raise BundleError(
                f"normalization[{key!r}] must have {input_shape[0]} values (one per channel), "
                f"got {normalization.get(key)}"
            )
    if any(s <= 0 for s in normalization["std"]):
        raise BundleError(f"normalization std must be > 0, got {normalization['std']}")
    prep = _preprocess(preprocess, input_shape, BundleError)
    encoders = {}
    for name, src in encoder_files.items():
        fmt = _FORMATS.get(Path(name).suffix)
        if fmt is None or Path(name).name != name:
            raise BundleError(f"encoder file name {name!r} must be a plain *.tflite or *.onnx name")
        if not Path(src).is_file():
            raise BundleError(f"encoder file {src} does not exist")
        encoders[name] = {"format": fmt}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        files = {}
        for name, src in encoder_files.items():
            shutil.copyfile(src, tmp / name)
            files[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        manifest = {
            "format_version": FORMAT_VERSION,
            "files": files,
            "encoders": encoders,
            "input": {
                "shape": [int(s) for s in input_shape],
                "layout": "NCHW",
                "dtype": dtype,
                "mean": [float(v) for v in normalization["mean"]],
                "std": [float(v) for v in normalization["std"]],
                "pixel_scale": 1 / 255,
            },
            "feature_dim": int(feature_dim),
            "class_names": list(class_names) if class_names is not None else None,
            "alpha": float(alpha) if alpha is not None else None,
            "preprocess": prep.to_dict(),
            "provenance": provenance or {},
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return Path(out_dir)


def _preprocess(d, input_shape, error) -> Preprocess:
    """The :class:`Preprocess` of a manifest entry (None: the default at the input's size)."""
    size = (int(input_shape[1]), int(input_shape[2]))
    try:
        prep = d if isinstance(d, Preprocess) else Preprocess.from_dict(d or {"size": size})
    except DataError as e:
        raise error(f"bad preprocess {d!r}: {e}") from e
    if prep.size != size:
        raise error(
            f"preprocess size {list(prep.size)} must be the encoder input's [height, width] "
            f"{list(size)}"
        )
    return prep


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder, manifest, and the encoder file this runtime will use."""

    path: Path
    manifest: dict[str, Any]
    encoder_file: Path
    encoder_format: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["input"]["shape"])

    @property
    def mean(self) -> list[float]:
        return self.manifest["input"]["mean"]

    @property
    def std(self) -> list[float]:
        return self.manifest["input"]["std"]

    @property
    def preprocess(self) -> Preprocess:
        """How images become the encoder's input (the default at the input's size when the
        manifest predates the ``preprocess`` entry)."""
        return _preprocess(self.manifest.get("preprocess"), self.input_shape, BundleError)

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.get("class_names")

    def encoder(self, *, num_threads: int = 1):
        """An :class:`.encoder.EncoderRunner` for the chosen encoder file."""
        from .encoder import EncoderRunner

        return EncoderRunner(
            self.encoder_file, self.encoder_format, self.feature_dim, num_threads=num_threads
        )


def load_bundle(path: str | os.PathLike, *, prefer: tuple[str, ...] = ("tflite", "onnx")) -> Bundle:
    """Read and verify a bundle; pick the encoder file an installed interpreter can run.

    Raises :class:`.errors.FormatVersionError` for a newer format, :class:`.errors.ChecksumError`
    naming the first file whose sha256 differs, :class:`.errors.BundleError` otherwise.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{path} has no {MANIFEST}; is it a bundle written by `entropi bundle`?")
    try:
        manifest = json.loads(mpath.read_text())
        version = manifest["format_version"]
        files, encoders = manifest["files"], manifest["encoders"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BundleError(f"{mpath} is not a valid manifest ({e!r})") from e
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path} has bundle format_version {version!r}; this runtime reads versions <= "
            f"{FORMAT_VERSION}. Upgrade entropi on the device."
        )
    try:
        _preprocess(manifest.get("preprocess"), manifest["input"]["shape"], BundleError)
    except (KeyError, TypeError, IndexError) as e:
        raise BundleError(f"{mpath} is not a valid manifest ({e!r})") from e
    for name, meta in files.items():
        fpath = path / name
        if Path(name).name != name or not fpath.is_file():
            raise BundleError(f"bundle file {name!r} listed in {MANIFEST} is missing from {path}")
        actual = sha256_file(fpath)
        if actual != meta["sha256"]:
            raise ChecksumError(
                f"checksum mismatch for {name!r} in {path}: manifest sha256 {meta['sha256']}, "
                f"file sha256 {actual}. The bundle is corrupt or was modified; copy it again."
            )
    available = _available_formats()
    for fmt in prefer:
        if fmt not in available:
            continue
        for name, meta in encoders.items():
            if meta.get("format") == fmt and name in files:
                return Bundle(path, manifest, path / name, fmt)
    have = sorted({m.get("format") for m in encoders.values()})
    raise BundleError(
        f"no interpreter for the encoder formats in {path} ({', '.join(have)}): install "
        "ai-edge-litert (extra 'entropi[litert]') for .tflite or onnxruntime ('entropi[ort]') "
        "for .onnx"
    )


def _available_formats() -> set[str]:
    import importlib.util

    out = set()
    if importlib.util.find_spec("ai_edge_litert") is not None:
        out.add("tflite")
    if importlib.util.find_spec("onnxruntime") is not None:
        out.add("onnx")
    return out
