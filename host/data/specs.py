"""Dataset specs (``cifar100:coarse``, ``imagefolder:PATH``, ...) and where named data is found.

A spec names a source or a target: ``cifar10``, ``cifar100``, ``cifar100:coarse`` (the 20
superclasses), ``cifar100:classes=0-24`` / ``cifar10:classes=0-4,8`` (a class split: only those
fine classes, in increasing order, relabelled ``0..k-1``; the seed paper 000 pre-trains on
``cifar100:classes=0-24`` and transfers to ``cifar100:classes=25-99``), ``pacs`` /
``pacs:photo,sketch`` (domains), ``imagefolder:PATH`` (``PATH/<split>/<class>/*`` or, with no
split folders, ``PATH/<class>/*`` split into train/test by a seeded stratified fraction) and
``npz:PATH`` (the device's layout: ``x_train``/``y_train``, optional ``x_test``/``y_test``,
optional ``class_names``). :func:`parse_spec` checks the form, :func:`load_spec` loads one split.

A named dataset (cifar10, cifar100, pacs) is looked for, in order, in ``$ENTROPI_DATA`` (one
folder), the config's data roots, then the per-user data home (``$XDG_DATA_HOME/entropi`` or
``~/.local/share/entropi``; :func:`data_home`); downloads go to the data home.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from entropi.device.data import (
    ImageSet,
    has_split,
    list_classes,
    list_subfolders,
    load_images,
    require_images,
)
from entropi.device.imageprep import Preprocess, convert_image

from .archive import DownloadError
from .base import (
    DataError,
    Dataset,
    DatasetNotFoundError,
    cached_arrays,
    default_cache_dir,
    source_key,
)
from .cifar import CIFAR, read_cifar
from .images import decode_images, extracted, is_archive, list_image_folder, read_image_folder
from .registry import load_dataset  # the registry's readers, one folder each
from .subset import stratified_split

__all__ = [
    "DATA_ENV",
    "absolute_roots",
    "absolute_spec",
    "check_spec",
    "config_file_bases",
    "DatasetRef",
    "PACS_DOMAINS",
    "SPEC_FORMS",
    "data_home",
    "load_spec",
    "parse_spec",
    "resolve_data_paths",
    "search_places",
    "select_classes",
    "spec_test_split",
]

DATA_ENV = "ENTROPI_DATA"
PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
SPEC_FORMS = (
    "cifar10",
    "cifar100",
    "cifar100:coarse",
    "cifar10|cifar100:classes=A-B[,C,...]",
    "pacs[:DOMAIN,...]",
    "imagefolder:PATH",
    "npz:PATH",
)
_NAMES = ("cifar10", "cifar100", "pacs", "imagefolder", "npz")
_SPLIT_DIRS = ("train", "test", "val")
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


@dataclass(frozen=True)
class DatasetRef:
    """A parsed spec: the dataset's ``name``, its ``option`` (``coarse``, ``classes=...`` in
    canonical form, PACS domains joined by commas) and, for ``imagefolder`` / ``npz``, the
    ``path``."""

    name: str
    option: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        tail = self.option if self.option is not None else self.path
        return self.name if tail is None else f"{self.name}:{tail}"

    @property
    def domains(self) -> list[str] | None:
        return self.option.split(",") if self.name == "pacs" and self.option else None

    @property
    def class_ids(self) -> list[int] | None:
        """The original labels a ``classes=`` spec keeps, increasing (None: every class)."""
        if self.option is None or not self.option.startswith("classes="):
            return None
        return _expand_ranges(self.option.removeprefix("classes="))


def _expand_ranges(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ids += range(int(lo), int(hi or lo) + 1)
    return ids


def _canonical_ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts, start = [], ids[0]
    for prev, cur in zip(ids, [*ids[1:], None], strict=True):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(parts)


def _parse_classes(name: str, text: str, spec: str) -> str:
    """``A-B[,C[-D]...]`` of ``name``'s class indices -> canonical ``classes=...`` option."""
    n = _NUM_CLASSES[name]
    ids: list[int] = []
    for part in text.split(","):
        lo, dash, hi = (t.strip() for t in part.partition("-"))
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise DataError(
                f"classes= takes class indices and ranges like 0-24 or 0-4,8 (0-based, both ends "
                f"included), got {part.strip()!r} in {spec!r}"
            )
        a, b = int(lo), int(hi) if dash else int(lo)
        if a > b or b >= n:
            raise DataError(
                f"class range {part.strip()!r} in {spec!r} must run from low to high within "
                f"0-{n - 1} ({name} has {n} classes)"
            )
        ids += range(a, b + 1)
    if len(set(ids)) != len(ids):
        raise DataError(f"a class is listed twice in {spec!r}")
    if len(ids) < 2:
        raise DataError(f"{spec!r} keeps {len(ids)} class; a class split needs at least 2")
    return "classes=" + _canonical_ranges(sorted(ids))


def select_classes(ds: Dataset, class_ids: list[int] | None) -> Dataset:
    """The rows of ``ds`` whose label is in ``class_ids``, relabelled ``0..k-1`` in increasing
    original order; ``classes`` are the kept names and ``info["class_ids"]`` the original
    labels (``ds`` itself when ``class_ids`` is None)."""
    if class_ids is None:
        return ds
    ids = np.asarray(sorted(class_ids), dtype=np.int64)
    if ids.size and ids[-1] >= len(ds.classes):
        raise DataError(f"{ds.name} has {len(ds.classes)} classes, no class {int(ids[-1])}")
    remap = np.full(len(ds.classes), -1, dtype=np.int64)
    remap[ids] = np.arange(ids.size)
    keep = np.flatnonzero(remap[ds.y] >= 0)
    info = {**ds.info, "class_ids": ids.tolist()}
    names = [ds.classes[i] for i in ids]
    return Dataset(ds.x[keep], remap[ds.y[keep]], names, ds.name, ds.split, info)


def parse_spec(spec: str, *, must_exist: bool = True) -> DatasetRef:
    """Parse a dataset spec (see the module docstring); :class:`DataError` for a bad one.

    ``must_exist``: check that an ``imagefolder`` / ``npz`` path exists (config validation
    passes False: the path is checked when the data is loaded).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"a dataset spec must be a non-empty string, got {spec!r}")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _NAMES:
        raise DataError(
            f"unknown dataset {name!r} in spec {spec!r}; known: {', '.join(SPEC_FORMS)}"
        )
    rest = rest.strip()
    if name in _NUM_CLASSES and rest.startswith("classes="):
        return DatasetRef(name, _parse_classes(name, rest.removeprefix("classes="), spec))
    if name == "cifar10":
        if sep:
            raise DataError(
                f"cifar10 takes no option but classes=A-B (e.g. cifar10:classes=0-4), got "
                f"{spec!r} (only cifar100 has ':coarse')"
            )
        return DatasetRef("cifar10")
    if name == "cifar100":
        if sep and rest not in ("coarse", "fine"):
            raise DataError(
                f"cifar100 option must be 'coarse' (the 20 superclasses) or 'classes=A-B,...' "
                f"(fine classes, e.g. classes=0-24), got {rest!r} in {spec!r}"
            )
        return DatasetRef("cifar100", "coarse" if rest == "coarse" else None)
    if name == "pacs":
        if not sep:
            return DatasetRef("pacs")
        domains = [d.strip() for d in rest.split(",")]
        bad = [d for d in domains if d not in PACS_DOMAINS]
        if not rest or bad:
            raise DataError(
                f"unknown PACS domain(s) {bad or [rest]} in {spec!r}; known domains: "
                f"{', '.join(PACS_DOMAINS)} (e.g. pacs:photo,sketch)"
            )
        if len(set(domains)) != len(domains):
            raise DataError(f"a PACS domain is listed twice in {spec!r}")
        return DatasetRef("pacs", ",".join(sorted(domains)))
    what = (
        "a folder of <class>/ or <split>/<class>/ images (or a .tar.gz of one)"
        if name == "imagefolder"
        else "an .npz with x_train, y_train (optional x_test, y_test, class_names)"
    )
    if not rest:
        raise DataError(f"{name} needs a path: {name}:PATH, PATH being {what}; got {spec!r}")
    path = Path(rest).expanduser()
    if must_exist:
        if not path.exists():
            raise DataError(f"{spec!r}: {path} does not exist (expected {what})")
        if name == "imagefolder" and not (path.is_dir() or is_archive(path)):
            raise DataError(f"{spec!r}: {path} is not a folder or a .tar(.gz) archive")
        if name == "npz" and not path.is_file():
            raise DataError(f"{spec!r}: {path} is not a file (expected {what})")
    return DatasetRef(name, None, path)


def spec_test_split(spec: str | DatasetRef) -> str:
    """The held-out split of a spec: ``val`` for PACS, ``test`` for everything else."""
    ref = spec if isinstance(spec, DatasetRef) else parse_spec(spec, must_exist=False)
    return "val" if ref.name == "pacs" else "test"


def data_home() -> Path:
    """The per-user data home: ``$XDG_DATA_HOME/entropi``, else ``~/.local/share/entropi``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "entropi"


def config_file_bases(config_file: str | os.PathLike) -> list[Path]:
    """The folders the relative data paths of ``config_file`` are relative to: its own folder;
    for a config shipped in a source checkout (``<checkout>/host/configs/``), the checkout's
    root (``../shared/datasets`` is then the datasets folder beside the clone, found from any
    working directory) and the working directory (as before: an installed package has no
    checkout)."""
    folder = Path(os.path.abspath(config_file)).parent
    shipped = Path(__file__).resolve().parents[1] / "configs"
    if folder.resolve() != shipped:
        return [folder]
    checkout = shipped.parents[1]
    return [checkout, Path.cwd()] if (checkout / "pyproject.toml").is_file() else [Path.cwd()]


def absolute_roots(roots: Sequence[str], bases: Sequence[Path]) -> list[str]:
    """``roots`` with each relative one made absolute against every one of ``bases`` (in
    order, duplicates dropped); absolute ones (``~`` expanded) are kept as written."""
    out: list[str] = []
    for r in roots:
        p = Path(r).expanduser()
        found = [r] if p.is_absolute() else [os.path.abspath(b / p) for b in bases]
        out += [f for f in found if f not in out]
    return out


def absolute_spec(spec: str, base: Path) -> str:
    """``spec`` with a relative ``imagefolder:`` / ``npz:`` path made absolute against ``base``
    (every other spec, and a spec that does not parse, unchanged)."""
    try:
        ref = parse_spec(spec, must_exist=False)
    except DataError:
        return spec  # validation says what is wrong with it
    if ref.path is None or Path(spec.partition(":")[2].strip()).is_absolute():
        return spec
    return f"{ref.name}:{os.path.abspath(base / ref.path)}"


def resolve_data_paths(data: dict, bases: Sequence[Path]) -> dict:
    """A copy of a raw ``[data]`` table whose relative paths are made absolute: ``roots`` (and
    the deprecated ``root``) against each of ``bases``, the ``source`` / ``target`` spec paths
    against the first (values of the wrong type are left to validation)."""
    data = dict(data)
    roots = data.get("roots")
    if isinstance(roots, list) and all(isinstance(r, str) and r.strip() for r in roots):
        data["roots"] = absolute_roots(roots, bases)
    if isinstance(data.get("root"), str) and data["root"]:
        data["root"] = absolute_roots([data["root"]], bases[:1])[0]
    for key in ("source", "target"):
        if isinstance(data.get(key), str):
            data[key] = absolute_spec(data[key], bases[0])
    return data


def search_places(roots: Sequence[str | os.PathLike]) -> list[tuple[str, Path | None]]:
    """``(label, folder)`` in search order: ``$ENTROPI_DATA`` (folder None when unset), each of
    ``roots`` (a relative one: relative to the working directory; :func:`load_config
    <entropi.host.run.config.load_config>` makes a config file's roots absolute, relative to the
    file, see :func:`config_file_bases`), the data home."""
    env = os.environ.get(DATA_ENV)
    places: list[tuple[str, Path | None]] = [
        (f"${DATA_ENV}", Path(env).expanduser() if env else None)
    ]
    places += [("data root", Path(r).expanduser()) for r in roots]
    places.append(("data home", data_home()))
    return places


def _layouts(name: str, split: str) -> list[tuple[str, str]]:
    """(relative path, description) of what makes ``name`` present in a folder."""
    if name == "cifar10":
        spec = CIFAR["cifar10"]
        return [
            (
                spec.folder,
                f"{spec.folder}/ (official python files {[*spec.splits[split], spec.meta]})",
            ),
            ("cifar10-jpeg", f"cifar10-jpeg/{split}/<class>/*.jpg"),
            ("cifar10-jpeg.tar.gz", "cifar10-jpeg.tar.gz"),
        ]
    if name == "cifar100":
        spec = CIFAR["cifar100"]
        return [
            (
                spec.folder,
                f"{spec.folder}/ (official python files {[*spec.splits[split], spec.meta]})",
            )
        ]
    return [
        ("pacs32", "pacs32/index.csv + pacs32/<domain>/<class>/*.png"),
        ("pacs32.tar.gz", "pacs32.tar.gz"),
    ]


def _present(name: str, split: str, folder: Path) -> bool:
    if name in CIFAR:
        spec = CIFAR[name]
        files = [*spec.splits.get(split, ()), spec.meta]
        if all((folder / spec.folder / f).is_file() for f in files):
            return True
        return name == "cifar10" and (
            (folder / "cifar10-jpeg").is_dir() or (folder / "cifar10-jpeg.tar.gz").is_file()
        )
    return (folder / "pacs32" / "index.csv").is_file() or (folder / "pacs32.tar.gz").is_file()


def _locate(ref: DatasetRef, split: str, roots, download: bool) -> Path | None:
    places = search_places(roots)
    for _label, folder in places:
        if folder is not None and folder.is_dir() and _present(ref.name, split, folder):
            return folder
    if download and ref.name in CIFAR:
        return None  # the caller downloads into the data home
    what = " or ".join(d for _, d in _layouts(ref.name, split))
    how = (
        f"; or allow downloads (data.download = true / download=True) to fetch "
        f"{CIFAR[ref.name].url} into {data_home()}"
        if ref.name in CIFAR
        else "; PACS has no automatic download"
    )
    raise DatasetNotFoundError(
        f"{ref} {split} not found. Searched, in order: {_places_text(roots)}. Put {what} in one "
        f"of these folders (or set ${DATA_ENV} to a folder holding it){how}"
    )


def _fit(ds: Dataset, prep: Preprocess) -> Dataset:
    """``ds`` with every image converted to ``prep.size`` (unchanged when already that size)."""
    if tuple(ds.x.shape[1:3]) == tuple(prep.size):
        return ds
    x = np.stack([convert_image(im, prep) for im in ds.x]) if len(ds) else ds.x
    return Dataset(x, ds.y, ds.classes, ds.name, ds.split, {**ds.info, "prep": str(prep)})


def _split_indices(y: np.ndarray, split: str, test_fraction: float, seed: int, where) -> np.ndarray:
    if split not in ("train", "test"):
        raise DataError(
            f"{where} has no split folders; only 'train' and 'test' exist, not {split!r}"
        )
    counts = np.bincount(y)
    small = [k for k, n in enumerate(counts) if 0 < n < 2]
    if small:
        raise DataError(
            f"{where}: class(es) {small} have one image; need at least 2 per class to split "
            f"into train and test"
        )
    test, train = stratified_split(y, fraction=test_fraction, seed=seed)
    idx = test if split == "test" else train
    require_images(
        len(idx), f"{where} {split} split (a {test_fraction:g} test share of each class)"
    )
    return idx


def _check_classes(ds_classes: list[str], where) -> None:
    if len(ds_classes) < 2:
        raise DataError(
            f"{where} has {len(ds_classes)} class(es) {ds_classes}; a classification dataset "
            f"needs at least 2 (one folder of images per class)"
        )


def _class_dirs(base: Path) -> list[Path]:
    """The class folders of ``base`` by the device's listing rule (hidden folders skipped, a
    linked folder refused)."""
    return [base / n for n in list_subfolders(base)]


def _imagefolder_base(ref: DatasetRef, cache: Path) -> Path:
    """The folder of an ``imagefolder:`` spec holding its classes or splits (an archive is
    extracted; a single top folder of it is entered)."""
    path = ref.path
    base = extracted(path, cache) if is_archive(path) else path
    subs = _class_dirs(base)
    while len(subs) == 1 and not any(f.is_file() for f in base.iterdir()) and _class_dirs(subs[0]):
        base, subs = subs[0], _class_dirs(subs[0])  # an archive's single top folder
    return base


def _has_splits(base: Path) -> bool:
    return any(d.name in _SPLIT_DIRS for d in _class_dirs(base))


def _flat_listing(ref: DatasetRef, base: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """``(classes, files, labels)`` of an ``imagefolder:`` without split folders (listing only)."""
    path = ref.path
    if not _class_dirs(base):
        raise DataError(
            f"{path} holds no images: expected {path}/<class>/*.jpg|png or "
            f"{path}/<split>/<class>/*.jpg|png"
        )
    classes, paths, y_all = list_classes(base)  # the device's rule (its DataError)
    _check_classes(classes, path)
    return classes, paths, y_all


def _load_imagefolder(ref, split, cache, seed, test_fraction, prep) -> Dataset:
    path = ref.path
    base = _imagefolder_base(ref, cache)
    if _has_splits(base):
        ds = read_image_folder(base, split, name="imagefolder", cache_dir=cache, prep=prep)
        _check_classes(ds.classes, base / split)
        return ds
    classes, paths, y_all = _flat_listing(ref, base)
    idx = _split_indices(y_all, split, test_fraction, seed, path)
    chosen = [paths[i] for i in idx]

    def build():
        return decode_images(chosen, prep), y_all[idx], classes

    extra = f"imagefolder-flat|{split}|{test_fraction}|{seed}|{prep}"
    key = source_key(path, extra=extra)
    x, y, classes, cache_file = cached_arrays(cache, f"imagefolder-{split}", key, build)
    info = {"source": str(path), "format": "imagefolder", "cache": str(cache_file)}
    info |= {"test_fraction": test_fraction, "seed": seed}
    return Dataset(x, y, classes, "imagefolder", split, info)


def _npz_split(path: Path, split: str, prep: Preprocess) -> ImageSet:
    """Split ``split`` of an ``.npz`` through the device's checked reader
    (:func:`entropi.device.data.load_images`: member headers checked before anything is
    allocated, labels and ``class_names`` validated, a split of zero images refused)."""
    imgs = load_images(path, split, prep)
    if imgs.labels is None:
        raise DataError(f"{path} has x_{split} but no y_{split} (its labels)")
    return imgs


def _npz_array(imgs: ImageSet) -> np.ndarray:
    """The images of ``imgs`` (converted chunk by chunk) as one uint8 NHWC array."""
    out = np.empty(imgs.images.shape, np.uint8)
    for start, chunk in imgs.images.chunks(4096):
        out[start : start + len(chunk)] = chunk
    return out


def _check_npz_split(path: Path, split: str) -> None:
    if split not in ("train", "test"):
        raise DataError(f"{path} has splits 'train' and 'test', not {split!r}")


def _npz_parts(ref: DatasetRef, prep: Preprocess) -> tuple[ImageSet, ImageSet | None, list[str]]:
    """The train split, the test split (None: the file has none) and the class names of an
    ``npz:`` spec: headers and labels read and checked, no image read yet."""
    path = ref.path
    if path.suffix != ".npz":
        raise DataError(f"npz:{path} must name a .npz file (x_train, y_train, ...)")
    if not has_split(path, "train"):
        raise DataError(f"{path} must hold x_train and y_train")
    train = _npz_split(path, "train", prep)
    test = _npz_split(path, "test", prep) if has_split(path, "test") else None
    names = train.class_names
    if names is None:
        top = max(int(t.labels.max()) for t in (train, test) if t is not None)
        names = [str(k) for k in range(top + 1)]
    _check_classes(names, path)
    return train, test, names


def _load_npz(ref, split, seed, test_fraction, prep) -> Dataset:
    path = ref.path
    _check_npz_split(path, split)
    train, test, names = _npz_parts(ref, prep)
    info = {"source": str(path), "format": "npz"}
    if test is not None:
        chosen = test if split == "test" else train
        return Dataset(_npz_array(chosen), chosen.labels, names, "npz", split, info)
    idx = _split_indices(train.labels, split, test_fraction, seed, path)
    return Dataset(_npz_array(train)[idx], train.labels[idx], names, "npz", split, info)


def _places_text(roots) -> str:
    """Every place :func:`search_places` looks in, resolved, for an error message."""
    lines = []
    for label, folder in search_places(roots):
        lines.append(f"{label} {folder.resolve() if folder is not None else '(not set)'}")
    return "; ".join(lines)


def _download(ref: DatasetRef, split: str, roots, cache: Path, progress: bool) -> Dataset:
    """Split ``split`` of a CIFAR found nowhere, downloaded into :func:`data_home`; a failed
    download names every place the data was looked for first."""
    try:
        return read_cifar(
            ref.name,
            split,
            data_home(),
            download=True,
            cache_dir=cache,
            progress=progress,
            labels="coarse" if ref.option == "coarse" else "fine",
        )
    except DownloadError as e:
        raise DownloadError(
            f"{e}. {ref} {split} was looked for first in: {_places_text(roots)}; put it in one "
            f"of these folders (or set ${DATA_ENV} to a folder holding it)"
        ) from e


def check_spec(
    spec_or_ref: str | DatasetRef,
    splits: Sequence[str],
    roots: Sequence[str | os.PathLike],
    *,
    download: bool,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    prep: Preprocess | None = None,
    progress: bool = True,
) -> None:
    """Check that :func:`load_spec` can load each of ``splits`` of a spec, cheaply: a named
    dataset is located (a CIFAR found nowhere is downloaded now when ``download``), an image
    folder is listed (classes matched by name across splits, every class with images), an
    ``.npz``'s headers and labels are read; no image is decoded. Raises what :func:`load_spec`
    would (a :class:`DataError`, :class:`DatasetNotFoundError`, ...): a run checks every spec
    this way before its first stage."""
    ref = spec_or_ref if isinstance(spec_or_ref, DatasetRef) else parse_spec(spec_or_ref)
    prep = prep if prep is not None else Preprocess()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if ref.name in ("imagefolder", "npz") and (ref.path is None or not ref.path.exists()):
        raise DatasetNotFoundError(f"{ref}: {ref.path} does not exist")
    if ref.name == "npz":
        for split in splits:
            _check_npz_split(ref.path, split)
        train, test, _ = _npz_parts(ref, prep)
        for split in splits if test is None else ():
            _split_indices(train.labels, split, test_fraction, seed, ref.path)
    elif ref.name == "imagefolder":
        base = _imagefolder_base(ref, cache)
        if _has_splits(base):
            for split in splits:
                _, _, _, classes = list_image_folder(base, split, cache)
                _check_classes(classes, base / split)
        else:
            _, _, y = _flat_listing(ref, base)
            for split in splits:
                _split_indices(y, split, test_fraction, seed, ref.path)
    else:
        for split in splits:
            if _locate(ref, split, roots, download) is None:
                _download(ref, split, roots, cache, progress)


def load_spec(
    spec_or_ref: str | DatasetRef,
    split: str,
    roots: Sequence[str | os.PathLike],
    *,
    download: bool,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    test_fraction: float = 0.2,
    prep: Preprocess | None = None,
) -> Dataset:
    """Load split ``split`` of a spec (string or :class:`DatasetRef`).

    Named datasets are searched for in :func:`search_places` ``(roots)``; with ``download`` a
    CIFAR found nowhere is fetched (MD5-checked, extracted atomically) into :func:`data_home`.
    ``imagefolder`` / ``npz`` without a test split are split by a seeded stratified
    ``test_fraction`` of each class (``seed``). Every image is converted to the encoder input
    ``prep`` (default 32x32 RGB resize) by the device's :mod:`~entropi.device.imageprep`.
    """
    ref = spec_or_ref if isinstance(spec_or_ref, DatasetRef) else parse_spec(spec_or_ref)
    prep = prep if prep is not None else Preprocess()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if ref.name in ("imagefolder", "npz"):
        if ref.path is None or not ref.path.exists():
            raise DatasetNotFoundError(f"{ref}: {ref.path} does not exist")
        if ref.name == "npz":
            ds = _load_npz(ref, split, seed, test_fraction, prep)
        else:
            ds = _load_imagefolder(ref, split, cache, seed, test_fraction, prep)
        return Dataset(ds.x, ds.y, ds.classes, ds.name, ds.split, {**ds.info, "spec": str(ref)})
    folder = _locate(ref, split, roots, download)
    if folder is None:  # CIFAR found nowhere, downloads allowed
        ds = _download(ref, split, roots, cache, progress)
    elif ref.option == "coarse":
        ds = read_cifar("cifar100", split, folder, cache_dir=cache, labels="coarse")
    else:
        ds = load_dataset(
            ref.name, split, folder, domains=ref.domains, cache_dir=cache, progress=progress
        )
    ds = _fit(select_classes(ds, ref.class_ids), prep)
    return Dataset(ds.x, ds.y, ds.classes, ds.name, ds.split, {**ds.info, "spec": str(ref)})
