"""Datasets for entropi: the registry, readers, the uint8 cache, subsets and on-device batches.

The pipeline names a dataset by a spec (``cifar100:coarse``, ``cifar100:classes=0-24``,
``pacs:photo,sketch``, ``imagefolder:PATH``, ``npz:PATH``; :func:`parse_spec`) and loads it with
:func:`load_spec`, which looks for a named dataset in ``$ENTROPI_DATA``, the config's roots and
the data home (:func:`search_places`), downloading CIFAR into the data home when allowed. Below
it, :func:`load_dataset` returns a :class:`Dataset` (uint8 NHWC images + int64 labels) for a
name in the registry :data:`DATASETS` (:func:`dataset_names`; the held-out split of each:
:func:`test_split`):

- ``cifar10``: the official python files (``root/cifar-10-batches-py/``), else the image folder
  ``root/cifar10-jpeg/{train,test}/<class>/*.jpg``, else its archive ``root/cifar10-jpeg.tar.gz``;
  with ``download=True`` and none of these, the official archive is downloaded.
- ``cifar100``: the official python files ``root/cifar-100-python/{train,test,meta}``
  (``download=True`` fetches them).
- ``pacs``: ``root/pacs32/`` (``index.csv`` + ``<domain>/<class>/*.png``) or ``root/pacs32.tar.gz``.
- ``imagefolder``: ``root/<split>/<class>/*.jpg|png`` (``root`` may also be a ``.tar.gz``).

Slow sources are decoded once into a uint8 cache (``$ENTROPI_CACHE`` or ``./.cache/entropi``).
Training then moves the arrays to the device (:func:`to_device`) and iterates augmented,
normalized batches there (:class:`TensorLoader` / :func:`iterate_batches`). Every error raised on
bad data is an :class:`~entropi.device.errors.EntropiError` (:class:`DataError`,
:class:`DatasetNotFoundError`, :class:`ChecksumError`, :class:`UnsafeArchiveError`,
:class:`DownloadError`), so the CLI prints it as one line.

Submodules (this package re-exports their public names):

- ``specs``: dataset specs, the search places, :func:`load_spec`, :func:`check_spec` (a spec's
  splits listed, not loaded: a run checks every spec before its first stage).
- ``base``: the :class:`Dataset` type, the data errors, MD5 checks and the uint8 array cache.
- ``archive``: safe tar extraction and checksum-verified, atomic downloads.
- ``cifar``: reader for the official CIFAR-10/100 python files.
- ``images``: readers for ``<split>/<class>/`` image folders and PACS-style indexed folders.
- ``subset``: seeded, stratified per-class subsets and splits.
- ``batches``: shuffled, augmented, normalized batches on the training device (torch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .archive import DownloadError, download_file, extract_tar
from .base import (
    ChecksumError,
    DataError,
    Dataset,
    DatasetNotFoundError,
    UnsafeArchiveError,
    default_cache_dir,
    file_md5,
)
from .batches import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    TensorLoader,
    augment_crop_flip,
    channel_stats,
    iterate_batches,
    normalize,
    to_device,
)
from .cifar import CIFAR, read_cifar
from .images import PACS_SPLITS, is_archive, read_image_folder, read_pacs
from .specs import (
    DATA_ENV,
    PACS_DOMAINS,
    SPEC_FORMS,
    DatasetRef,
    absolute_roots,
    absolute_spec,
    check_spec,
    config_file_bases,
    data_home,
    load_spec,
    parse_spec,
    resolve_data_paths,
    search_places,
    select_classes,
    spec_test_split,
)
from .subset import stratified_split, stratified_subset

__all__ = [
    "CIFAR10_CLASSES",
    "DATA_ENV",
    "DatasetRef",
    "PACS_DOMAINS",
    "SPEC_FORMS",
    "absolute_roots",
    "absolute_spec",
    "check_spec",
    "config_file_bases",
    "data_home",
    "load_spec",
    "parse_spec",
    "resolve_data_paths",
    "search_places",
    "select_classes",
    "spec_test_split",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ChecksumError",
    "DATASETS",
    "DataError",
    "Dataset",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "TensorLoader",
    "UnsafeArchiveError",
    "augment_crop_flip",
    "channel_stats",
    "dataset_names",
    "default_cache_dir",
    "download_file",
    "extract_tar",
    "file_md5",
    "iterate_batches",
    "load_dataset",
    "normalize",
    "read_cifar",
    "read_image_folder",
    "read_pacs",
    "stratified_split",
    "stratified_subset",
    "test_split",
    "to_device",
]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class _Request:
    split: str
    root: Path
    download: bool
    domains: Sequence[str] | None
    cache_dir: Path
    url: str | None
    progress: bool


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of :data:`DATASETS`: the dataset's name, splits and the function that loads it."""

    name: str
    """The registry key (``cifar10``, ...), also :attr:`Dataset.name` of what it loads."""
    description: str
    """One line for humans: what the data is."""
    splits: tuple[str, ...]
    """The splits :func:`load_dataset` accepts; empty: any folder name (``imagefolder``)."""
    test_split: str
    """The held-out split the pipeline evaluates on (source accuracy, probe accuracy)."""
    load: Callable[[_Request], Dataset]
    """Reads one split; called by :func:`load_dataset` after it has checked the arguments."""
    downloadable: bool = False
    """Whether ``download=True`` / ``url`` can fetch the official archive."""
    domains: bool = False
    """Whether the data has domains that ``domains=`` selects (PACS)."""


def _load_cifar10(r: _Request) -> Dataset:
    official = CIFAR["cifar10"]
    folder, jpeg_dir, jpeg_tar = (
        r.root / official.folder,
        r.root / "cifar10-jpeg",
        r.root / "cifar10-jpeg.tar.gz",
    )
    complete = all((folder / f).is_file() for f in (*official.splits[r.split], official.meta))
    if complete or r.root.name == official.folder:
        return read_cifar("cifar10", r.split, r.root, cache_dir=r.cache_dir)
    for source in (jpeg_dir, jpeg_tar):
        if source.exists():
            ds = read_image_folder(source, r.split, name="cifar10", cache_dir=r.cache_dir)
            if tuple(ds.classes) != CIFAR10_CLASSES:
                raise DataError(
                    f"{source} has class folders {ds.classes}; CIFAR-10 needs exactly "
                    f"{list(CIFAR10_CLASSES)}"
                )
            return ds
    if r.download:
        return read_cifar(
            "cifar10",
            r.split,
            r.root,
            download=True,
            url=r.url,
            cache_dir=r.cache_dir,
            progress=r.progress,
        )
    raise DatasetNotFoundError(
        f"CIFAR-10 {r.split} not found. Searched, in order: {folder}/ (official python files "
        f"{[*official.splits[r.split], official.meta]}), {jpeg_dir}/ (image folder "
        f"{r.split}/<class>/*.jpg), {jpeg_tar}. Pass download=True to fetch the official "
        f"{official.archive} from {official.url}, or put one of these under {r.root}"
    )


def _load_cifar100(r: _Request) -> Dataset:
    return read_cifar(
        "cifar100",
        r.split,
        r.root,
        download=r.download,
        url=r.url,
        cache_dir=r.cache_dir,
        progress=r.progress,
    )


def _load_pacs(r: _Request) -> Dataset:
    candidates = [r.root / "pacs32", r.root / "pacs32.tar.gz", r.root]
    for source in candidates:
        if (source.is_dir() and (source / "index.csv").is_file()) or is_archive(source):
            return read_pacs(source, r.split, domains=r.domains, cache_dir=r.cache_dir)
    raise DatasetNotFoundError(
        f"PACS not found. Searched {candidates[0]}/index.csv, {candidates[1]} and "
        f"{candidates[2]}/index.csv. Expected pacs32/index.csv (path,class,domain,split) with "
        f"pacs32/<domain>/<class>/<name>.png, or the archive pacs32.tar.gz, under {r.root}; "
        f"PACS has no automatic download"
    )


def _load_imagefolder(r: _Request) -> Dataset:
    return read_image_folder(r.root, r.split, name="imagefolder", cache_dir=r.cache_dir)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="cifar10",
            description="CIFAR-10, 10 classes, 50k/10k 32x32",
            splits=tuple(CIFAR["cifar10"].splits),
            test_split="test",
            load=_load_cifar10,
            downloadable=True,
        ),
        DatasetSpec(
            name="cifar100",
            description="CIFAR-100, 100 fine classes, 50k/10k 32x32",
            splits=tuple(CIFAR["cifar100"].splits),
            test_split="test",
            load=_load_cifar100,
            downloadable=True,
        ),
        DatasetSpec(
            name="pacs",
            description="PACS 32x32, 7 classes, 4 domains (art_painting, cartoon, photo, sketch)",
            splits=tuple(PACS_SPLITS),
            test_split="val",  # PACS's "test" is an alias of its official val list
            load=_load_pacs,
            domains=True,
        ),
        DatasetSpec(
            name="imagefolder",
            description="any <root>/<split>/<class>/*.jpg|png folder (or .tar.gz of one)",
            splits=(),
            test_split="test",
            load=_load_imagefolder,
        ),
    )
}
"""The datasets :func:`load_dataset` knows, by name."""


def dataset_names() -> tuple[str, ...]:
    """Names of :data:`DATASETS`, sorted (config validation lists these)."""
    return tuple(sorted(DATASETS))


def test_split(name: str) -> str:
    """The held-out split of dataset ``name``."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {list(dataset_names())}")
    return DATASETS[name].test_split


test_split.__test__ = False  # not a pytest test when imported into a test module


def load_dataset(
    name: str,
    split: str,
    root: str | os.PathLike,
    *,
    download: bool = False,
    domains: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    url: str | None = None,
    progress: bool = True,
) -> Dataset:
    """Load split ``split`` of dataset ``name`` (a key of :data:`DATASETS`) from ``root``.

    ``download``: fetch the official archive when the files are missing (CIFAR only; ``url``
    overrides the archive's URL). ``domains``: PACS domains to keep (default all). ``cache_dir``:
    where extracted archives and decoded arrays go (default :func:`default_cache_dir`).

    Raises :class:`DataError` (a ``ValueError``) for an unknown name, split or domain,
    :class:`DatasetNotFoundError` (naming the paths searched and how to get the files) when the
    data is missing, :class:`ChecksumError` when an official file's MD5 does not match and
    :class:`DownloadError` when a download fails; all are :class:`EntropiError` subclasses.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    spec = DATASETS[name]
    if spec.splits and split not in spec.splits:
        raise DataError(f"{name} has no split {split!r}; valid splits: {list(spec.splits)}")
    if domains is not None and not spec.domains:
        with_domains = ", ".join(repr(n) for n, s in DATASETS.items() if s.domains)
        raise DataError(f"domains={domains!r} only applies to {with_domains}, not to {name!r}")
    if url is not None and not spec.downloadable:
        downloadable = sorted(n for n, s in DATASETS.items() if s.downloadable)
        raise DataError(f"url only applies to the downloadable datasets {downloadable}")
    request = _Request(
        split=split,
        root=Path(root).expanduser(),
        download=download,
        domains=domains,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        url=url,
        progress=progress,
    )
    return spec.load(request)
