"""Issue 22, data: classes matched by name across splits (D9), hidden / empty / nested class
folders (D18), npz splits of zero rows (D15) and huge uint64 labels; the device and the host
read image folders by one rule (entropi.device.data.list_split)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from entropi.common.errors import EntropiError
from entropi.device.data import load_images
from entropi.device.imageprep import Preprocess
from entropi.host.data import load_spec

P8 = Preprocess(size=(8, 8))


@pytest.fixture(autouse=True)
def _isolated_places(tmp_path, monkeypatch):
    monkeypatch.delenv("ENTROPI_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def _pngs(folder, classes, per_class):
    """``folder/<class>/NNN.png``: 8x8 images whose red value is 40 * class index + image index
    (the class a pixel came from is read back from the image itself)."""
    for c in classes:
        d = folder / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = np.zeros((8, 8, 3), np.uint8)
            a[..., 0] = 40 * (ord(c[0]) - ord("a")) + i
            Image.fromarray(a).save(d / f"{i:03d}.png")


def _host(root, split):
    return load_spec(f"imagefolder:{root}", split, [], download=False, prep=P8)


def _device(root, split):
    s = load_images(root, split, P8)
    x = np.concatenate([c.copy() for _, c in s.images.chunks(16)])
    return x, s.labels, s.class_names


def test_a_test_split_with_fewer_classes_gets_the_train_indices(tmp_path):
    """D9: train a,b,c and test a,c: the test images of c are label 2 (train's index of c), on
    the device and on the host, the same as with an empty test/b."""
    root = tmp_path / "d"
    _pngs(root / "train", "abc", 3)
    _pngs(root / "test", "ac", 2)
    x, y, names = _device(root, "test")
    assert names == ["a", "b", "c"]
    truth = x[:, 0, 0, 0] // 40  # the class each image was written for
    np.testing.assert_array_equal(y, truth)
    assert sorted(set(y.tolist())) == [0, 2]
    ds = _host(root, "test")
    assert ds.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.y, ds.x[:, 0, 0, 0] // 40)
    (root / "test" / "b").mkdir()  # the workaround of old: an empty test class changes nothing
    np.testing.assert_array_equal(_device(root, "test")[1], y)
    np.testing.assert_array_equal(_host(root, "test").y, ds.y)


def test_a_test_class_the_train_split_lacks_is_refused_naming_it(tmp_path):
    root = tmp_path / "d"
    _pngs(root / "train", "ab", 2)
    _pngs(root / "test", "abd", 1)
    for load in (_device, _host):
        with pytest.raises(EntropiError, match=r"test has class folder\(s\) d that the train"):
            load(root, "test")


def test_hidden_folders_are_skipped_everywhere(tmp_path):
    """D18: .git, .ipynb_checkpoints (any dot-folder) are not classes, splits or images."""
    root = tmp_path / "d"
    _pngs(root / "train", "ab", 2)
    _pngs(root / "test", "ab", 1)
    _pngs(root / "train" / ".ipynb_checkpoints", "a", 1)
    (root / "train" / ".git").mkdir()
    _pngs(root / ".git", "a", 1)
    for load in (_device, _host):
        out = load(root, "train")
        assert (out[2] if isinstance(out, tuple) else out.classes) == ["a", "b"]
    flat = tmp_path / "flat"
    _pngs(flat, "ab", 5)
    (flat / ".cache").mkdir()
    assert _device(flat, "train")[2] == ["a", "b"] and _host(flat, "train").classes == ["a", "b"]


def test_empty_and_nested_class_folders_are_errors_naming_them(tmp_path):
    """D18: a train class with no images is an error (an empty test class is a class with no
    test images); a class whose images sit only in sub-folders is an error in every split."""
    root = tmp_path / "d"
    _pngs(root / "train", "ab", 2)
    _pngs(root / "test", "ab", 1)
    (root / "train" / "c").mkdir()
    for load in (_device, _host):
        with pytest.raises(EntropiError, match=r"class folder .*train/c holds no images"):
            load(root, "train")
    _pngs(root / "train" / "c" / "nested", "a", 2)
    for load in (_device, _host):
        with pytest.raises(EntropiError, match=r"train/c holds no images itself.*nested"):
            load(root, "train")
    flat = tmp_path / "flat"
    _pngs(flat, "ab", 4)
    (flat / "c").mkdir()
    for load in (_device, _host):
        with pytest.raises(EntropiError, match=r"flat/c holds no images"):
            load(flat, "train")


@pytest.mark.parametrize("empty", ["train", "test"])
def test_an_npz_split_of_zero_rows_is_refused_at_load(tmp_path, empty):
    """D15: the host refused nothing and crashed in torch.cat; now it is the device's rule."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    y = np.arange(6) % 2
    arrays = {"x_train": x, "y_train": y, "x_test": x[:2], "y_test": y[:2]}
    arrays |= {f"x_{empty}": x[:0], f"y_{empty}": y[:0]}
    np.savez(tmp_path / "d.npz", **arrays)
    for split in ("train", "test"):
        with pytest.raises(EntropiError, match=rf"d\.npz:x_{empty} holds no images \(0 rows\)"):
            load_spec(f"npz:{tmp_path / 'd.npz'}", split, [], download=False, prep=P8)
    with pytest.raises(EntropiError, match=rf"x_{empty} holds no images"):
        load_images(tmp_path / "d.npz", empty, P8)


def test_a_uint64_label_over_2_63_is_too_large_not_negative(tmp_path):
    x = np.zeros((2, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 2**63], np.uint64))
    for load in (
        lambda: load_images(tmp_path / "d.npz", "train", P8),
        lambda: load_spec(f"npz:{tmp_path / 'd.npz'}", "train", [], download=False, prep=P8),
    ):
        with pytest.raises(EntropiError, match=r"holds label 9223372036854775808, too large"):
            load()


def test_hidden_files_are_skipped_and_an_empty_computed_split_is_refused(tmp_path):
    """The same classes: ``._x.png`` (a macOS resource fork, not an image) is hidden, not a
    corrupt image; a test share that leaves no training image is refused, not trained on."""
    flat = tmp_path / "flat"
    _pngs(flat, "ab", 2)
    (flat / "a" / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    x, y, _ = _device(flat, "train")
    assert len(x) == 4
    assert len(_host(flat, "test")) == 2
    with pytest.raises(
        EntropiError, match=r"flat train split \(a 0\.9 test share.*holds no images"
    ):
        load_spec(f"imagefolder:{flat}", "train", [], download=False, prep=P8, test_fraction=0.9)
