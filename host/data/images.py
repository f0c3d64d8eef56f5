"""Image-folder readers: ``<root>/<split>/<class>/*.jpg|png`` and PACS-style ``<domain>/<class>``.

A source may be a folder or a tar archive (``.tar``, ``.tar.gz``, ``.tgz``). An archive is
extracted once (safely, see :func:`extract_tar`) into ``<cache_dir>/extracted/<stem>-<key>/``;
the images are decoded once with PIL (a plain loop: about 60 us per 32x32 JPEG) into the uint8
array cache, so later loads read one ``.npz`` and never touch the images.

Folders follow the device's rules (:func:`entropi.device.data.list_split`, one listing for
both): hidden folders are skipped, classes are the train split's matched by name in every split,
a class folder without images of its own is refused naming it (an empty one in ``train`` only),
a symbolic link, or an entry with an image suffix that is not a regular file, is refused naming
it, and so is a PACS ``index.csv`` path leading outside its folder; an image is
checked against :data:`entropi.device.imageprep.MAX_IMAGE_PIXELS` from its header before it is
decoded.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from entropi.device.data import (  # one rule: host and device read the same files
    IMAGE_SUFFIXES,
    list_split,
    list_subfolders,
)
from entropi.device.errors import DataError as DeviceDataError
from entropi.device.imageprep import Preprocess, read_image_file

from .archive import extract_tar
from .base import (
    DataError,
    Dataset,
    DatasetNotFoundError,
    cached_arrays,
    default_cache_dir,
    progress_bar,
    source_key,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "PACS_SPLITS",
    "decode_images",
    "extracted",
    "is_archive",
    "list_image_folder",
    "read_image",
    "read_image_folder",
    "read_pacs",
]

# What a user may ask for -> the split values of PACS's index.csv (official train/val kfold lists;
# PACS has no separate test list, so "test" means the held-out val list).
PACS_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val",),
    "test": ("val",),
    "all": ("train", "val"),
}


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a tar archive file (``.tar``, ``.tar.gz``, ``.tgz``)."""
    return path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz"))


def _archive_stem(path: Path) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def extracted(archive: Path, cache_dir: Path) -> Path:
    """The folder ``archive`` is extracted to (extracting it first if this is the first use)."""
    dest = cache_dir / "extracted" / f"{_archive_stem(archive)}-{source_key(archive)}"
    if not dest.is_dir():
        try:
            extract_tar(archive, dest)
        except FileExistsError:  # a concurrent process extracted it meanwhile
            if not dest.is_dir():
                raise
    return dest


def read_image(path: Path, prep: Preprocess | None) -> np.ndarray:
    """One image file -> ``uint8 (H, W, 3)`` RGB through the device's :func:`read_image_file`
    (the one conversion host and device share); ``prep`` None keeps the file's size. A corrupt,
    oversized or non-image file, or a symbolic link, raises :class:`DataError` naming its path."""
    try:
        return read_image_file(path, prep, follow_symlinks=False)
    except DeviceDataError as e:
        raise DataError(f"{e}; fix or remove the file") from e


def decode_images(paths: Sequence[Path], prep: Preprocess | None = None) -> np.ndarray:
    """Decode image files to one ``uint8 [N, H, W, 3]`` RGB array.

    ``prep`` None: the images keep their size, so all must share one. With a
    :class:`~entropi.device.imageprep.Preprocess`, every image is converted to ``prep.size``
    (colour, then resize / crop) exactly as the device converts it.
    """
    out: np.ndarray | None = None
    if prep is not None:
        out = np.empty((len(paths), *prep.size, 3), dtype=np.uint8)
    bar = progress_bar(len(paths), "decode images", unit="img") if len(paths) >= 2000 else None
    for i, p in enumerate(paths):
        a = read_image(p, prep)
        if out is None:
            out = np.empty((len(paths), *a.shape), dtype=np.uint8)
        elif a.shape != out.shape[1:]:
            raise DataError(
                f"image {p} is {a.shape[1]}x{a.shape[0]} but the first image ({paths[0]}) is "
                f"{out.shape[2]}x{out.shape[1]}; all images of a dataset must have one size, "
                f"resize them first"
            )
        out[i] = a
        if bar is not None and i % 500 == 499:
            bar.update(500)
    if bar is not None:
        bar.update(len(paths) - bar.n)
        bar.close()
    return out if out is not None else np.empty((0, 32, 32, 3), dtype=np.uint8)


def _scan_split(base: Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image files, labels, classes) of ``base/split/<class>/*`` by the device's listing rule
    (:func:`entropi.device.data.list_split`: classes matched by name to ``base/train``'s)."""
    try:
        classes, paths, labels = list_split(base, split)
    except DeviceDataError as e:
        raise DataError(str(e)) from e
    return paths, labels, classes


def _inside(root: Path, rel: str, index: Path) -> Path:
    """``root / rel`` for a path listed in ``index``; :class:`DataError` when it is absolute,
    leads outside ``root`` or passes through a symbolic link."""
    p = root / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise DataError(f"{index} lists {rel!r}, which leads outside {root}")
    q = root
    for part in Path(rel).parts:
        q = q / part
        if q.is_symlink():
            raise DataError(f"{q} (listed in {index}) is a symbolic link; copy the file in")
    return p


def _folder_root(base: Path, split: str) -> Path:
    """``base`` if it holds ``split/``, else its single sub-folder that does (archive layout)."""
    if (base / split).is_dir():
        return base
    subs = [base / n for n in list_subfolders(base)] if base.is_dir() else []
    if len(subs) == 1 and (subs[0] / split).is_dir():
        return subs[0]
    return base


def list_image_folder(
    source: Path, split: str, cache: Path
) -> tuple[Path, list[Path], np.ndarray, list[str]]:
    """``(root, image files, labels, classes)`` of ``source/<split>/<class>/*`` (``root`` holds
    the split folders) from the listing only, nothing decoded (an archive is extracted once)."""
    if not (source.is_dir() or is_archive(source)):
        raise DatasetNotFoundError(
            f"image folder source {source} does not exist (expected a folder holding "
            f"{split}/<class>/*.jpg|png, or a .tar.gz of one)"
        )
    base = extracted(source, cache) if is_archive(source) else source
    root = _folder_root(base, split)
    if not (root / split).is_dir():
        raise DatasetNotFoundError(
            f"{source} has no split folder {split!r} (found folders {list_subfolders(root)}); "
            f"expected {split}/<class>/*.jpg|png"
        )
    paths, labels, classes = _scan_split(root, split)
    return root, paths, labels, classes


def read_image_folder(
    source: str | os.PathLike,
    split: str,
    *,
    name: str = "imagefolder",
    cache_dir: str | os.PathLike | None = None,
    prep: Preprocess | None = None,
) -> Dataset:
    """Read ``<source>/<split>/<class>/*.{jpg,jpeg,png,bmp}``; classes are the sorted folder
    names of the ``train`` split (when there is one), matched by name in every split: a test
    split holding a subset of them gets train's labels, an extra class is a :class:`DataError`
    naming it (the device's rule, :func:`entropi.device.data.list_split`).

    ``prep``: convert every image to the encoder input (see :func:`decode_images`); None keeps
    the files' size, which must then be one.

    ``source`` is a folder or a tar archive holding such a folder (at its top or inside one
    top-level folder, like ``cifar10-jpeg.tar.gz`` -> ``cifar10-jpeg/{train,test}/<class>/``).
    """
    source = Path(source).expanduser()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root, paths, labels, classes = list_image_folder(source, split, cache)

    def build() -> tuple[np.ndarray, np.ndarray, list[str]]:
        return decode_images(paths, prep), labels, classes

    # An archive is keyed by its own stat (cheap); a folder by the stat of every file in it. A
    # split whose labels are the train split's (its own classes differ) keys those classes too.
    extra = f"{name}|{split}" + (f"|{prep}" if prep is not None else "")
    if classes != list_subfolders(root / split):
        extra += f"|classes={classes}"
    key = source_key(source if is_archive(source) else root / split, extra=extra)
    x, y, classes, cache_file = cached_arrays(cache, f"{name}-{split}", key, build)
    return Dataset(
        x=x,
        y=y,
        classes=classes,
        name=name,
        split=split,
        info={"source": str(source), "format": "imagefolder", "cache": str(cache_file)},
    )


def _read_index(index: Path) -> list[dict[str, str]]:
    with open(index, newline="") as f:
        reader = csv.DictReader(f)
        need = {"path", "class", "domain", "split"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DataError(
                f"{index} must have the header path,class,domain,split; got {reader.fieldnames}"
            )
        return list(reader)


def read_pacs(
    source: str | os.PathLike,
    split: str,
    *,
    domains: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    name: str = "pacs",
) -> Dataset:
    """Read PACS-style data: ``<folder>/index.csv`` (``path,class,domain,split``) + the images.

    ``source`` is the folder holding ``index.csv`` or a tar archive of it (``pacs32.tar.gz``).
    ``domains``: the domains to keep (default: all in the index). ``split``: ``train``, ``val``
    (alias ``test``: PACS only has the official train/val lists) or ``all``. Labels index the
    sorted class names of the whole index, so every domain and split shares one label space.
    """
    if split not in PACS_SPLITS:
        raise DataError(f"PACS has no split {split!r}; valid splits: {sorted(PACS_SPLITS)}")
    if isinstance(domains, str):
        domains = [domains]
    source = Path(source).expanduser()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def folder() -> Path:
        base = extracted(source, cache) if is_archive(source) else source
        if not (base / "index.csv").is_file():
            subs = [d for d in base.iterdir() if d.is_dir()]
            if len(subs) == 1 and (subs[0] / "index.csv").is_file():
                return subs[0]
            raise DatasetNotFoundError(
                f"no index.csv in {base} (PACS layout: index.csv with path,class,domain,split "
                f"+ <domain>/<class>/<name>.png)"
            )
        return base

    root = folder()
    rows = _read_index(root / "index.csv")
    known = sorted({r["domain"] for r in rows})
    chosen = sorted(set(domains)) if domains is not None else known
    bad = [d for d in chosen if d not in known]
    if bad or not chosen:
        raise DataError(f"unknown PACS domain(s) {bad or domains}; known domains: {known}")
    classes = sorted({r["class"] for r in rows})

    def build() -> tuple[np.ndarray, np.ndarray, list[str]]:
        keep = [r for r in rows if r["domain"] in chosen and r["split"] in PACS_SPLITS[split]]
        if not keep:
            raise DataError(f"no PACS rows for domains {chosen} and split {split!r} in {root}")
        paths = [_inside(root, r["path"], root / "index.csv") for r in keep]
        for p in paths:
            if not p.is_file():
                raise DatasetNotFoundError(f"{p} is listed in {root / 'index.csv'} but missing")
        label = {c: k for k, c in enumerate(classes)}
        return decode_images(paths), np.asarray([label[r["class"]] for r in keep]), classes

    src = source if is_archive(source) else root
    key = source_key(src, extra=f"{name}|{split}|{','.join(chosen)}")
    stem = f"{name}-{split}-{'+'.join(chosen)}"
    x, y, classes, cache_file = cached_arrays(cache, stem, key, build)
    return Dataset(
        x=x,
        y=y.astype(np.int64, copy=False),
        classes=classes,
        name=name,
        split=split,
        info={
            "source": str(source),
            "format": "pacs",
            "domains": chosen,
            "index_splits": list(PACS_SPLITS[split]),
            "cache": str(cache_file),
        },
    )
