"""The device bundle: encoder file(s) + ``manifest.json``, verified before use.

Layout of a bundle folder::

    manifest.json        format_version, files (sha256, bytes), encoders, input, feature_dim, ...
    encoder.tflite       and/or encoder.onnx (float32 NCHW normalized input -> (N, feature_dim))
    check.npz            recorded check inputs and, per encoder file, its outputs on them

The manifest records, besides checksums: ``input`` (``shape`` [C, H, W], ``layout`` NCHW,
``dtype``, ``mean``/``std`` applied as ``(pixel / 255 - mean) / std`` per channel),
``feature_dim``, ``class_names`` (or null), ``alpha`` (or null), per encoder file its ``format``,
``dtype`` (float32 or int8) and, for an int8 file, ``quantization``: its input's ``scale`` /
``zero_point`` (the runtime feeds ``clip(round(x / scale) + zero_point)`` of the normalized
float input) and its output's (features are ``(q - zero_point) * scale``), checked against what
the interpreter reports when the file is opened; ``preprocess`` (how any image
becomes the encoder's input: :meth:`.imageprep.Preprocess.to_dict`, ``size`` [H, W], ``mode``,
``filter``; a manifest without it, written before it existed, means the default
:class:`.imageprep.Preprocess` at the input's size) and ``provenance`` (free-form JSON from the
host: run, rung, package version, ...). Nothing in a bundle needs pickle.

A bundle may come from anywhere, so :func:`load_bundle` trusts none of it. The manifest is read
only up to :data:`MAX_MANIFEST_BYTES`, checked against ``manifest.schema.json`` (shipped next to
this module, checked by :mod:`.schema`) and then for what a schema cannot say (one mean and std
per channel, ``pixel_scale`` 1/255, every encoder listed in ``files``); each file's size and
sha256 are checked before anything opens it. Every refusal is a :class:`.errors.BundleError`
naming the manifest, the field (a JSON path such as ``input.std[1]``) and what was expected.

``check.npz`` (members ``inputs``: float32 (k, C, H, W), seeded pixels normalized with the
manifest's mean/std; ``outputs.<encoder file name>``: float32 (k, feature_dim), what that file
returned on them when the bundle was written, with the device's own :class:`.encoder.
EncoderRunner`) catches an encoder file whose content is damaged although its checksum was
recomputed: :meth:`Bundle.encoder` runs the loaded encoder on the recorded inputs and refuses it
when ``max|out - recorded| > CHECK_RTOL * max(1, max|recorded|) + CHECK_ATOL``. A bundle
without ``check.npz`` (written before it existed), or a file without recorded outputs (no
interpreter for its format where the bundle was written), loads without that check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entropi.common.files import atomic_dir, atomic_write_json, check_replaceable

from ._npz import npy_member, npz_names, read_member, save_npz
from .encoder import EncoderRunner, inspect_encoder
from .errors import BundleError, ChecksumError, DataError, FormatVersionError
from .imageprep import Preprocess
from .schema import SchemaViolation, check, json_path, load_schema

__all__ = [
    "CHECK",
    "CHECK_ATOL",
    "CHECK_ROWS",
    "CHECK_RTOL",
    "FORMAT_VERSION",
    "MANIFEST",
    "MANIFEST_SCHEMA",
    "MAX_MANIFEST_BYTES",
    "Bundle",
    "check_bundle_out",
    "load_bundle",
    "read_manifest",
    "sha256_file",
    "write_bundle",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "manifest.schema.json"
"""The JSON Schema of a manifest, a file of this package."""
MAX_MANIFEST_BYTES = 1 << 20
"""A larger ``manifest.json`` is refused unread (a real one is a few KB)."""
CHECK = "check.npz"
CHECK_ROWS = 4
"""Check inputs recorded per bundle."""
CHECK_RTOL = 1e-3
CHECK_ATOL = 1e-5
"""An encoder passes its check when ``max|out - recorded| <= CHECK_RTOL * max(1,
max|recorded|) + CHECK_ATOL``: far above the rounding differences of one file run by the same
interpreter on another CPU (~1e-6 relative), far below what a damaged weight changes."""
_MAX_CHECK_ROWS = 64
_FORMATS = {".tflite": "tflite", ".onnx": "onnx"}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _outputs_key(name: str) -> str:
    return f"outputs.{name}"


def write_bundle(
    out_dir: str | os.PathLike,
    *,
    encoder_files: dict[str, str | os.PathLike],
    encoder_quantization: dict[str, dict[str, Any]] | None = None,
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
    Encoder names must end in ``.tflite`` or ``.onnx``. ``encoder_quantization`` (name ->
    ``{"input": {"dtype", "scale", "zero_point"}, "output": {...}}``) marks those files int8 and
    records their I/O quantization (module docstring). ``preprocess`` (a
    :meth:`.imageprep.Preprocess.to_dict` dict, or the object) defaults to
    ``Preprocess(size=(H, W))`` of ``input_shape``; its size must be the input's (H, W). The
    manifest must pass the checks :func:`load_bundle` makes (:class:`.errors.BundleError`
    otherwise). Each encoder file an installed interpreter can run is run on
    :data:`CHECK_ROWS` seeded inputs, its outputs recorded in ``check.npz``; an encoder file that
    does not load or run raises :class:`.errors.BundleError`.
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
    quantization = dict(encoder_quantization or {})
    unknown = sorted(set(quantization) - set(encoder_files))
    if unknown:
        raise BundleError(f"encoder_quantization names files not in encoder_files: {unknown}")
    encoders = {}
    for name, src in encoder_files.items():
        fmt = _FORMATS.get(Path(name).suffix)
        if fmt is None or Path(name).name != name:
            raise BundleError(f"encoder file name {name!r} must be a plain *.tflite or *.onnx name")
        if not os.path.lexists(src):
            raise BundleError(f"encoder file {src} does not exist")
        if not Path(src).is_file():
            raise BundleError(f"encoder file {src} is not a regular file")
        encoders[name] = {"format": fmt, "dtype": "float32"}
        if name in quantization:
            q = quantization[name]
            encoders[name] = {
                "format": fmt,
                "dtype": "int8",
                "quantization": {
                    side: {k: q[side].get(k) for k in ("dtype", "scale", "zero_point")}
                    for side in ("input", "output")
                },
            }
    manifest = {
        "format_version": FORMAT_VERSION,
        "files": {name: {"sha256": "0" * 64, "bytes": 0} for name in encoder_files},
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
    _validate(manifest, "the manifest to write")  # refuse now what load_bundle would refuse
    with atomic_dir(out_dir, overwrite=overwrite, foreign=_not_a_bundle) as tmp:
        files = {}
        for name, src in encoder_files.items():
            shutil.copyfile(src, tmp / name)
            files[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        arrays = _record_check(tmp, manifest, encoder_files)
        if arrays is not None:
            save_npz(tmp / CHECK, arrays)
            files[CHECK] = {
                "sha256": sha256_file(tmp / CHECK),
                "bytes": (tmp / CHECK).stat().st_size,
            }
        manifest["files"] = files
        atomic_write_json(tmp / MANIFEST, manifest)
    return Path(out_dir)


def check_bundle_out(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse now an output folder :func:`write_bundle` would refuse (a user's folder, a link,
    the current folder): for callers that export for minutes before writing the bundle."""
    check_replaceable(out_dir, overwrite, _not_a_bundle)


def _not_a_bundle(path: Path) -> str | None:
    """None when the folder ``path`` is a bundle (a manifest that lists every other file in
    it), which ``write_bundle(..., overwrite=True)`` may replace; otherwise why it is not."""
    mpath = path / MANIFEST
    if not mpath.is_file() or mpath.is_symlink():
        return f"it has no {MANIFEST}, so it is not a bundle"
    try:
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
        listed = set(manifest["files"]) | {MANIFEST}
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return f"its {MANIFEST} is not a bundle manifest"
    others = sorted(p.name for p in path.iterdir() if p.name not in listed)
    if others:
        shown = ", ".join(repr(n) for n in others[:5]) + (", ..." if len(others) > 5 else "")
        return f"it holds what its {MANIFEST} does not list ({shown})"
    return None


def _check_inputs(manifest: dict[str, Any]) -> np.ndarray:
    """:data:`CHECK_ROWS` seeded inputs: uniform 8-bit pixels normalized as the manifest says."""
    inp = manifest["input"]
    c = inp["shape"][0]
    pixels = np.random.default_rng(0).integers(0, 256, (CHECK_ROWS, *inp["shape"]))
    mean = np.asarray(inp["mean"], np.float64).reshape(1, c, 1, 1)
    std = np.asarray(inp["std"], np.float64).reshape(1, c, 1, 1)
    return np.ascontiguousarray((pixels / 255.0 - mean) / std, dtype=np.float32)


def _record_check(
    folder: Path, manifest: dict[str, Any], sources: dict[str, str | os.PathLike]
) -> dict[str, np.ndarray] | None:
    """The ``check.npz`` arrays of the encoder files in ``folder`` an installed interpreter runs
    (None when there is none)."""

    available = _available_formats()
    inputs = _check_inputs(manifest)
    arrays = {"inputs": inputs}
    for name, meta in manifest["encoders"].items():
        if meta["format"] not in available:
            continue
        label = str(sources[name])
        runner = EncoderRunner(
            folder / name,
            meta["format"],
            manifest["feature_dim"],
            label=label,
            quantization=meta.get("quantization"),
            input_shape=tuple(manifest["input"]["shape"]),
        )
        try:
            out = runner(inputs)
        except DataError as e:
            raise BundleError(f"encoder {label} does not take the bundle's input: {e}") from e
        if not np.isfinite(out).all():
            raise BundleError(f"encoder {label} returns non-finite features on the check inputs")
        arrays[_outputs_key(name)] = np.ascontiguousarray(out, dtype=np.float32)
    return arrays if len(arrays) > 1 else None


def _preprocess(d, input_shape, error) -> Preprocess:
    """The :class:`Preprocess` of a manifest entry (None: the default at the input's size)."""
    size = (int(input_shape[1]), int(input_shape[2]))
    try:
        prep = d if isinstance(d, Preprocess) else Preprocess.from_dict(d or {"size": size})
    except (DataError, TypeError, ValueError) as e:
        raise error(f"bad preprocess {d!r}: {e}") from e
    if prep.size != size:
        raise error(
            f"preprocess size {list(prep.size)} must be the encoder input's [height, width] "
            f"{list(size)}"
        )
    return prep


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check the ``manifest.json`` of the bundle folder ``path`` (not its files).

    Raises :class:`.errors.FormatVersionError` for a newer format, :class:`.errors.BundleError`
    for a missing, oversized, unparsable or invalid manifest.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not os.path.lexists(mpath):
        raise BundleError(f"{path} has no {MANIFEST}; is it a bundle written by `entropi bundle`?")
    if not mpath.is_file():
        raise BundleError(
            f"{path} has no {MANIFEST} file: {mpath} is not a regular file (a folder, FIFO, "
            "device or dangling link)"
        )
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise BundleError(f"cannot read {mpath}: {e}") from e
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"{mpath} is larger than {MAX_MANIFEST_BYTES} bytes; a bundle manifest is a few KB"
        )
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BundleError(f"{mpath} is not a valid manifest (JSON nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise BundleError(f"{mpath} is not a valid manifest ({e})") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} is not a valid manifest (a JSON object expected)")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path} has bundle format_version {version!r}; this runtime reads versions <= "
            f"{FORMAT_VERSION}. Upgrade entropi on the device."
        )
    _validate(manifest, str(mpath))
    return manifest


def _validate(manifest: dict[str, Any], where: str) -> None:
    """The schema check, then what a schema cannot express; BundleError naming the field."""
    try:
        check(manifest, load_schema(MANIFEST_SCHEMA))
    except SchemaViolation as e:
        raise BundleError(f"{where} is not a valid manifest: {e.path}: {e.expected}") from None

    def bad(parts: tuple[str | int, ...], expected: str) -> BundleError:
        return BundleError(f"{where} is not a valid manifest: {json_path(parts)}: {expected}")

    inp = manifest["input"]
    channels = inp["shape"][0]
    for key in ("mean", "std"):
        if len(inp[key]) != channels:
            raise bad(
                ("input", key),
                f"expected {channels} entries (one per channel of input.shape "
                f"{inp['shape']}), got {len(inp[key])}",
            )
    if "pixel_scale" in inp and not math.isclose(inp["pixel_scale"], 1 / 255, rel_tol=1e-9):
        raise bad(
            ("input", "pixel_scale"),
            f"expected 1/255 (this runtime reads 8-bit pixels), got {inp['pixel_scale']!r}",
        )
    for name, meta in manifest["encoders"].items():
        if name not in manifest["files"]:
            raise bad(("encoders", name), "expected an encoder file also listed in files")
        for side, q in (meta.get("quantization") or {}).items():
            where_q = ("encoders", name, "quantization", side)
            if q["dtype"] == "float32":
                if q["scale"] is not None or q["zero_point"] is not None:
                    raise bad(where_q, "expected scale and zero_point null for a float32 tensor")
                continue
            lo, hi = (-128, 127) if q["dtype"] == "int8" else (0, 255)
            if q["scale"] is None or q["zero_point"] is None or not lo <= q["zero_point"] <= hi:
                raise bad(
                    where_q,
                    f"expected a scale > 0 and a zero_point in [{lo}, {hi}] for {q['dtype']}",
                )
        if _FORMATS.get(Path(name).suffix) != meta["format"]:
            raise bad(
                ("encoders", name, "format"),
                f"expected {_FORMATS.get(Path(name).suffix)!r} for a {Path(name).suffix} file",
            )
    try:
        _preprocess(manifest.get("preprocess"), inp["shape"], BundleError)
    except BundleError as e:
        raise bad(("preprocess",), str(e)) from None


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

    @property
    def check_file(self) -> Path | None:
        """``check.npz`` when the bundle has one (checksummed with the other files)."""
        return self.path / CHECK if CHECK in self.manifest["files"] else None

    @property
    def data_files(self) -> frozenset[str]:
        """The files an encoder may read external data from: the others the manifest lists
        (and :func:`load_bundle` has hashed)."""
        return frozenset(self.manifest["files"]) - {self.encoder_file.name}

    def encoder(self, *, num_threads: int = 1):
        """An :class:`.encoder.EncoderRunner` for the chosen encoder file, which has reproduced
        its recorded check outputs (see the module docstring; :class:`.errors.BundleError`
        otherwise)."""

        runner = EncoderRunner(
            self.encoder_file,
            self.encoder_format,
            self.feature_dim,
            num_threads=num_threads,
            quantization=self.manifest["encoders"][self.encoder_file.name].get("quantization"),
            input_shape=self.input_shape,
            data_files=self.data_files,
        )
        self._check_encoder(runner)
        return runner

    def _check_encoder(self, runner) -> None:
        """Run ``runner`` on the recorded check inputs; refuse outputs beyond the tolerance."""
        if self.check_file is None:
            return
        name = self.encoder_file.name
        arrays = _read_check(self.check_file, self.manifest, name)
        if arrays is None:
            return
        inputs, expected = arrays
        try:
            out = runner(inputs)
        except DataError as e:
            raise BundleError(
                f"encoder {name} does not run on its recorded check inputs: {e}"
            ) from e
        diff = float(np.max(np.abs(out.astype(np.float64) - expected)))
        tol = CHECK_RTOL * max(1.0, float(np.max(np.abs(expected)))) + CHECK_ATOL
        if not diff <= tol:  # NaN outputs fail too
            raise BundleError(
                f"encoder {name} does not reproduce its recorded check outputs: max abs diff "
                f"{diff:.3g} > tol {tol:.3g}. The encoder file is damaged or was replaced; "
                "copy the bundle again."
            )


def _read_check(
    path: Path, manifest: dict[str, Any], name: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """The recorded inputs and ``name``'s outputs of ``check.npz`` (None: none recorded for
    ``name``), their headers checked before any data is read."""
    key = _outputs_key(name)
    rows_max, shape = _MAX_CHECK_ROWS, tuple(manifest["input"]["shape"])
    feature_dim = manifest["feature_dim"]
    try:
        members = set(npz_names(path))
        if "inputs" not in members:
            raise BundleError(f"{path} has no 'inputs' member")
        if key not in members:
            return None
        heads = {m: npy_member(path, m) for m in ("inputs", key)}
        k = heads["inputs"].shape[0] if heads["inputs"].shape else 0
        wanted = {"inputs": (k, *shape), key: (k, feature_dim)}
        for m, head in heads.items():
            if head.dtype != np.float32 or head.shape != wanted[m] or not 1 <= k <= rows_max:
                raise BundleError(
                    f"{path} member {m!r} is {head.dtype}{head.shape}; expected float32 "
                    f"{wanted[m]} with 1 <= k <= {rows_max}"
                )
        inputs, outputs = read_member(path, "inputs"), read_member(path, key)  # CRC-checked
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path} is not a valid check file ({e!r})") from e
    if not (np.isfinite(inputs).all() and np.isfinite(outputs).all()):
        raise BundleError(f"{path} holds non-finite check values")
    return inputs, outputs.astype(np.float64)


def load_bundle(path: str | os.PathLike, *, prefer: tuple[str, ...] = ("tflite", "onnx")) -> Bundle:
    """Read and verify a bundle; pick the encoder file an installed interpreter can run.

    The manifest is checked by :func:`read_manifest`, then the size and sha256 of every file it
    lists (before anything opens the file). Raises :class:`.errors.FormatVersionError` for a
    newer format, :class:`.errors.ChecksumError` naming the first file whose size or sha256
    differs, :class:`.errors.BundleError` otherwise. The chosen encoder file is then inspected
    before any interpreter allocates anything (:func:`.encoder.inspect_encoder`: its input
    shape is the manifest's, its operators an export's, its ONNX external data only in files
    the manifest lists and hashes); it is opened (and checked against ``check.npz``) by
    :meth:`Bundle.encoder`.
    """
    path = Path(path)
    manifest = read_manifest(path)
    files, encoders = manifest["files"], manifest["encoders"]
    for name, meta in files.items():
        fpath = path / name
        if Path(name).name != name or not os.path.lexists(fpath):
            raise BundleError(f"bundle file {name!r} listed in {MANIFEST} is missing from {path}")
        if not fpath.is_file():
            raise BundleError(
                f"bundle file {name!r} in {path} is not a regular file (a folder, FIFO, device "
                "or dangling link); copy the bundle again"
            )
        try:
            size = fpath.stat().st_size
            if size != meta["bytes"]:
                raise ChecksumError(
                    f"size mismatch for {name!r} in {path}: {MANIFEST} "
                    f"{json_path(('files', name, 'bytes'))} is {meta['bytes']}, the file has "
                    f"{size} bytes. The bundle is corrupt or was modified; copy it again."
                )
            actual = sha256_file(fpath)
        except OSError as e:
            raise BundleError(f"cannot read bundle file {fpath}: {e}") from e
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
            if meta["format"] == fmt:
                bundle = Bundle(path, manifest, path / name, fmt)
                inspect_encoder(
                    bundle.encoder_file,
                    fmt,
                    input_shape=bundle.input_shape,
                    data_files=bundle.data_files,
                )
                return bundle
    have = sorted({m["format"] for m in encoders.values()})
    raise BundleError(
        f"no interpreter for the encoder formats in {path} ({', '.join(have)}): install "
        "ai-edge-litert (extra 'entropi[litert]') for .tflite or onnxruntime ('entropi[ort]') "
        "for .onnx"
    )


def _available_formats() -> set[str]:

    out = set()
    if importlib.util.find_spec("ai_edge_litert") is not None:
        out.add("tflite")
    if importlib.util.find_spec("onnxruntime") is not None:
        out.add("onnx")
    return out
