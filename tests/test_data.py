"""Readers, cache, safe extraction, stratified subsets and on-device batches (entropi.host.data).

Every test writes its own tiny files in the official layouts; nothing reads the shared datasets.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from entropi.common.errors import EntropiError
from entropi.host.data import (
    CIFAR,
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    ChecksumError,
    DataError,
    Dataset,
    DatasetNotFoundError,
    DatasetSpec,
    DownloadError,
    TensorLoader,
    UnsafeArchiveError,
    augment_crop_flip,
    dataset_names,
    extract_tar,
    file_md5,
    iterate_batches,
    load_dataset,
    normalize,
    stratified_split,
    stratified_subset,
    test_split,
    to_device,
)
from entropi.host.data import cifar as cifar_reader
from entropi.host.data import images as image_reader

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers


def cifar_row(img: np.ndarray) -> list[int]:
    """Official row of one 32x32x3 image, built pixel by pixel (independent of any reshape)."""
    return [int(img[i, j, c]) for c in range(3) for i in range(32) for j in range(32)]


def write_cifar(root: Path, name: str, monkeypatch, n: int = 4, seed: int = 0) -> dict:
    """Write every official file of ``name`` with ``n`` images each (python-2-style pickles).

    Patches the published-MD5 table to the written files' MD5s; returns {split: (x, y)}.
    """
    spec = CIFAR[name]
    folder = root / spec.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n_classes = 10 if name == "cifar10" else 100
    label_key = spec.label_key
    expected: dict[str, list] = {s: [] for s in spec.splits}
    for split, files in spec.splits.items():
        for fname in files:
            x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            y = rng.integers(0, n_classes, size=n).tolist()
            d = {
                b"batch_label": f"batch {fname}".encode(),
                label_key: y,
                b"data": np.array([cifar_row(im) for im in x], dtype=np.uint8),
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            }
            if name == "cifar100":
                d[b"coarse_labels"] = [v // 5 for v in y]
            (folder / fname).write_bytes(pickle.dumps(d, protocol=2))
            expected[split].append((x, np.array(y)))
    names = [f"class_{k:03d}".encode() for k in range(n_classes)]
    meta = {spec.names_key: names, b"num_cases_per_batch": n, b"num_vis": 3072}
    (folder / spec.meta).write_bytes(pickle.dumps(meta, protocol=2))
    for fname in spec.md5:
        monkeypatch.setitem(spec.md5, fname, file_md5(folder / fname))
    return {
        s: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v]))
        for s, v in expected.items()
    }


def write_png_folder(root: Path, classes, per_class: int, seed: int = 0, size=(32, 32)) -> dict:
    """``root/<class>/NNNN.png`` with random pixels; returns {class: [arrays in file order]}."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        out[c] = []
        for i in range(per_class):
            a = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"{i:04d}.png")
            out[c].append(a)
    return out


def make_tar(path: Path, src: Path, arcname: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return path


# ----------------------------------------------------------------------------- CIFAR python


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reader_round_trips_pixels_and_labels(tmp_path, monkeypatch, name):
    expected = write_cifar(tmp_path / "data", name, monkeypatch)
    for split in ("train", "test"):
        ds = load_dataset(name, split, tmp_path / "data", cache_dir=tmp_path / "cache")
        x, y = expected[split]
        assert ds.x.dtype == np.uint8 and ds.x.shape == x.shape and ds.x.flags.c_contiguous
        np.testing.assert_array_equal(ds.x, x)
        np.testing.assert_array_equal(ds.y, y)
        assert ds.y.dtype == np.int64
        assert ds.classes[:2] == ["class_000", "class_001"]
        assert (ds.name, ds.split) == (name, split)
    assert len(load_dataset(name, "train", tmp_path / "data", cache_dir=tmp_path / "c")) == (
        20 if name == "cifar10" else 4
    )


def test_cifar_channel_major_layout_by_hand(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar100", monkeypatch, n=1)
    folder = tmp_path / "cifar-100-python"
    # A hand-made row: red plane all 10, green plane = row index, blue plane = column index.
    row = [10] * 1024 + [i for i in range(32) for _ in range(32)] + list(range(32)) * 32
    d = {b"data": np.array([row], dtype=np.uint8), b"fine_labels": [7], b"coarse_labels": [1]}
    (folder / "train").write_bytes(pickle.dumps(d, protocol=2))
    monkeypatch.setitem(CIFAR["cifar100"].md5, "train", file_md5(folder / "train"))
    ds = load_dataset("cifar100", "train", tmp_path, cache_dir=tmp_path / "cache")
    img = ds.x[0]
    assert (img[:, :, 0] == 10).all()
    assert img[5, 20, 1] == 5 and img[31, 0, 1] == 31  # green = row
    assert img[5, 20, 2] == 20 and img[0, 31, 2] == 31  # blue = column
    assert ds.y.tolist() == [7]


def test_cifar_root_may_be_the_official_folder_itself(tmp_path, monkeypatch):
    expected = write_cifar(tmp_path, "cifar10", monkeypatch, n=2)
    ds = load_dataset("cifar10", "test", tmp_path / "cifar-10-batches-py", cache_dir=tmp_path)
    np.testing.assert_array_equal(ds.x, expected["test"][0])


def test_cifar_md5_mismatch_raises_naming_file_and_digests(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10", monkeypatch, n=2)
    good = CIFAR["cifar10"].md5["data_batch_3"]
    monkeypatch.setitem(CIFAR["cifar10"].md5, "data_batch_3", "0" * 32)
    with pytest.raises(ChecksumError, match=r"data_batch_3: expected 0{32}, got [0-9a-f]{32}"):
        load_dataset("cifar10", "train", tmp_path, cache_dir=tmp_path / "cache")
    monkeypatch.setitem(CIFAR["cifar10"].md5, "data_batch_3", good)
    load_dataset("cifar10", "train", tmp_path, cache_dir=tmp_path / "cache")  # now fine


def test_cifar_corrupted_after_caching_is_detected(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar100", monkeypatch, n=2)
    load_dataset("cifar100", "test", tmp_path, cache_dir=tmp_path / "cache")
    path = tmp_path / "cifar-100-python" / "test"
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF  # same size, different content (and a new mtime)
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(1, 1))
    with pytest.raises(ChecksumError, match=r"cifar-100-python/test.*fetch the official"):
        load_dataset("cifar100", "test", tmp_path, cache_dir=tmp_path / "cache")


def test_cifar_second_load_reads_the_cache_only(tmp_path, monkeypatch):
    expected = write_cifar(tmp_path, "cifar10", monkeypatch, n=3)
    first = load_dataset("cifar10", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert Path(first.info["cache"]).is_file()

    def boom(*a, **k):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(cifar_reader, "_decode_batch", boom)
    monkeypatch.setattr(cifar_reader, "verify_md5", boom)
    second = load_dataset("cifar10", "train", tmp_path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(second.x, expected["train"][0])
    assert second.info["cache"] == first.info["cache"]


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar100", monkeypatch, n=1)
    path = tmp_path / "cifar-100-python" / "test"
    path.write_bytes(pickle.dumps({b"data": Path("x"), b"fine_labels": [0]}, protocol=2))
    monkeypatch.setitem(CIFAR["cifar100"].md5, "test", file_md5(path))
    with pytest.raises(pickle.UnpicklingError, match="pathlib"):
        load_dataset("cifar100", "test", tmp_path, cache_dir=tmp_path / "cache")


def test_missing_cifar_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-100-python.*download=True"):
        load_dataset("cifar100", "train", tmp_path, cache_dir=tmp_path)
    with pytest.raises(
        DatasetNotFoundError,
        match=r"cifar-10-batches-py.*cifar10-jpeg/.*cifar10-jpeg\.tar\.gz.*download=True",
    ):
        load_dataset("cifar10", "test", tmp_path, cache_dir=tmp_path)


def test_bad_names_and_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*cifar10.*cifar100.*pacs"):
        load_dataset("mnist", "train", tmp_path)
    with pytest.raises(ValueError, match=r"no split 'validation'.*train.*test"):
        load_dataset("cifar10", "validation", tmp_path)
    with pytest.raises(ValueError, match="only applies to 'pacs'"):
        load_dataset("cifar100", "train", tmp_path, domains=["photo"])


def test_dataset_validates_and_subsets():
    x = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"uint8 array of shape \[N, H, W, 3\]"):
        Dataset(x.astype(np.float32), np.zeros(3, np.int64), ["a"], "t", "train")
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\)"):
        Dataset(x, np.array([0, 1, 0]), ["a"], "t", "train")
    ds = Dataset(x, np.array([0, 1, 1]), ["a", "b"], "t", "train")
    assert ds.class_counts().tolist() == [1, 2]
    assert len(ds.subset([2, 0])) == 2 and ds.subset([2, 0]).y.tolist() == [1, 0]


# ----------------------------------------------------------------------------- image folders


def test_image_folder_png_exact_and_sorted_classes(tmp_path):
    imgs = write_png_folder(tmp_path / "ds" / "train", ["zebra", "ant", "mole"], per_class=3)
    write_png_folder(tmp_path / "ds" / "test", ["zebra", "ant", "mole"], per_class=1, seed=1)
    ds = load_dataset("imagefolder", "train", tmp_path / "ds", cache_dir=tmp_path / "cache")
    assert ds.classes == ["ant", "mole", "zebra"]
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(ds.x, np.stack(imgs["ant"] + imgs["mole"] + imgs["zebra"]))
    assert len(load_dataset("imagefolder", "test", tmp_path / "ds", cache_dir=tmp_path)) == 3


def test_image_folder_jpeg_and_mixed_modes(tmp_path):
    root = tmp_path / "ds" / "train"
    (root / "a").mkdir(parents=True)
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    Image.fromarray(smooth).save(root / "a" / "0.jpg", quality=95)
    Image.fromarray(smooth[:, :, 0], mode="L").save(root / "a" / "1.PNG")  # grey -> RGB
    (root / "a" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", "train", tmp_path / "ds", cache_dir=tmp_path / "c")
    assert ds.x.shape == (2, 32, 32, 3)
    # JPEG is lossy: mean abs error of a smooth ramp at quality 95 stays below 2 grey levels.
    assert np.abs(ds.x[0].astype(int) - smooth).mean() < 2
    np.testing.assert_array_equal(ds.x[1], smooth)


def test_image_folder_rejects_mixed_sizes_and_missing_split(tmp_path):
    write_png_folder(tmp_path / "ds" / "train", ["a"], 1)
    write_png_folder(tmp_path / "ds" / "train", ["b"], 1, size=(16, 16))
    with pytest.raises(ValueError, match=r"is 16x16 but the first image .* is 32x32"):
        load_dataset("imagefolder", "train", tmp_path / "ds", cache_dir=tmp_path / "c")
    with pytest.raises(DatasetNotFoundError, match=r"no split folder 'test'.*found folders"):
        load_dataset("imagefolder", "test", tmp_path / "ds", cache_dir=tmp_path / "c")


def test_cifar10_from_jpeg_style_tar_is_cached(tmp_path, monkeypatch):
    src = tmp_path / "src" / "cifar10-jpeg"
    imgs = write_png_folder(src / "train", CIFAR10_CLASSES, per_class=2)
    write_png_folder(src / "test", CIFAR10_CLASSES, per_class=1, seed=3)
    data = tmp_path / "data"
    data.mkdir()
    make_tar(data / "cifar10-jpeg.tar.gz", src, "cifar10-jpeg")
    cache = tmp_path / "cache"
    ds = load_dataset("cifar10", "train", data, cache_dir=cache)
    assert ds.classes == list(CIFAR10_CLASSES) and ds.x.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(ds.x[2], imgs["automobile"][0])
    assert np.bincount(ds.y).tolist() == [2] * 10
    assert len(list((cache / "extracted").iterdir())) == 1  # extracted once, under the cache

    def boom(*a, **k):
        raise AssertionError("decoded or extracted again despite a valid cache")

    monkeypatch.setattr(image_reader, "decode_images", boom)
    monkeypatch.setattr(image_reader, "extract_tar", boom)
    again = load_dataset("cifar10", "train", data, cache_dir=cache)
    np.testing.assert_array_equal(again.x, ds.x)
    monkeypatch.undo()
    # the extracted folder is reused for the other split (no second extraction)
    monkeypatch.setattr(image_reader, "extract_tar", boom)
    assert len(load_dataset("cifar10", "test", data, cache_dir=cache)) == 10


def test_cifar10_prefers_official_files_over_jpeg(tmp_path, monkeypatch):
    expected = write_cifar(tmp_path, "cifar10", monkeypatch, n=2)
    write_png_folder(tmp_path / "cifar10-jpeg" / "test", CIFAR10_CLASSES, per_class=1)
    ds = load_dataset("cifar10", "test", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.info["format"] == "cifar-python"
    np.testing.assert_array_equal(ds.x, expected["test"][0])


def test_cifar10_image_folder_with_wrong_classes(tmp_path):
    write_png_folder(tmp_path / "cifar10-jpeg" / "train", ["cat", "dog"], per_class=1)
    with pytest.raises(ValueError, match=r"class folders \['cat', 'dog'\].*needs exactly"):
        load_dataset("cifar10", "train", tmp_path, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- PACS


def write_pacs(root: Path) -> dict:
    """pacs32/<domain>/<class>/<name>.png + index.csv; returns {(domain, split): [(img, cls)]}."""
    rng = np.random.default_rng(5)
    rows, expected = [], {}
    for domain in ("photo", "sketch"):
        for cls in ("horse", "dog"):
            (root / domain / cls).mkdir(parents=True)
            for i in range(3):
                split = "val" if i == 2 else "train"
                a = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                rel = f"{domain}/{cls}/pic_{i:03d}.png"
                Image.fromarray(a).save(root / rel)
                rows.append([rel, cls, domain, split])
                expected.setdefault((domain, split), []).append((a, cls))
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "domain", "split"])
        w.writerows(rows)
    return expected


@pytest.mark.parametrize("as_tar", [False, True])
def test_pacs_domains_and_splits(tmp_path, as_tar):
    expected = write_pacs(tmp_path / "src" / "pacs32")
    root = tmp_path / "src"
    if as_tar:
        root = tmp_path / "data"
        root.mkdir()
        make_tar(root / "pacs32.tar.gz", tmp_path / "src" / "pacs32", "pacs32")
    cache = tmp_path / "cache"
    ds = load_dataset("pacs", "train", root, domains=["photo"], cache_dir=cache)
    assert ds.classes == ["dog", "horse"]  # sorted over the whole index
    want = expected[("photo", "train")]
    np.testing.assert_array_equal(ds.x, np.stack([a for a, _ in want]))
    assert [ds.classes[k] for k in ds.y] == [c for _, c in want]
    assert ds.info["domains"] == ["photo"]
    test = load_dataset("pacs", "test", root, domains=["sketch", "photo"], cache_dir=cache)
    assert len(test) == 4 and test.info["index_splits"] == ["val"]  # PACS test = official val
    assert len(load_dataset("pacs", "all", root, cache_dir=cache)) == 12
    with pytest.raises(ValueError, match=r"unknown PACS domain.*\['cartoonish'\].*'photo'"):
        load_dataset("pacs", "train", root, domains=["cartoonish"], cache_dir=cache)


def test_pacs_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"pacs32/index.csv.*pacs32.tar.gz"):
        load_dataset("pacs", "train", tmp_path, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- tar safety


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("evil", ["../evil", "ok/../../evil", "/tmp/evil_abs"])
def test_extract_rejects_escaping_paths_and_writes_nothing(tmp_path, evil):
    archive = _tar_with(tmp_path / "a.tar.gz", [_file("good/one.txt"), _file(evil)])
    dest = tmp_path / "out" / "dest"
    with pytest.raises(UnsafeArchiveError, match=r"would be written outside"):
        extract_tar(archive, dest)
    assert not dest.exists() and not (tmp_path / "evil").exists()
    assert list((tmp_path / "out").iterdir()) == []  # temp folder removed too


def test_extract_rejects_links(tmp_path):
    link = tarfile.TarInfo("data/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _tar_with(tmp_path / "a.tar.gz", [_file("data/a.txt"), (link, None)])
    with pytest.raises(UnsafeArchiveError, match=r"'data/link' is a link"):
        extract_tar(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_extract_ok_and_merge(tmp_path):
    archive = _tar_with(tmp_path / "a.tar.gz", [_file("d/a.txt", b"new"), _file("d/b.txt")])
    dest = extract_tar(archive, tmp_path / "x")
    assert (dest / "d" / "a.txt").read_bytes() == b"new"
    with pytest.raises(FileExistsError, match="already exists"):
        extract_tar(archive, dest)
    (dest / "d" / "a.txt").write_bytes(b"old")
    (dest / "keep.txt").write_text("kept")
    extract_tar(archive, dest, merge=True)
    assert (dest / "d" / "a.txt").read_bytes() == b"new" and (dest / "keep.txt").is_file()


def test_decompression_bomb_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from entropi.host.data import archive as archive_mod

    monkeypatch.setattr(archive_mod, "EXPANSION_FLOOR_BYTES", 64 << 10)  # scaled down 4096x
    bomb = _tar_with(tmp_path / "bomb.tar.gz", [_file("d/zeros.bin", bytes(2 << 20))])
    assert bomb.stat().st_size < 20_000  # 2 MB of zeros packs to a few KB
    with pytest.raises(UnsafeArchiveError, match=r"hold 2097152 bytes, \d+x the archive"):
        extract_tar(bomb, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz"]  # nothing left behind
    ok = _tar_with(tmp_path / "ok.tar.gz", [_file("d/a.bin", bytes(32 << 10))])  # under the floor
    assert (extract_tar(ok, tmp_path / "ok") / "d" / "a.bin").stat().st_size == 32 << 10


def test_corrupt_archive_is_a_clear_error(tmp_path):
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(ValueError, match=r"cannot read archive .*bad\.tar\.gz.*download it"):
        extract_tar(tmp_path / "bad.tar.gz", tmp_path / "out")


# ----------------------------------------------------------------------------- subsets


def test_stratified_subset_exact_counts_per_class():
    y = np.repeat(np.arange(4), [10, 3, 7, 1])
    idx = stratified_subset(y, per_class=5, seed=1)
    assert np.bincount(y[idx], minlength=4).tolist() == [5, 3, 5, 1]  # min(5, available)
    assert (np.diff(idx) > 0).all()  # sorted, unique
    idx = stratified_subset(y, fraction=0.25, seed=1)
    # round(2.5)=2 (banker's), round(0.75)=1, round(1.75)=2, round(0.25)=0 -> at least 1
    assert np.bincount(y[idx], minlength=4).tolist() == [2, 1, 2, 1]
    assert np.bincount(y[stratified_subset(y, fraction=1.0)]).tolist() == [10, 3, 7, 1]


def test_stratified_subset_is_seeded():
    y = np.random.default_rng(0).integers(0, 10, 1000)
    a = stratified_subset(y, per_class=20, seed=3)
    np.testing.assert_array_equal(a, stratified_subset(y, per_class=20, seed=3))
    assert not np.array_equal(a, stratified_subset(y, per_class=20, seed=4))


def test_stratified_split_is_disjoint_and_complete():
    y = np.random.default_rng(1).integers(0, 7, 500)
    take, rest = stratified_split(y, fraction=0.2, seed=0)
    assert np.intersect1d(take, rest).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([take, rest])), np.arange(500))
    np.testing.assert_array_equal(take, stratified_subset(y, fraction=0.2, seed=0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of per_class or fraction"),
        ({"per_class": 2, "fraction": 0.5}, "exactly one of"),
        ({"per_class": 0}, r"per_class must be an integer >= 1, got 0"),
        ({"per_class": 2.5}, r"per_class must be an integer >= 1, got 2.5"),
        ({"fraction": 0.0}, r"fraction must be a number in \(0, 1\], got 0.0"),
        ({"fraction": 1.5}, r"fraction must be a number in \(0, 1\], got 1.5"),
    ],
)
def test_stratified_subset_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stratified_subset(np.array([0, 1, 1]), **kwargs)


# ----------------------------------------------------------------------------- batches


def _images(n=6, h=32, w=32, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), np.uint8))


def test_normalize_matches_hand_computation():
    x = _images(3)
    out = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    ref = (x.numpy().astype(np.float64) / 255 - CIFAR10_MEAN) / CIFAR10_STD
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    # float32 rounding of values |v| < 3: 1e-6 absolute is a few ulps
    np.testing.assert_allclose(out.numpy(), ref.transpose(0, 3, 1, 2), rtol=0, atol=1e-6)
    cl = normalize(x, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="3 values"):
        normalize(x, (0.5,), (0.5,))


def test_iterate_batches_without_augmentation_is_exact_and_complete():
    x = _images(10)
    y = torch.arange(10)
    g = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(x, y, 4, shuffle=True, augment=False, generator=g))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    for xb, yb in batches:
        torch.testing.assert_close(xb, normalize(x[yb]), rtol=0, atol=0)
    plain = list(iterate_batches(x, y, 4, shuffle=False, augment=False, drop_last=True))
    assert [b[1].tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
def test_augmented_images_are_flipped_crops_of_the_padded_source(pad_mode):
    x = _images(40, h=12, w=10)  # non-square to catch swapped axes
    g = torch.Generator().manual_seed(1)
    out = augment_crop_flip(x, g, padding=3, pad_mode=pad_mode)
    assert out.shape == x.shape and out.dtype == torch.uint8
    # reference: torch's own padding of the float NCHW image, then every crop and flip
    nchw = x.permute(0, 3, 1, 2).double()
    padded = (
        F.pad(nchw, (3, 3, 3, 3), mode="reflect")
        if pad_mode == "reflect"
        else F.pad(nchw, (3, 3, 3, 3), mode="constant", value=0.0)
    )
    offsets, flips = set(), 0
    for k in range(len(x)):
        o = out[k].permute(2, 0, 1).double()
        hits = [
            (dy, dx, flip)
            for dy in range(7)
            for dx in range(7)
            for flip in (False, True)
            if torch.equal(
                o,
                padded[k, :, dy : dy + 12, dx : dx + 10].flip(-1)
                if flip
                else padded[k, :, dy : dy + 12, dx : dx + 10],
            )
        ]
        assert len(hits) == 1, f"sample {k}: {hits}"
        offsets.add(hits[0][:2])
        flips += hits[0][2]
    assert len(offsets) > 15 and 5 < flips < 35  # random per sample, not one shared offset


def test_augmentation_is_deterministic_given_the_generator():
    x, y = _images(16), torch.arange(16)

    def epoch(seed):
        loader = TensorLoader(x, y, 5, shuffle=True, augment=True, seed=seed)
        assert len(loader) == 4
        return [b for _ in range(2) for b in loader]  # two epochs

    a, b, c = epoch(7), epoch(7), epoch(8)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))
    assert not torch.equal(a[0][0], a[4][0])  # epoch 2 differs from epoch 1


def test_augmentation_rejects_bad_padding():
    with pytest.raises(ValueError, match=r"padding must be an integer in \[0, 31\]"):
        augment_crop_flip(_images(1), padding=32)
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        augment_crop_flip(_images(1), pad_mode="edge")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        next(iterate_batches(_images(2), torch.zeros(2), 0, shuffle=False, augment=False))


def test_to_device_keeps_uint8_nhwc():
    ds = Dataset(_images(3).numpy(), np.array([0, 1, 0]), ["a", "b"], "t", "train")
    x, y = to_device(ds, "cpu")
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32, 3) and y.dtype == torch.int64
    xb, yb = next(iter(TensorLoader(x, y, 3, shuffle=False, channels_last=True)))
    assert xb.is_contiguous(memory_format=torch.channels_last) and yb.tolist() == [0, 1, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_on_cuda_match_cpu_semantics():
    x_cpu = _images(64)
    x, y = x_cpu.cuda(), torch.arange(64, device="cuda")

    def run(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        return list(iterate_batches(x, y, 16, shuffle=True, augment=True, generator=g))

    a, b = run(0), run(0)
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True)
    )
    assert a[0][0].device.type == "cuda" and a[0][0].shape == (16, 3, 32, 32)
    plain = next(iterate_batches(x, y, 8, shuffle=False, augment=False))[0]
    torch.testing.assert_close(plain.cpu(), normalize(x_cpu[:8]), rtol=0, atol=1e-6)


def test_errors_are_entropi_errors(tmp_path):
    """Every data error is in the package's error family, so the CLIs print one line."""
    for cls in (ChecksumError, DataError, DatasetNotFoundError, DownloadError, UnsafeArchiveError):
        assert issubclass(cls, EntropiError), cls
    assert issubclass(DataError, ValueError) and issubclass(DownloadError, OSError)
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match="Searched"):
        load_dataset("cifar10", "train", tmp_path)
    with pytest.raises(DataError, match="known datasets"):
        load_dataset("imagenet", "train", tmp_path)


def test_registry_names_and_test_splits():
    assert dataset_names() == ("cifar10", "cifar100", "imagefolder", "pacs")
    assert dataset_names() == tuple(sorted(DATASETS))
    assert {n: test_split(n) for n in dataset_names()} == {
        "cifar10": "test",
        "cifar100": "test",
        "imagefolder": "test",
        "pacs": "val",
    }
    for name, spec in DATASETS.items():
        assert isinstance(spec, DatasetSpec) and spec.name == name and spec.description
        assert not spec.splits or spec.test_split in spec.splits
    assert sorted(n for n, s in DATASETS.items() if s.downloadable) == sorted(CIFAR)
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        test_split("mnist")
