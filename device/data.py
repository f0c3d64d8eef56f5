"""Images for the device: an ``.npz`` (``x_<split>`` uint8 NHWC, ``y_<split>`` ints), an image
folder (``<root>/<class>/*``, or ``<root>/<split>/<class>/*``), or a single image file.

No source is ever loaded whole. :class:`NpzImages` streams an ``.npz`` member in chunks into one
reused buffer (an uncompressed member is read at its byte offset with plain file reads, so no
page of it stays mapped into the process; a compressed member is decompressed sequentially).
:class:`FolderImages` holds only the list of files and decodes ``size`` of them per chunk into
one reused buffer. With a :class:`.imageprep.Preprocess` (the bundle's), images of any size and
colour mode are converted to the encoder's input chunk by chunk (:func:`.imageprep.convert_image`,
the function the host uses too).

Image folders: files with a suffix in :data:`IMAGE_SUFFIXES` (any case); classes are the sorted
sub-folder names. A corrupt or non-image file with such a suffix is refused with a
:class:`.errors.DataError` naming it (when its chunk is decoded), never skipped. A folder holding
any of ``train``/``val``/``test`` uses the split layout; a split it lacks is an error.
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
from .imageprep import Preprocess, convert_images, read_image_file

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLIT_NAMES",
    "ArrayImages",
    "FolderImages",
    "ImageSet",
    "NpzImages",
    "as_image_source",
    "check_image_size",
    "load_images",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""Suffixes of the files an image folder serves (compared case-insensitively)."""

SPLIT_NAMES = ("train", "val", "test")
"""Sub-folder names that make an image folder use the ``<root>/<split>/<class>/*`` layout."""


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

    Only the header is read on construction; the data is read by :meth:`chunks`. Without
    ``prep`` the member must be (N, H, W, 3) uint8 and is served as stored. With ``prep`` it may
    be (N, H, W) or (N, H, W, 1|3|4) uint8 of any size: :attr:`shape` is then the converted
    (N, *prep.size, 3), and each chunk is converted with :func:`.imageprep.convert_images`
    (images already RGB at that size are served as stored).
    """

    def __init__(
        self, path: str | os.PathLike, member: str, prep: Preprocess | None = None
    ) -> None:
        self.path, self.member = Path(path), member
        info = npy_member(self.path, member)
        ok = info.dtype == np.uint8 and len(info.shape) == 4 and info.shape[-1] == 3
        if prep is not None:
            ok = info.dtype == np.uint8 and (
                len(info.shape) == 3 or (len(info.shape) == 4 and info.shape[-1] in (1, 3, 4))
            )
        if not ok:
            want = "(N, H, W[, 1|3|4])" if prep is not None else "(N, H, W, 3)"
            raise DataError(f"{path}:{member} must be uint8 {want}, got {info.dtype} {info.shape}")
        if info.fortran_order:
            raise DataError(f"{path}:{member} is stored in Fortran order; save it C-contiguous")
        self.stored_shape = tuple(info.shape)
        self.prep = None
        self.shape = self.stored_shape
        if prep is not None and self.stored_shape[1:] != (*prep.size, 3):
            self.prep = prep
            self.shape = (self.stored_shape[0], *prep.size, 3)
        self.data_offset = info.data_offset

    def __len__(self) -> int:
        return self.shape[0]

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, images)`` for consecutive chunks of at most ``size`` images. The array is
        one buffer reused for every chunk: use it before asking for the next."""
        m = min(size, max(len(self), 1))
        buf = np.empty((m, *self.stored_shape[1:]), np.uint8)
        out = None if self.prep is None else np.empty((m, *self.shape[1:]), np.uint8)
        row = int(np.prod(self.stored_shape[1:]))
        with open(self.path, "rb", buffering=0) as raw:
            if self.data_offset is not None:
                raw.seek(self.data_offset)
                yield from self._read(raw, buf, row, out)
                return
            with zipfile.ZipFile(raw) as zf, zf.open(f"{self.member}.npy") as member:
                _skip_header(member)
                yield from self._read(member, buf, row, out)

    def _read(self, f, buf: np.ndarray, row: int, out) -> Iterator[tuple[int, np.ndarray]]:
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
            if out is None:
                yield start, buf[:m]
            else:
                yield start, convert_images(buf[:m], self.prep, out=out[:m])


class FolderImages:
    """Image files decoded ``size`` at a time into one reused buffer; only the paths are held.

    With ``prep`` every file is converted to (``prep.size``, 3) by
    :func:`.imageprep.read_image_file`. Without it the files are converted to RGB only and must
    all have the size of the first one (read from its header on construction). A file that
    cannot be decoded raises :class:`.errors.DataError` naming it.
    """

    def __init__(self, paths: list[str | os.PathLike], prep: Preprocess | None = None) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.prep = prep
        if prep is not None:
            h, w = prep.size
        elif self.paths:
            h, w = read_image_file(self.paths[0], None).shape[:2]
        else:
            h = w = 0
        self.shape = (len(self.paths), h, w, 3)

    def __len__(self) -> int:
        return self.shape[0]

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, images)`` for consecutive chunks of at most ``size`` decoded files. The
        array is one buffer reused for every chunk: use it before asking for the next."""
        buf = np.empty((min(size, max(len(self), 1)), *self.shape[1:]), np.uint8)
        for start in range(0, len(self), len(buf)):
            batch = self.paths[start : start + len(buf)]
            for j, p in enumerate(batch):
                img = read_image_file(p, self.prep)
                if img.shape != buf.shape[1:]:
                    raise DataError(
                        f"image {p} is {img.shape[0]}x{img.shape[1]} but {self.paths[0]} is "
                        f"{buf.shape[1]}x{buf.shape[2]}; resize them (or give a Preprocess)"
                    )
                buf[j] = img
            yield start, buf[: len(batch)]


def _skip_header(member) -> None:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(member)
    else:
        np.lib.format.read_array_header_2_0(member)


def as_image_source(images) -> ArrayImages | NpzImages | FolderImages:
    """Wrap an array in :class:`ArrayImages`; pass image sources through."""
    if isinstance(images, ArrayImages | NpzImages | FolderImages):
        return images
    return ArrayImages(np.asarray(images))


@dataclass
class ImageSet:
    """Images (an image source serving (N, H, W, 3) uint8 chunks), int labels (N,) or None,
    class names or None, and the split they are (None: a folder without splits, or one file)."""

    images: ArrayImages | NpzImages | FolderImages
    labels: np.ndarray | None
    class_names: list[str] | None
    split: str | None = None


def _is_image(f: Path) -> bool:
    return f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()


def _scan_folder(path: Path, split: str) -> tuple[Path, list[str], list[str], np.ndarray, bool]:
    """(root, classes, files, labels, split layout) of an image folder, from its listing only."""
    split_layout = any((path / s).is_dir() for s in SPLIT_NAMES)
    root = path / split if split_layout else path
    if split_layout and not root.is_dir():
        have = [s for s in SPLIT_NAMES if (path / s).is_dir()]
        raise DataError(f"{path} has no {split!r} split (it has {', '.join(have)})")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(
            f"{root} has no class folders: expected <root>/<class>/<image> or "
            f"<root>/<split>/<class>/<image>"
        )
    files: list[str] = []
    labels: list[int] = []
    for ci, name in enumerate(classes):
        found = sorted(f.name for f in (root / name).iterdir() if _is_image(f))
        files += [os.path.join(root, name, f) for f in found]
        labels += [ci] * len(found)
    if not files:
        raise DataError(
            f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders "
            f"{', '.join(classes)}"
        )
    return root, classes, files, np.asarray(labels, np.int64), split_layout


def load_images(
    path: str | os.PathLike, split: str = "train", prep: Preprocess | None = None
) -> ImageSet:
    """Image source of ``split`` of an ``.npz``, an image folder, or one image file (labels
    None), converted with ``prep`` (the bundle's :attr:`.bundle.Bundle.preprocess`) when given.

    Nothing is decoded here except an ``.npz``'s labels (and one image file): the source is read
    chunk by chunk by its consumer.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSet(ArrayImages(read_image_file(path, prep)[None]), None, None)
    if path.is_file() and path.suffix == ".npz":
        xk, yk = f"x_{split}", f"y_{split}"
        with np.load(path, allow_pickle=False) as data:
            if xk not in data.files:
                raise DataError(f"{path} has no {xk!r}; it holds {sorted(data.files)}")
            y = data[yk].astype(np.int64) if yk in data.files else None
            names = [str(s) for s in data["class_names"]] if "class_names" in data.files else None
        x = NpzImages(path, xk, prep)
        if y is not None and y.shape != (len(x),):
            raise DataError(f"{path}:{yk} must have shape ({len(x)},), got {y.shape}")
        return ImageSet(x, y, names, split)
    if path.is_dir():
        _, classes, files, labels, split_layout = _scan_folder(path, split)
        return ImageSet(FolderImages(files, prep), labels, classes, split if split_layout else None)
    raise DataError(
        f"{path}: expected an .npz, an image folder or an image file ({', '.join(IMAGE_SUFFIXES)})"
    )


def check_image_size(images, input_shape: tuple[int, int, int]) -> None:
    """Raise :class:`DataError` unless ``images`` (an array or image source, (N, H, W, C))
    match the encoder's (C, H, W)."""
    c, h, w = input_shape
    if images.shape[1:] != (h, w, c):
        raise DataError(
            f"images are {images.shape[1]}x{images.shape[2]}x{images.shape[3]} (HxWxC) but the "
            f"encoder takes {h}x{w}x{c}; resize the images to {h}x{w} first"
        )
