"""Any image (size, colour mode) -> the encoder's input: one documented, deterministic function.

The host and the device both call :func:`convert_image` (the host imports this module), so both
produce bit-identical pixels for the same file and the same :class:`Preprocess`, which the bundle
manifest records.

The steps, in order:

1. **Colour** to 8-bit RGB. Grayscale (PIL ``L``/``1``, an ``(H, W)`` or ``(H, W, 1)`` array)
   is replicated into the three channels. Images with alpha (PIL ``RGBA``/``LA``/``PA``, a
   palette image with a transparent colour, an ``(H, W, 4)`` array) are **composited on black**:
   ``rgb = (rgb * alpha + 127) // 255`` in integers, so a fully transparent pixel becomes black
   and an opaque one is unchanged. Any other PIL mode (``P``, ``CMYK``, ``YCbCr``, 16-bit ``I``
   ...) goes through Pillow's ``convert("RGB")`` (which clips 16-bit values above 255, it does
   not rescale them).
2. **Geometry** to ``size`` = (H, W). ``mode="resize"`` resizes the whole image (the aspect ratio
   is not kept); ``mode="center_crop"`` first crops the largest centred box with the target's
   aspect ratio (integer box, the odd pixel dropped on the right / bottom side), then resizes
   it. The resize is Pillow's ``Image.resize((W, H), filter)`` with the named filter.
   An RGB image already at ``size`` (and, for ``center_crop``, so of the target aspect) is
   returned unchanged, bit for bit.

Only the first frame of an animated image (GIF, WebP) is used. A file is opened lazily and its
header's size checked against :data:`MAX_IMAGE_PIXELS` before any pixel is decoded, so a small
file claiming a huge image (a decompression bomb) is refused cheaply. Pillow is imported only
when an image must be decoded or resized (an RGB array already at the target size needs no
Pillow); without it, a clear :class:`.errors.DataError` says ``pip install pillow``.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

__all__ = [
    "FILTERS",
    "MAX_IMAGE_PIXELS",
    "MODES",
    "Preprocess",
    "convert_image",
    "convert_images",
    "read_image_file",
]

MODES = ("resize", "center_crop")
"""The geometry modes of :class:`Preprocess`."""

FILTERS = ("bilinear", "bicubic", "nearest", "lanczos", "box")
"""The PIL resampling filters :class:`Preprocess` may name."""

MAX_IMAGE_PIXELS = 50_000_000
"""Largest image (width x height) :func:`read_image_file` decodes: a 50-megapixel photo is about
150 MB decoded as RGB. Larger ones are refused from their header, before decoding."""

_PIL_FILTER = {
    "bilinear": "BILINEAR",
    "bicubic": "BICUBIC",
    "nearest": "NEAREST",
    "lanczos": "LANCZOS",
    "box": "BOX",
}


@dataclass(frozen=True)
class Preprocess:
    """How any image becomes the encoder's (H, W, 3) uint8 input (see the module docstring)."""

    size: tuple[int, int] = (32, 32)
    """(H, W) of the encoder input."""
    mode: str = "resize"
    """``resize`` (whole image to ``size``) or ``center_crop`` (largest centred crop of the
    target's aspect ratio, then resize)."""
    filter: str = "bilinear"
    """A PIL resampling filter: ``bilinear``, ``bicubic``, ``nearest``, ``lanczos`` or ``box``."""

    def __post_init__(self) -> None:
        size = self.size
        if (
            isinstance(size, str | bytes)
            or not isinstance(size, Sequence)
            or len(size) != 2
            or not all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in size)
            or not all(s > 0 for s in size)
        ):
            raise DataError(
                f"preprocess size must be two positive ints (height, width), got {size!r}"
            )
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        if self.mode not in MODES:
            raise DataError(f"preprocess mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.filter not in FILTERS:
            raise DataError(
                f"preprocess filter must be one of {', '.join(FILTERS)}, got {self.filter!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"size": [H, W], "mode": ..., "filter": ...}`` (the manifest entry)."""
        return {"size": list(self.size), "mode": self.mode, "filter": self.filter}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """The inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys are
        refused (:class:`.errors.DataError`), so that no setting is silently ignored."""
        if not isinstance(d, dict):
            raise DataError(f"preprocess must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {"size", "mode", "filter"})
        if unknown:
            raise DataError(f"unknown preprocess key(s) {', '.join(unknown)}")
        return cls(**d)


def _pil():
    try:
        # lazy: optional: Pillow, only for image folders
        from PIL import Image
    except ImportError as e:
        raise DataError(
            "reading or resizing images needs Pillow, which is not installed: `pip install "
            "pillow`, or pass an .npz with x_<split> (uint8 NHWC, the encoder's size) and y_<split>"
        ) from e
    return Image


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.uint16)
    return ((rgba[..., :3].astype(np.uint16) * a + 127) // 255).astype(np.uint8)


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or 0 in a.shape:
        raise DataError(
            f"an image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}"
        )
    if a.shape[-1] == 1:
        return np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 4:
        return _composite_on_black(a)
    return a


def _pil_to_rgb(img) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("L", "1"):
        return _array_to_rgb(np.asarray(img.convert("L"), dtype=np.uint8))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _composite_on_black(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _crop_box(h: int, w: int, th: int, tw: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest centred box of aspect ``tw / th``."""
    if w * th > h * tw:  # too wide: keep the height
        cw = min(w, max(1, (h * tw + th // 2) // th))
        left = (w - cw) // 2
        return left, 0, left + cw, h
    ch = min(h, max(1, (w * th + tw // 2) // tw))
    top = (h - ch) // 2
    return 0, top, w, top + ch


def convert_image(img, prep: Preprocess) -> np.ndarray:
    """One image (a PIL image, or a uint8 array (H, W), (H, W, 1), (H, W, 3), (H, W, 4)) ->
    (``prep.size``, 3) uint8 RGB: colour first, then crop / resize (module docstring).

    Alpha is composited on black. An RGB image already at the target size comes back unchanged.
    """
    rgb = _array_to_rgb(np.asarray(img)) if isinstance(img, np.ndarray) else _pil_to_rgb(img)
    th, tw = prep.size
    h, w = rgb.shape[:2]
    box = (0, 0, w, h)
    if prep.mode == "center_crop":
        box = _crop_box(h, w, th, tw)
    if box == (0, 0, w, h) and (h, w) == (th, tw):
        return rgb
    image = _pil()
    pil = image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if box != (0, 0, w, h):
        pil = pil.crop(box)
    resample = getattr(image.Resampling, _PIL_FILTER[prep.filter])
    return np.asarray(pil.resize((tw, th), resample), dtype=np.uint8)


def convert_images(images, prep: Preprocess, *, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`convert_image` over a batch (an (N, H, W[, C]) uint8 array or a list of images):
    (N, H, W, 3) uint8, written into ``out`` when given (a reused buffer of that shape)."""
    n = len(images)
    th, tw = prep.size
    if out is None:
        out = np.empty((n, th, tw, 3), np.uint8)
    elif out.shape != (n, th, tw, 3) or out.dtype != np.uint8:
        raise DataError(f"out must be uint8 {(n, th, tw, 3)}, got {out.dtype} {out.shape}")
    for i in range(n):
        out[i] = convert_image(images[i], prep)
    return out


def read_image_file(
    path: str | os.PathLike, prep: Preprocess | None, *, follow_symlinks: bool = True
) -> np.ndarray:
    """Decode one image file (fully: ``Image.load()``) and :func:`convert_image` it; with
    ``prep`` None, convert the colour only (the image keeps its size).

    The header is read first: an image of more than :data:`MAX_IMAGE_PIXELS` pixels is refused
    before decoding. ``follow_symlinks`` False (files listed from an image folder) refuses a
    symbolic link without opening its target. A missing, corrupt, truncated, oversized or
    non-image file, or one that is not a regular file, raises :class:`.errors.DataError` naming
    ``path``: a folder with such a file is refused, never silently skipped.
    """
    image = _pil()
    path = Path(path)
    try:
        f = _open_regular(path, follow_symlinks)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}") from e
    try:
        with f, warnings.catch_warnings():
            warnings.simplefilter("ignore", image.DecompressionBombWarning)
            with image.open(f) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"image {path} is too large: {w}x{h} pixels, more than the limit of "
                        f"{MAX_IMAGE_PIXELS} (MAX_IMAGE_PIXELS); downscale it first"
                    )
                im.load()
                rgb = _pil_to_rgb(im)
    except DataError:
        raise
    except image.DecompressionBombError as e:
        raise DataError(
            f"image {path} is too large: more than the limit of {MAX_IMAGE_PIXELS} pixels "
            f"(MAX_IMAGE_PIXELS); downscale it first ({e})"
        ) from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, UnidentifiedImage...
        raise DataError(f"cannot read image {path}: {e}") from e
    return rgb if prep is None else convert_image(rgb, prep)


def _open_regular(path: Path, follow_symlinks: bool):
    """``path`` opened for binary reading; :class:`.errors.DataError` unless it is a regular
    file (and, with ``follow_symlinks`` False, not a symbolic link)."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        if path.is_symlink():
            raise DataError(f"image {path} is a symbolic link; copy the file in instead")
        flags |= getattr(os, "O_NOFOLLOW", 0)
    if path.is_dir():
        raise DataError(f"image {path} is a directory, not an image file")
    fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"image {path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
