"""Reader for the official CIFAR-10 / CIFAR-100 "python version" files, MD5-checked.

Layout (python 2 pickles, loaded with ``encoding="bytes"``): each batch file is a dict with
``b"data"`` (``uint8 [N, 3072]``, channel-major: 1024 red, 1024 green, 1024 blue values, each a
row-major 32x32 plane) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100); the meta
file holds ``b"label_names"`` / ``b"fine_label_names"``. Published MD5s are those of the official
archives' files (they match torchvision's tables).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .archive import download_file, extract_tar
from .base import (
    DataError,
    Dataset,
    DatasetNotFoundError,
    cached_arrays,
    default_cache_dir,
    file_md5,
    source_key,
    verify_md5,
)

__all__ = ["CIFAR", "CifarSpec", "read_cifar"]


@dataclass(frozen=True)
class CifarSpec:
    """Where the official files of one CIFAR variant live and what they must hash to."""

    folder: str
    archive: str
    url: str
    archive_md5: str
    splits: dict[str, tuple[str, ...]]
    meta: str
    md5: dict[str, str]
    label_key: bytes
    names_key: bytes


CIFAR: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        splits={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        meta="batches.meta",
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": CifarSpec(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        splits={"train": ("train",), "test": ("test",)},
        meta="meta",
        md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}

# Globals a CIFAR pickle may reference: numpy array reconstruction only (no arbitrary code);
# ``_codecs.encode`` is how python 3 writes bytes at protocol 2 (a re-saved file).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"CIFAR pickle references {module}.{name}, which a CIFAR file never does"
            )
        if module == "numpy.core.multiarray":  # python-2-era name of numpy._core.multiarray
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold a CIFAR dict (got {type(obj).__name__})")
    return obj


def _decode_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if b"data" not in d or label_key not in d:
        raise DataError(
            f"{path} lacks the keys b'data' and {label_key!r} of the official CIFAR layout "
            f"(has {sorted(d)})"
        )
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(
            f"{path}: expected data [N, 3072] and N labels, got data {data.shape} and "
            f"{labels.shape[0]} labels"
        )
    # channel-major rows (R plane, G plane, B plane) -> NHWC
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, labels


def _locate(spec: CifarSpec, root: Path) -> Path:
    """The official folder: ``root/<folder>``, or ``root`` itself if it is that folder."""
    if root.name == spec.folder and not (root / spec.folder).is_dir():
        return root
    return root / spec.folder


def _download(spec: CifarSpec, root: Path, url: str | None, progress: bool) -> None:
    """Fetch (or reuse) ``root/<archive>``, check its MD5, extract ``<folder>/`` atomically."""
    archive = root / spec.archive
    advice = f"delete {archive} and download again"
    if not (archive.is_file() and file_md5(archive) == spec.archive_md5):
        print(
            f"entropi: downloading {url or spec.url} (MD5 {spec.archive_md5}) to {archive}, "
            f"extracting {spec.folder}/ into {root}",
            file=sys.stderr,
        )
        download_file(url or spec.url, archive, md5=spec.archive_md5, progress=progress)
    verify_md5(archive, spec.archive_md5, advice=advice)
    target = root / spec.folder
    tmp = root / f".{spec.folder}.{os.getpid()}.extract"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        extract_tar(archive, tmp)  # all of it into a fresh folder, then one rename
        if (tmp / spec.folder).is_dir() and not target.exists():
            os.replace(tmp / spec.folder, target)
        else:  # an incomplete folder is already there: complete it file by file
            extract_tar(archive, root, merge=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_cifar(
    name: str,
    split: str,
    root: str | os.PathLike,
    *,
    download: bool = False,
    url: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    labels: str = "fine",
) -> Dataset:
    """Read split ``train`` or ``test`` of ``cifar10`` / ``cifar100`` from the official files.

    ``labels="coarse"`` (CIFAR-100 only): the 20 superclasses (``coarse_labels`` of the batch
    files, ``coarse_label_names`` of ``meta``) instead of the 100 fine classes.

    Files are looked for in ``root/cifar-10-batches-py`` (resp. ``root/cifar-100-python``). If
    any is missing and ``download`` is true, the official archive (or ``url``) is downloaded to
    ``root``, MD5-checked and extracted; otherwise :class:`DatasetNotFoundError` says what is
    missing. Every file's MD5 is checked before it is decoded (:class:`ChecksumError` on a
    mismatch); the decoded arrays are cached (see :func:`cached_arrays`).
    """
    if name not in CIFAR:
        raise DataError(f"unknown CIFAR variant {name!r}; known: {sorted(CIFAR)}")
    spec = CIFAR[name]
    if labels not in ("fine", "coarse") or (labels == "coarse" and name != "cifar100"):
        raise DataError(
            f"labels={labels!r} is not valid for {name}; only cifar100 has labels='coarse'"
        )
    label_key, names_key = (
        (b"coarse_labels", b"coarse_label_names")
        if labels == "coarse"
        else (spec.label_key, spec.names_key)
    )
    if split not in spec.splits:
        raise DataError(f"{name} has no split {split!r}; valid splits: {sorted(spec.splits)}")
    root = Path(root).expanduser()
    folder = _locate(spec, root)
    files = [*spec.splits[split], spec.meta]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        _download(spec, root, url, progress)
        folder = root / spec.folder
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{name} {split}: missing {missing} in {folder} (expected the official python files "
            f"{files}). Pass download=True to fetch {spec.url} (MD5 {spec.archive_md5}), or put "
            f"the extracted folder {spec.folder}/ from {spec.archive} under {root}"
        )

    def build() -> tuple[np.ndarray, np.ndarray, list[str]]:
        advice = f"delete it and fetch the official {spec.archive} again (download=True)"
        for f in files:
            verify_md5(folder / f, spec.md5[f], advice=advice)
        meta = _unpickle(folder / spec.meta)
        if names_key not in meta:
            raise DataError(f"{folder / spec.meta} lacks {names_key!r} (has {sorted(meta)})")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[names_key]]
        parts = [_decode_batch(folder / f, label_key) for f in spec.splits[split]]
        x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return x, y, classes

    extra = f"{name}|{split}|{sorted(spec.md5.items())}" + ("|coarse" if labels == "coarse" else "")
    key = source_key(*(folder / f for f in files), extra=extra)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = f"{name}-{split}" if labels == "fine" else f"{name}-{labels}-{split}"
    x, y, classes, cache_file = cached_arrays(cache, stem, key, build)
    return Dataset(
        x=x,
        y=y,
        classes=classes,
        name=name,
        split=split,
        info={
            "source": str(folder),
            "format": "cifar-python",
            "labels": labels,
            "cache": str(cache_file),
        },
    )
