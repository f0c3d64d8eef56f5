"""The dataset registry: :data:`DATASETS` by name, :func:`load_dataset` and the readers behind
it (one folder of one dataset each; :mod:`.specs` finds the folder)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .base import (
    DataError,
    Dataset,
    DatasetNotFoundError,
    default_cache_dir,
)
from .cifar import CIFAR, read_cifar
from .images import PACS_SPLITS, is_archive, read_image_folder, read_pacs

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
