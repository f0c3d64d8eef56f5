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
names of the visible sub-folders (hidden ones, ``.git``, ``.ipynb_checkpoints``, any ``.*``, are
skipped, and so are hidden files). A corrupt or non-image file with such a suffix is refused with a
:class:`.errors.DataError` naming it (when its chunk is decoded), never skipped. A folder holding
any of ``train``/``val``/``test`` uses the split layout; a split it lacks is an error. In the split
layout the classes are the ``train`` split's, matched by name: a ``test`` (or ``val``) split
holding a subset of them gets the train split's labels, and a class the train split lacks is an
error naming it (:func:`list_split`). A class folder whose images are only in sub-folders is an
error naming it, and so is an empty class folder in a training split (train, or a folder without
splits); an empty class folder in a ``test``/``val`` split is a class with no test images. Inside
the folder, symbolic links and entries with an image suffix that are not regular files are refused
(:func:`list_image_files`, the host's rule too), and an image's header is checked against
:data:`.imageprep.MAX_IMAGE_PIXELS` before it is decoded.

``.npz`` files are untrusted: every member header is checked before anything is allocated
(:mod:`._npz`), the data is CRC-checked as it streams, labels must be a 1-D integer array of one
label per image in ``[0, len(class_names))``, and ``class_names`` a 1-D string array of at most
:data:`MAX_CLASSES` names. Anything else is a :class:`.errors.DataError` naming the file and
the member.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._npz import NpyMember, crc_check, npy_member, npz_names, read_member
from .errors import DataError
from .imageprep import MAX_IMAGE_PIXELS, Preprocess, convert_images, read_image_file

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_CLASSES",
    "SPLIT_NAMES",
    "ArrayImages",
    "FolderImages",
    "ImageSet",
    "NpzImages",
    "as_image_source",
    "check_image_size",
    "has_split",
    "list_classes",
    "list_image_files",
    "list_split",
    "list_subfolders",
    "load_images",
    "require_images",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""Suffixes of the files an image folder serves (compared case-insensitively)."""

SPLIT_NAMES = ("train", "val", "test")
"""Sub-folder names that make an image folder use the ``<root>/<split>/<class>/*`` layout."""

MAX_CLASSES = 100_000
"""Most class names an ``.npz`` ``class_names`` member may hold."""

_MAX_NAME_BYTES = 64 * 1024**2
"""Most bytes a ``class_names`` member may claim."""


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
        if info.shape[1] * info.shape[2] > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{path}:{member} holds {info.shape[1]}x{info.shape[2]} images, more than "
                f"{MAX_IMAGE_PIXELS} pixels each"
            )
        self.info: NpyMember = info
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
            try:
                with zipfile.ZipFile(raw) as zf, zf.open(f"{self.member}.npy") as member:
                    member.read(self.info.header_len)
                    yield from self._read(member, buf, row, out)
            except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
                raise DataError(f"{self.path}:{self.member} is corrupt ({e})") from e

    def _read(self, f, buf: np.ndarray, row: int, out) -> Iterator[tuple[int, np.ndarray]]:
        """Chunks of ``f``; the member's CRC-32 is checked after its last byte is read."""
        n = len(self)
        crc = self.info.header_crc
        for start in range(0, n, len(buf)):
            m = min(len(buf), n - start)
            view = memoryview(buf.reshape(-1)).cast("B")[: m * row]
            pos = 0
            while pos < len(view):
                got = f.readinto(view[pos:])
                if not got:
                    raise DataError(f"{self.path}:{self.member} is truncated at image {start}")
                pos += got
            crc = zlib.crc32(view, crc)
            if start + m >= n:
                crc_check(self.path, self.info, crc)
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
            h, w = read_image_file(self.paths[0], None, follow_symlinks=False).shape[:2]
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
                img = read_image_file(p, self.prep, follow_symlinks=False)
                if img.shape != buf.shape[1:]:
                    raise DataError(
                        f"image {p} is {img.shape[0]}x{img.shape[1]} but {self.paths[0]} is "
                        f"{buf.shape[1]}x{buf.shape[2]}; resize them (or give a Preprocess)"
                    )
                buf[j] = img
            yield start, buf[: len(batch)]


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


def _entry_kind(p: Path) -> str:
    """``dir``, ``file``, ``link`` (a symbolic link, never followed) or ``other``."""
    mode = p.lstat().st_mode
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def _refuse_link(p: Path) -> None:
    raise DataError(
        f"{p} is a symbolic link; image folders may not hold links (they could point outside "
        "the folder): copy the file or folder in instead"
    )


def list_subfolders(folder: str | os.PathLike) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder`` (a hidden one, named ``.*``, such as
    ``.git`` or ``.ipynb_checkpoints``, is skipped); a symbolic link to a folder among them
    raises :class:`.errors.DataError`, so that nothing outside ``folder`` is read."""
    folder = Path(folder)
    names = []
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        kind = _entry_kind(p)
        if kind == "link" and p.is_dir():
            _refuse_link(p)
        if kind == "dir":
            names.append(p.name)
    return sorted(names)


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files of ``folder`` (suffix in :data:`IMAGE_SUFFIXES`, any case): the one
    listing rule of the device and the host.

    Files with other suffixes are ignored, and so are hidden ones (``._x.jpg``, the resource
    forks a macOS copy leaves, ``.x.png``). An entry with an image suffix that is a symbolic link
    (wherever it points) or not a regular file (a folder named ``x.png``, a device, a pipe)
    raises :class:`.errors.DataError` naming it: nothing outside ``folder`` is ever opened.
    """
    folder = Path(folder)
    files = []
    for p in folder.iterdir():
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        kind = _entry_kind(p)
        if kind == "link":
            _refuse_link(p)
        if kind != "file":
            raise DataError(
                f"{p} has an image suffix but is not a regular file ({kind}); remove or rename it"
            )
        files.append(p)
    return sorted(files, key=lambda f: f.name)


def _class_files(folder: Path, required: bool) -> list[Path]:
    """The images of class folder ``folder``; :class:`.errors.DataError` when it holds none
    itself but has sub-folders (images are read from ``<class>/`` only), or when it is empty
    and ``required``."""
    files = list_image_files(folder)
    if files:
        return files
    subs = list_subfolders(folder)
    if subs:
        raise DataError(
            f"class folder {folder} holds no images itself, only the sub-folder(s) "
            f"{', '.join(subs)}: images must sit directly in <class>/ (move them up, or make "
            "each sub-folder a class folder)"
        )
    if required:
        raise DataError(
            f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add images "
            "to it or remove it"
        )
    return files


def list_classes(
    root: str | os.PathLike, reference: list[str] | None = None, *, required: bool = True
) -> tuple[list[str], list[Path], np.ndarray]:
    """``(classes, files, labels)`` of ``root/<class>/<image>`` from its listing only.

    ``reference`` None: the classes are the sorted class folders. Otherwise (the train split's
    classes) ``root``'s class folders are matched to it by name: ``classes`` is ``reference``,
    labels index it, and a class folder it lacks raises :class:`.errors.DataError` naming it.
    ``required``: an empty class folder is an error (a training split); otherwise it is a class
    with no images. Images only in sub-folders of a class folder are always an error.
    """
    root = Path(root)
    names = list_subfolders(root)
    if not names:
        raise DataError(
            f"{root} holds no images: it has no class folders (expected <root>/<class>/<image> "
            "or <root>/<split>/<class>/<image>)"
        )
    classes = names if reference is None else list(reference)
    extra = [n for n in names if n not in classes]
    if extra:
        raise DataError(
            f"{root} has class folder(s) {', '.join(extra)} that the train split lacks (its "
            f"classes: {', '.join(classes)}); classes are matched by name, so every class of "
            "a split must be a train class"
        )
    index = {n: i for i, n in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for name in names:
        found = _class_files(root / name, required)
        files += found
        labels += [index[name]] * len(found)
    if not files:
        raise DataError(
            f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders "
            f"{', '.join(names)}"
        )
    return classes, files, np.asarray(labels, np.int64)


def list_split(base: str | os.PathLike, split: str) -> tuple[list[str], list[Path], np.ndarray]:
    """``(classes, files, labels)`` of ``base/<split>/<class>/<image>`` (:func:`list_classes`):
    the classes of any split are those of ``base/train`` when it exists, matched by name, and an
    empty class folder is an error in ``train`` only. The one rule of the device and the host.
    A symbolic link as the split folder raises :class:`.errors.DataError`."""
    base = Path(base)
    for name in dict.fromkeys((split, "train")):
        if _entry_kind_or_none(base / name) == "link":
            _refuse_link(base / name)
    reference = None
    if split != "train" and (base / "train").is_dir():
        reference = list_subfolders(base / "train")
    return list_classes(base / split, reference, required=split == "train")


def _entry_kind_or_none(p: Path) -> str | None:
    try:
        return _entry_kind(p)
    except FileNotFoundError:
        return None


def require_images(n: int, where: str) -> None:
    """:class:`.errors.DataError` unless ``where`` (a split, named in the message) holds images:
    a split of zero images is refused, never trained on or scored."""
    if n == 0:
        raise DataError(f"{where} holds no images (0 rows); every split used needs images")


def _scan_folder(path: Path, split: str) -> tuple[list[str], list[str], np.ndarray, bool]:
    """(classes, files, labels, split layout) of an image folder, from its listing only."""
    split_layout = _split_layout(path)
    if split_layout and not (path / split).is_dir():
        have = [s for s in SPLIT_NAMES if (path / s).is_dir()]
        raise DataError(f"{path} has no {split!r} split (it has {', '.join(have)})")
    if split_layout:
        classes, files, labels = list_split(path, split)
    else:
        classes, files, labels = list_classes(path)
    return classes, [os.fspath(f) for f in files], labels, split_layout


def _split_layout(path: Path) -> bool:
    return any((path / s).is_dir() for s in SPLIT_NAMES)


def has_split(path: str | os.PathLike, split: str) -> bool:
    """Whether ``path`` (an ``.npz`` or an image folder in the split layout) has a ``split``
    split (``x_<split>``, or a ``<split>/`` sub-folder). A folder without the split layout, an
    image file or a missing path has none. An unreadable ``.npz`` raises
    :class:`.errors.DataError`."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return f"x_{split}" in npz_names(path)
    if path.is_dir():
        return _split_layout(path) and (path / split).is_dir()
    return False


def _read_labels(path: Path, key: str, n: int) -> np.ndarray:
    """Member ``key`` of ``path``: (n,) integer labels >= 0 (int64), header checked first."""
    try:
        info = npy_member(path, key)
    except KeyError:
        raise DataError(f"{path} has no {key!r}") from None
    if info.shape != (n,):
        raise DataError(
            f"{path}:{key} must have shape ({n},) (one label per image), got {info.shape}"
        )
    if info.dtype.kind not in "iu":
        raise DataError(
            f"{path}:{key} must be an integer array of class indices, got dtype {info.dtype}; "
            "store the labels as integers (e.g. y.astype(np.int64))"
        )
    y = read_member(path, key)
    if len(y) and y.dtype.kind == "u" and int(y.max()) > np.iinfo(np.int64).max:
        raise DataError(
            f"{path}:{key} holds label {int(y.max())}, too large for a class index; labels are "
            "class indices 0, 1, ..."
        )
    y = y.astype(np.int64)
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{path}:{key} holds a negative label ({int(y.min())})")
    return y


def _read_class_names(path: Path) -> list[str]:
    """Member ``class_names`` of ``path``: a 1-D string array of at most MAX_CLASSES names."""
    try:
        info = npy_member(path, "class_names")
    except KeyError:
        raise DataError(f"{path} has no 'class_names'") from None
    if len(info.shape) != 1 or info.dtype.kind not in "US" or info.dtype.itemsize == 0:
        raise DataError(
            f"{path}:class_names must be a 1-D array of strings, got {info.dtype} {info.shape}"
        )
    if info.shape[0] > MAX_CLASSES:
        raise DataError(
            f"{path}:class_names holds {info.shape[0]} names, more than {MAX_CLASSES} classes"
        )
    names = read_member(path, "class_names", max_bytes=_MAX_NAME_BYTES)
    if names.dtype.kind == "S":
        try:
            return [s.decode() for s in names.tolist()]
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:class_names is not UTF-8 text ({e})") from e
    return [str(s) for s in names.tolist()]


def load_images(
    path: str | os.PathLike, split: str = "train", prep: Preprocess | None = None
) -> ImageSet:
    """Image source of ``split`` of an ``.npz``, an image folder, or one image file (labels
    None), converted with ``prep`` (the bundle's :attr:`.bundle.Bundle.preprocess`) when given.

    Nothing is decoded here except an ``.npz``'s labels (and one image file): the source is read
    chunk by chunk by its consumer. A split of zero images is refused (:func:`require_images`).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSet(ArrayImages(read_image_file(path, prep)[None]), None, None)
    if path.is_file() and path.suffix == ".npz":
        xk, yk = f"x_{split}", f"y_{split}"
        members = npz_names(path)
        if xk not in members:
            raise DataError(f"{path} has no {xk!r}; it holds {sorted(members)}")
        x = NpzImages(path, xk, prep)
        require_images(len(x), f"{path}:{xk}")
        y = _read_labels(path, yk, len(x)) if yk in members else None
        names = _read_class_names(path) if "class_names" in members else None
        if y is not None and names is not None and len(y) and int(y.max()) >= len(names):
            raise DataError(
                f"{path}:{yk} holds label {int(y.max())} but class_names has {len(names)} "
                f"classes (labels must lie in [0, {len(names)}))"
            )
        return ImageSet(x, y, names, split)
    if path.is_dir():
        classes, files, labels, split_layout = _scan_folder(path, split)
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
