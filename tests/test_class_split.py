"""Class-split specs (``cifar100:classes=0-24``), low-data targets (``[data] target_fraction``)
and the two-view batches of the InfoNCE regularizer, on tiny data the tests write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_specs import write_cifar100 as write_cifar100_files

from entropi.host.data import (
    DataError,
    DatasetRef,
    iterate_batches,
    load_spec,
    parse_spec,
)
from entropi.host.run.config import ConfigError, config_from_dict
from entropi.host.run.rundata import load_target


@pytest.fixture(autouse=True)
def _isolated_places(tmp_path, monkeypatch):
    monkeypatch.delenv("ENTROPI_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def write_cifar100(root: Path, monkeypatch) -> None:
    """300 images per split; image i has fine label i % 100."""
    write_cifar100_files(root, monkeypatch, n=300, step=1)


def test_parse_class_splits_canonical():
    ref = parse_spec("cifar100:classes=0-24")
    assert ref == DatasetRef("cifar100", "classes=0-24") and ref.class_ids == list(range(25))
    assert parse_spec("cifar100:classes=25-99").class_ids == list(range(25, 100))
    # any order and spacing, single indices and ranges: one canonical form
    ref = parse_spec("cifar10:classes= 9, 0-2 ,5,3")
    assert str(ref) == "cifar10:classes=0-3,5,9" and ref.class_ids == [0, 1, 2, 3, 5, 9]
    assert parse_spec("cifar100").class_ids is None
    assert parse_spec("cifar100:coarse").class_ids is None


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("cifar100:classes=0-100", r"within 0-99 \(cifar100 has 100 classes\)"),
        ("cifar10:classes=0-10", r"within 0-9"),
        ("cifar100:classes=24-0", "from low to high"),
        ("cifar100:classes=a-b", "class indices and ranges like 0-24"),
        ("cifar100:classes=", "class indices and ranges"),
        ("cifar100:classes=-3", "class indices and ranges"),
        ("cifar100:classes=0-4,3", "listed twice"),
        ("cifar100:classes=7", "at least 2"),
        ("cifar100:fine24", r"'coarse' .* or 'classes=A-B,\.\.\.'"),
        ("cifar10:coarse", "cifar10 takes no option but classes="),
    ],
)
def test_parse_rejects_bad_class_splits(spec, match):
    with pytest.raises(DataError, match=match):
        parse_spec(spec)


def test_class_split_loads_remapped(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "root", monkeypatch)
    roots = [tmp_path / "root"]
    full = load_spec("cifar100", "train", roots, download=False)
    src = load_spec("cifar100:classes=0-24", "train", roots, download=False)
    tgt = load_spec("cifar100:classes=25-99", "test", roots, download=False)
    assert src.classes == [f"fine{k}" for k in range(25)]
    assert tgt.classes == [f"fine{k}" for k in range(25, 100)]
    assert src.info["class_ids"] == list(range(25)) and src.info["spec"] == "cifar100:classes=0-24"
    keep = full.y < 25
    np.testing.assert_array_equal(src.x, full.x[keep])
    np.testing.assert_array_equal(src.y, full.y[keep])  # classes 0-24 keep their labels
    full_test = load_spec("cifar100", "test", roots, download=False)
    keep = full_test.y >= 25
    np.testing.assert_array_equal(tgt.x, full_test.x[keep])
    np.testing.assert_array_equal(tgt.y, full_test.y[keep] - 25)  # relabelled 0..74
    assert set(tgt.y.tolist()) == set(range(75))
    # a split of scattered classes keeps the original order
    odd = load_spec("cifar100:classes=90,3,50-51", "train", roots, download=False)
    assert odd.classes == ["fine3", "fine50", "fine51", "fine90"]
    np.testing.assert_array_equal(np.bincount(odd.y), [3, 3, 3, 3])


def test_class_split_config_records_the_run_classes(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "root", monkeypatch)
    cfg = config_from_dict(
        {
            "data": {
                "roots": [str(tmp_path / "root")],
                "source": "cifar100:classes=0-24",
                "target": "cifar100:classes=25-99",
            },
            "pretrain": {"arch": "smallnet"},
        }
    )
    tgt = load_target(cfg)
    assert tgt.classes == [f"fine{k}" for k in range(25, 100)]
    assert tgt.y_train.max() == 74 and len(tgt.y_train) == 225
    with pytest.raises(ConfigError, match="data.source: class range '0-200'"):
        config_from_dict({"data": {"source": "cifar100:classes=0-200"}})


def _npz_target(tmp_path: Path, per_class=(100, 100, 60)) -> str:
    rng = np.random.default_rng(1)
    y = np.concatenate([np.full(n, k) for k, n in enumerate(per_class)])
    x = rng.integers(0, 256, size=(len(y), 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(len(y)) % 256  # so rows can be told apart
    x[:, 0, 0, 1] = np.arange(len(y)) // 256
    path = tmp_path / "t.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
    return f"npz:{path}"


def _target(spec: str, seed: int = 0, **data):
    cfg = config_from_dict(
        {"seed": seed, "data": {"target": spec, **data}, "pretrain": {"arch": "smallnet"}}
    )
    tgt = load_target(cfg)
    rows = tgt.x_train[:, 0, 0, 0].astype(int) + 256 * tgt.x_train[:, 0, 0, 1].astype(int)
    return tgt, set(rows.tolist())


def test_target_fraction_is_stratified_seeded_and_nested(tmp_path):
    spec = _npz_target(tmp_path)
    full, rows_all = _target(spec)
    assert len(full.y_train) == 260
    tenth, rows10 = _target(spec, target_fraction=0.1)
    np.testing.assert_array_equal(np.bincount(tenth.y_train), [10, 10, 6])  # round(0.1 * count)
    one, rows1 = _target(spec, target_fraction=0.01)
    np.testing.assert_array_equal(np.bincount(one.y_train), [1, 1, 1])  # at least 1 per class
    assert rows1 <= rows10 <= rows_all  # the 1% draw is part of the 10% draw (same seed)
    again, rows10_again = _target(spec, target_fraction=0.1)
    assert rows10_again == rows10  # same seed, same images
    np.testing.assert_array_equal(again.x_train, tenth.x_train)
    _, rows10_seed1 = _target(spec, seed=1, target_fraction=0.1)
    assert rows10_seed1 != rows10
    # the test split is never cut by the fraction
    np.testing.assert_array_equal(tenth.y_test, full.y_test)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"target_fraction": 0.0}, r"data\.target_fraction must be in \(0\.0, 1\.0\]"),
        ({"target_fraction": 1.5}, r"data\.target_fraction must be in"),
        ({"target_fraction": 0.1, "target_train_per_class": 50}, "not both"),
        ({"target_fraction": "1%"}, "data.target_fraction must be a finite number"),
    ],
)
def test_target_fraction_bad_values(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"data": data})


def test_two_views_are_two_augmentations_of_the_same_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10, 8, 8, 3), dtype=torch.uint8, generator=g)
    y = torch.arange(10)
    kw = dict(shuffle=True, augment=True, mean=(0.5,) * 3, std=(0.25,) * 3, padding=2)
    batches = list(
        iterate_batches(x, y, 4, generator=torch.Generator().manual_seed(1), views=2, **kw)
    )
    assert [tuple(b.shape) for b, _ in batches] == [(8, 3, 8, 8), (8, 3, 8, 8), (4, 3, 8, 8)]
    for xb, yb in batches:
        b = len(yb) // 2
        assert torch.equal(yb[:b], yb[b:])  # the same images in both halves
        assert not torch.equal(xb[:b], xb[b:])  # independently augmented
    # without crops (padding 0) each view of image i is image i or its mirror image
    flips = dict(kw, padding=0)
    for xb, yb in iterate_batches(
        x, y, 4, generator=torch.Generator().manual_seed(2), views=2, **flips
    ):
        plain = (x[yb].permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        same = torch.isclose(xb, plain, atol=1e-5).flatten(1).all(1)
        mirrored = torch.isclose(xb, plain.flip(3), atol=1e-5).flatten(1).all(1)
        assert (same | mirrored).all()
    # one view reproduces the plain augmented batches of the same generator state
    one = list(iterate_batches(x, y, 4, generator=torch.Generator().manual_seed(1), **kw))
    two = list(iterate_batches(x, y, 4, generator=torch.Generator().manual_seed(1), views=1, **kw))
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two, strict=True)
    )
    with pytest.raises(DataError, match="views = 2 needs augment=True"):
        next(iterate_batches(x, y, 4, shuffle=False, augment=False, views=2))
    with pytest.raises(DataError, match="views must be an integer >= 1"):
        next(iterate_batches(x, y, 4, shuffle=False, augment=True, views=0))
