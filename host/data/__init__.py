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
bad data is an :class:`~entropi.common.errors.EntropiError` (:class:`DataError`,
:class:`DatasetNotFoundError`, :class:`ChecksumError`, :class:`UnsafeArchiveError`,
:class:`DownloadError`), so the CLI prints it as one line.

Submodules (this package re-exports their public names):

- ``registry``: :data:`DATASETS` by name and :func:`load_dataset` (one folder of one dataset).
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
from .registry import (
    CIFAR10_CLASSES,
    DATASETS,
    DatasetSpec,
    dataset_names,
    load_dataset,
    test_split,
)
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

test_split.__test__ = False  # not a pytest test when imported into a test module

__all__ = [
    "CIFAR",
    "PACS_SPLITS",
    "is_archive",
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
