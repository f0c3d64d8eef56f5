"""Dataset specs (entropi.host.data.parse_spec / load_spec) and the search for named datasets."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from entropi.device.imageprep import Preprocess, convert_image
from entropi.host.data import (
    CIFAR,
    DataError,
    DatasetNotFoundError,
    DatasetRef,
    file_md5,
    load_spec,
    parse_spec,
    spec_test_split,
)


@pytest.fixture(autouse=True)
def _isolated_places(tmp_path, monkeypatch):
    monkeypatch.delenv("ENTROPI_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def write_pngs(folder: Path, classes, per_class: int, size=(32, 32), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (*size, 3) if mode == "RGB" else size
            a = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(a, mode).save(folder / c / f"{i:03d}.png")


def write_cifar100(root: Path, monkeypatch, n: int = 10, step: int = 7) -> None:
    """A tiny cifar-100-python/ whose image i has fine label ``i * step % 100`` and coarse label
    fine // 5 (MD5 table patched)."""
    spec = CIFAR["cifar100"]
    folder = root / spec.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for fname in ("train", "test"):
        fine = (np.arange(n) * step % 100).tolist()
        d = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
        }
        (folder / fname).write_bytes(pickle.dumps(d, protocol=2))
    meta = {
        b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
        b"coarse_label_names": [f"super{k}".encode() for k in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    for fname in spec.md5:
        monkeypatch.setitem(spec.md5, fname, file_md5(folder / fname))


def test_parse_every_good_form(tmp_path):
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "a.npz", x_train=np.zeros((2, 4, 4, 3), np.uint8), y_train=[0, 1])
    assert parse_spec("cifar10") == DatasetRef("cifar10")
    assert parse_spec("cifar100") == DatasetRef("cifar100")
    assert parse_spec("cifar100:coarse") == DatasetRef("cifar100", "coarse")
    assert parse_spec("pacs") == DatasetRef("pacs")
    ref = parse_spec("pacs:sketch,photo")
    assert ref.option == "photo,sketch" and ref.domains == ["photo", "sketch"]
    assert parse_spec(f"imagefolder:{tmp_path / 'd'}") == DatasetRef(
        "imagefolder", None, tmp_path / "d"
    )
    assert parse_spec(f"npz:{tmp_path / 'a.npz'}").path == tmp_path / "a.npz"
    assert str(parse_spec("cifar100:coarse")) == "cifar100:coarse"
    assert spec_test_split("pacs:photo") == "val" and spec_test_split("cifar10") == "test"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("mnist", r"unknown dataset 'mnist'.*cifar10, cifar100, cifar100:coarse"),
        ("", "non-empty"),
        ("imagefolder", "imagefolder needs a path"),
        ("npz:", "npz needs a path"),
        ("imagefolder:/no/such/folder", "does not exist"),
        ("cifar10:coarse", "cifar10 takes no option"),
        ("cifar100:medium", "cifar100 option must be 'coarse'"),
        ("pacs:photo,paintings", r"unknown PACS domain\(s\) \['paintings'\].*art_painting"),
        ("pacs:photo,photo", "twice"),
    ],
)
def test_parse_rejects_bad_forms(spec, match):
    with pytest.raises(DataError, match=match):
        parse_spec(spec)


def test_imagefolder_with_split_folders_and_other_sizes(tmp_path):
    write_pngs(tmp_path / "d" / "train", ["a", "b"], 3, size=(28, 28), mode="L")
    write_pngs(tmp_path / "d" / "test", ["a", "b"], 1, size=(40, 20))
    ds = load_spec(f"imagefolder:{tmp_path / 'd'}", "train", [], download=False)
    assert ds.x.shape == (6, 32, 32, 3) and ds.classes == ["a", "b"]
    first = Image.open(tmp_path / "d" / "train" / "a" / "000.png")
    np.testing.assert_array_equal(ds.x[0], convert_image(first, Preprocess()))
    assert len(load_spec(f"imagefolder:{tmp_path / 'd'}", "test", [], download=False)) == 2


def test_imagefolder_mixed_sizes_load_converted(tmp_path):
    write_pngs(tmp_path / "d", ["a"], 3, size=(32, 32))
    write_pngs(tmp_path / "d", ["b"], 3, size=(16, 48), seed=1)
    ds = load_spec(f"imagefolder:{tmp_path / 'd'}", "train", [], download=False)
    assert ds.x.shape[1:] == (32, 32, 3)


def test_imagefolder_without_splits_is_split_deterministically(tmp_path):
    write_pngs(tmp_path / "d", ["x", "y", "z"], 10)
    spec = f"imagefolder:{tmp_path / 'd'}"
    train = load_spec(spec, "train", [], download=False, seed=3)
    test = load_spec(spec, "test", [], download=False, seed=3)
    assert len(train) == 24 and len(test) == 6 and test.class_counts().tolist() == [2, 2, 2]
    again = load_spec(spec, "test", [], download=False, seed=3, cache_dir=tmp_path / "c2")
    np.testing.assert_array_equal(again.x, test.x)
    other = load_spec(spec, "test", [], download=False, seed=4, cache_dir=tmp_path / "c3")
    assert not np.array_equal(other.x, test.x)
    assert not any((train.x[:, None] == test.x[None]).all(axis=(2, 3, 4)).ravel())


def test_imagefolder_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_spec(f"imagefolder:{tmp_path / 'empty'}", "train", [], download=False)
    write_pngs(tmp_path / "one", ["only"], 4)
    with pytest.raises(DataError, match=r"1 class\(es\) \['only'\].*at least 2"):
        load_spec(f"imagefolder:{tmp_path / 'one'}", "train", [], download=False)
    write_pngs(tmp_path / "bad", ["a", "b"], 2)
    corrupt = tmp_path / "bad" / "b" / "001.png"
    corrupt.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=str(corrupt)):
        load_spec(f"imagefolder:{tmp_path / 'bad'}", "train", [], download=False)


def test_flat_imagefolder_refuses_links_and_non_files(tmp_path):
    from entropi.device.errors import DataError as DeviceDataError

    write_pngs(tmp_path / "outside", ["secret"], 2)
    write_pngs(tmp_path / "d", ["a", "b"], 3)
    (tmp_path / "d" / "c").symlink_to(tmp_path / "outside" / "secret")  # a linked class folder
    with pytest.raises(DeviceDataError, match=r"/d/c is a symbolic link"):
        load_spec(f"imagefolder:{tmp_path / 'd'}", "train", [], download=False)
    (tmp_path / "d" / "c").unlink()
    (tmp_path / "d" / "a" / "x.png").symlink_to("/etc/passwd")  # a linked image file
    with pytest.raises(DeviceDataError, match=r"x\.png is a symbolic link"):
        load_spec(f"imagefolder:{tmp_path / 'd'}", "train", [], download=False)
    (tmp_path / "d" / "a" / "x.png").unlink()
    (tmp_path / "d" / "a" / "y.png").mkdir()  # a folder named like an image
    with pytest.raises(DeviceDataError, match=r"y\.png has an image suffix but is not a regular"):
        load_spec(f"imagefolder:{tmp_path / 'd'}", "train", [], download=False)


def test_npz_spec_grey_and_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    y = np.arange(20) % 2
    np.savez(tmp_path / "g.npz", x_train=x, y_train=y, class_names=np.array(["odd", "even"]))
    train = load_spec(f"npz:{tmp_path / 'g.npz'}", "train", [], download=False)
    test = load_spec(f"npz:{tmp_path / 'g.npz'}", "test", [], download=False)
    assert train.x.shape == (16, 32, 32, 3) and len(test) == 4 and train.classes == ["odd", "even"]
    xt = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "t.npz", x_train=xt, y_train=[0, 1, 0, 1], x_test=xt[:2], y_test=[0, 1])
    ds = load_spec(f"npz:{tmp_path / 't.npz'}", "test", [], download=False)
    np.testing.assert_array_equal(ds.x, xt[:2])
    assert ds.classes == ["0", "1"]


def test_cifar100_coarse(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "root", monkeypatch)
    ds = load_spec("cifar100:coarse", "train", [tmp_path / "root"], download=False)
    fine = load_spec("cifar100", "train", [tmp_path / "root"], download=False)
    assert ds.classes == [f"super{k}" for k in range(20)] and len(fine.classes) == 100
    np.testing.assert_array_equal(ds.y, fine.y // 5)
    np.testing.assert_array_equal(ds.x, fine.x)


def test_search_order_env_beats_roots_beats_home(tmp_path, monkeypatch):
    env, root, home = tmp_path / "env", tmp_path / "root", tmp_path / "xdg" / "entropi"
    for folder, classes in ((env, ["e1", "e2"]), (root, ["r1", "r2"]), (home, ["h1", "h2"])):
        write_pngs(folder / "cifar10-jpeg" / "train", classes, 1)
    # class names are not CIFAR-10's, so the error names the folder that was picked
    monkeypatch.setenv("ENTROPI_DATA", str(env))
    with pytest.raises(DataError, match=str(env / "cifar10-jpeg")):
        load_spec("cifar10", "train", [root], download=False)
    monkeypatch.delenv("ENTROPI_DATA")
    with pytest.raises(DataError, match=str(root / "cifar10-jpeg")):
        load_spec("cifar10", "train", [root], download=False)
    with pytest.raises(DataError, match=str(home / "cifar10-jpeg")):
        load_spec("cifar10", "train", [tmp_path / "nothing"], download=False)


def test_missing_dataset_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPI_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_spec("cifar10", "train", [tmp_path / "r1", tmp_path / "r2"], download=False)
    msg = str(info.value)
    for place in ("env", "r1", "r2", "xdg/entropi"):
        assert str(tmp_path / place) in msg
    assert "cifar10-jpeg.tar.gz" in msg and "data.download = true" in msg and "\n" not in msg
    monkeypatch.delenv("ENTROPI_DATA")
    with pytest.raises(DatasetNotFoundError, match=r"\$ENTROPI_DATA \(not set\)"):
        load_spec("pacs:photo", "train", [], download=False)
