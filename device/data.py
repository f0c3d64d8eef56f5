"""Images for the device: an ``.npz`` (``x_<split>`` uint8 NHWC, ``y_<split>`` ints), an image
folder (``<root>/<class>/*.png|jpg``, or ``<root>/<split>/<class>/...``), or a single image.

Images of an ``.npz`` are never loaded whole: :class:`NpzImages` streams them in chunks into one
reused buffer (an uncompressed member is read at its byte offset with plain file reads, so no
page of it stays mapped into the process; a compressed member is decompressed sequentially).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._npz import npy_member
from .errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "ArrayImages",
    "ImageSet",
    "NpzImages",
    "as_image_source",
    "check_image_size",
    "load_images",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ArrayImages:
    """Images already in memory (N, H, W, 3) uint8, served in chunks like :class:`NpzImages`."""

    def __init__(self, images: np.ndarray) -> None:
        self.array = images
        self.shape = tuple(images.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, images[start:start + size])`` for consecutive chunks."""
        for start in range(0, len(self), size):
            yield start, self.array[start : start + size]


class NpzImages:
    """Member ``x_<split>`` of an ``.npz``, read ``size`` images at a time into a reused buffer.

    Only the header is read on construction; the data is read by :meth:`chunks`.
    """

    def __init__(self, path: str | os.PathLike, member: str) -> None:
        self.path, self.member = Path(path), member
        info = npy_member(self.path, member)
        if info.dtype != np.uint8 or len(info.shape) != 4 or info.shape[-1] != 3:
            raise DataError(
                f"{path}:{member} must be uint8 (N, H, W, 3), got {info.dtype} {info.shape}"
            )
        if info.fortran_order:
            raise DataError(f"{path}:{member} is stored in Fortran order; save it C-contiguous")
        self.shape = info.shape
        self.data_offset = info.data_offset

    def __len__(self) -> int:
        return self.shape[0]

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, images)`` for consecutive chunks of at most ``size`` images. The array is
        one buffer reused for every chunk: use it before asking for the next."""
        buf = np.empty((min(size, max(len(self), 1)), *self.shape[1:]), np.uint8)
        row = int(np.prod(self.shape[1:]))
        with open(self.path, "rb", buffering=0) as raw:
            if self.data_offset is not None:
                raw.seek(self.data_offset)
                yield from self._read(raw, buf, row)
                return
            with zipfile.ZipFile(raw) as zf, zf.open(f"{self.member}.npy") as member:
                _skip_header(member)
                yield from self._read(member, buf, row)

    def _read(self, f, buf: np.ndarray, row: int) -> Iterator[tuple[int, np.ndarray]]:
        n = len(self)
        for start in range(0, n, len(buf)):
            m = min(len(buf), n - start)
            view = memoryview(buf.reshape(-1)).cast("B")[: m * row]
            pos = 0
            while pos < len(view):
                got = f.readinto(view[pos:])
                if not got:
                    raise DataError(f"{self.path}:{self.member} is truncated at image {start}")
                pos += got
            yield start, buf[:m]


def _skip_header(member) -> None:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(member)
    else:
        np.lib.format.read_array_header_2_0(member)


def as_image_source(images) -> ArrayImages | NpzImages:
    """Wrap an array in :class:`ArrayImages`; pass image sources through."""
    if isinstance(images, ArrayImages | NpzImages):
        return images
    return ArrayImages(np.asarray(images))


@dataclass
class ImageSet:
    """Images (an in-memory array source or an ``.npz`` stream, (N, H, W, 3) uint8), int labels
    (N,) or None, class names or None."""

    images: ArrayImages | NpzImages
    labels: np.ndarray | None
    class_names: list[str] | None


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError(
            "reading image files needs Pillow, which is not installed: `pip install pillow`, or "
            "pass an .npz with x_<split> (uint8 NHWC) and y_<split>"
        ) from e
    return Image


def _read_image(path: Path) -> np.ndarray:
    with _pil().open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_images(path: str | os.PathLike, split: str = "train") -> ImageSet:
    """Load ``split`` of an ``.npz``, an image folder, or one image file (labels None)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSet(ArrayImages(_read_image(path)[None]), None, None)
    if path.is_file() and path.suffix == ".npz":
        xk, yk = f"x_{split}", f"y_{split}"
        with np.load(path, allow_pickle=False) as data:
            if xk not in data.files:
                raise DataError(f"{path} has no {xk!r}; it holds {sorted(data.files)}")
            y = data[yk].astype(np.int64) if yk in data.files else None
            names = [str(s) for s in data["class_names"]] if "class_names" in data.files else None
        x = NpzImages(path, xk)
        if y is not None and y.shape != (len(x),):
            raise DataError(f"{path}:{yk} must have shape ({len(x)},), got {y.shape}")
        return ImageSet(x, y, names)
    if path.is_dir():
        root = path / split if (path / split).is_dir() else path
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{root} has no class folders (<root>/<class>/*.png|jpg)")
        images, labels = [], []
        for ci, name in enumerate(classes):
            files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            for f in files:
                images.append(_read_image(f))
                labels.append(ci)
        if not images:
            raise DataError(f"{root} holds no .png/.jpg images")
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise DataError(f"images in {root} have different sizes {sorted(shapes)}; resize them")
        return ImageSet(ArrayImages(np.stack(images)), np.asarray(labels, np.int64), classes)
    raise DataError(f"{path}: expected an .npz, an image folder or a .png/.jpg file")


def check_image_size(images, input_shape: tuple[int, int, int]) -> None:
    """Raise :class:`DataError` unless ``images`` (an array or image source, (N, H, W, C))
    match the encoder's (C, H, W)."""
    c, h, w = input_shape
    if images.shape[1:] != (h, w, c):
        raise DataError(
            f"images are {images.shape[1]}x{images.shape[2]}x{images.shape[3]} (HxWxC) but the "
            f"encoder takes {h}x{w}x{c}; resize the images to {h}x{w} first"
        )
