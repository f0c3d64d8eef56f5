"""Issue 23 #3, #4, #7 and issue 22's early spec check: every data spec is checked (listed, not
loaded) before the first stage; per-class caps belong to the spec they were set with; relative
data paths in a config file are relative to the file; a dataset not found names every place."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import entropi.host
from entropi.common.errors import EntropiError
from entropi.host import cli
from entropi.host.data import DownloadError, check_spec, load_spec
from entropi.host.run import pipeline, rundata
from entropi.host.run.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_toml,
    load_config,
)


@pytest.fixture(autouse=True)
def _isolated_places(tmp_path, monkeypatch):
    monkeypatch.delenv("ENTROPI_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def _pngs(folder: Path, classes, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(a).save(folder / c / f"{i:03d}.png")
    return folder


def _config(source: str, target: str, **data):
    return config_from_dict(
        {
            "name": "early",
            "device": "cpu",
            "data": {"source": source, "target": target, **data},
            "pretrain": {"arch": "smallnet", "epochs": 1, "batch_size": 8, "input_size": 8},
        }
    )


@pytest.fixture
def folders(tmp_path):
    """A good source (split layout) and a target whose test split has a class train lacks."""
    src = tmp_path / "src"
    _pngs(src / "train", "ab", 4)
    _pngs(src / "test", "ab", 2)
    bad = tmp_path / "bad"
    _pngs(bad / "train", "ab", 4)
    _pngs(bad / "test", "abz", 2)
    return src, bad


@pytest.mark.parametrize(
    "which, spec, match",
    [
        ("target", "imagefolder:/no/such/path", r"/no/such/path does not exist"),
        ("source", "npz:/no/such/file.npz", r"/no/such/file\.npz does not exist"),
        ("target", "BAD", r"test has class folder\(s\) z that the train split lacks"),
    ],
)
def test_a_bad_spec_fails_before_the_run_folder_is_made(tmp_path, folders, which, spec, match):
    """#4: run_all checks every spec (both splits, classes matched by name) before the first
    stage, here before the run folder exists; no pretraining is spent on it."""
    src, bad = folders
    spec = spec.replace("BAD", f"imagefolder:{bad}")
    specs = {"source": f"imagefolder:{src}", "target": f"imagefolder:{src}", which: spec}
    out = tmp_path / "run"
    with pytest.raises(EntropiError, match=match):
        pipeline.run_all(_config(**specs), out)
    assert not out.exists()


def test_cli_run_with_a_missing_target_says_one_line_and_makes_nothing(tmp_path, folders, capsys):
    src, _ = folders
    cfg = tmp_path / "c.toml"
    cfg.write_text(config_to_toml(_config(f"imagefolder:{src}", f"imagefolder:{src}")))
    out = tmp_path / "run"
    argv = ["run", str(cfg), "--out", str(out), "--target", "imagefolder:/no/such/path"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/no/such/path" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_check_spec_lists_without_decoding(tmp_path, monkeypatch):
    """The check reads listings and headers only: no image is ever decoded."""
    root = _pngs(tmp_path / "flat", "abc", 5)
    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=[0, 1, 0, 1], x_test=x[:2], y_test=[0, 1])
    from entropi.device import data as device_data
    from entropi.host.data import images, specs

    def refuse(*a, **k):
        raise AssertionError("an image was decoded")

    for module, name in (
        (images, "read_image_file"),  # every decode of a folder image, host and device
        (device_data, "read_image_file"),
        (device_data, "convert_images"),
        (specs, "convert_image"),
    ):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(device_data.NpzImages, "chunks", refuse)  # every read of npz images
    for spec in (f"imagefolder:{root}", f"npz:{tmp_path / 'd.npz'}"):
        check_spec(spec, ("train", "test"), [], download=False)
    _pngs(tmp_path / "one", "ab", 1)  # one image per class cannot be split into train and test
    with pytest.raises(EntropiError, match="have one image"):
        check_spec(f"imagefolder:{tmp_path / 'one'}", ("train", "test"), [], download=False)


# --- #3: caps belong to their spec ----------------------------------------------------------


def test_a_new_target_drops_the_caps_set_for_the_old_one():
    raw = {"data": {"target": "cifar100", "target_train_per_class": 50,
                    "target_test_per_class": 20, "source_per_class": 1000}}  # fmt: skip
    mine = apply_overrides(raw, ["data.target=imagefolder:/photos"])["data"]
    assert "target_train_per_class" not in mine and "target_test_per_class" not in mine
    assert mine["source_per_class"] == 1000  # the source did not change
    asked = apply_overrides(raw, ["data.target=npz:/d.npz", "data.target_train_per_class=7"])
    assert asked["data"]["target_train_per_class"] == 7
    assert "target_test_per_class" not in asked["data"]
    same = apply_overrides(raw, ["data.target=cifar100"])["data"]  # not another target
    assert same["target_train_per_class"] == 50 and same["target_test_per_class"] == 20
    assert "source_per_class" not in apply_overrides(raw, ["data.source=pacs"])["data"]
    raw["data"]["source_test_per_class"] = 200
    assert "source_test_per_class" not in apply_overrides(raw, ["data.source=pacs"])["data"]
    assert apply_overrides(raw, ["data.target=pacs"])["data"]["source_test_per_class"] == 200


def test_the_source_test_cap_subsamples_the_source_test_split_per_class(tmp_path):
    root = _pngs(tmp_path / "src" / "train", "abc", 12).parent
    _pngs(root / "test", "abc", 9)
    sets = [f"data.source=imagefolder:{root}", "pretrain.input_size=8", "data.source_per_class=0"]
    whole = rundata.load_source(load_config("quickstart", sets), torch.device("cpu"))
    capped = rundata.load_source(
        load_config("quickstart", [*sets, "data.source_test_per_class=4"]), torch.device("cpu")
    )
    assert len(whole.y_test) == 27 and whole.sizes["test_per_class"] is None
    assert np.bincount(capped.y_test.numpy()).tolist() == [4, 4, 4]
    assert capped.sizes["test_images"] == 12 and capped.sizes["test_per_class"] == 4
    assert torch.equal(capped.y_train, whole.y_train)  # the training images are untouched
    with pytest.raises(ConfigError, match="data.source_test_per_class"):
        load_config("quickstart", ["data.source_test_per_class=-1"])


def test_the_quickstart_keeps_its_cifar_caps_and_your_folder_is_whole(tmp_path):
    q = load_config("quickstart")
    assert (q.data.target_train_per_class, q.data.target_test_per_class) == (100, 20)
    assert q.data.source_per_class == 1000
    root = _pngs(tmp_path / "mine" / "train", "abc", 60).parent
    _pngs(root / "test", "abc", 25)
    cfg = load_config("quickstart", [f"data.target=imagefolder:{root}", "pretrain.input_size=8"])
    assert (cfg.data.target_train_per_class, cfg.data.target_test_per_class) == (0, 0)
    tgt = rundata.load_target(cfg)
    assert (len(tgt.y_train), len(tgt.y_test)) == (180, 75)  # every image, not 150 / 60
    assert tgt.sizes == {
        "spec": f"imagefolder:{root}", "classes": 3, "train_images": 180, "test_images": 75,
        "train_available": 180, "test_available": 75, "train_per_class": None,
        "test_per_class": None, "fraction": 1.0,
    }  # fmt: skip
    line = rundata.describe_sizes("target", tgt.sizes)
    assert line == (
        f"target imagefolder:{root}: 180 train / 75 test images, 3 classes (every image of "
        "180 / 75)"
    )
    capped = load_config(
        "quickstart",
        [f"data.target=imagefolder:{root}", "pretrain.input_size=8",
         "data.target_train_per_class=10", "data.target_test_per_class=5"],
    )  # fmt: skip
    tgt = rundata.load_target(capped)
    assert (len(tgt.y_train), len(tgt.y_test)) == (30, 15)
    assert "at most 10 train / 5 test images per class of 180 / 75" in rundata.describe_sizes(
        "target", tgt.sizes
    )


# --- #7: relative data paths are relative to the config file ----------------------------------


def test_relative_roots_and_paths_are_the_config_files(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "run.toml").write_text(
        '[data]\nroots = ["data", "/abs/elsewhere"]\nsource = "cifar10"\n'
        'target = "imagefolder:photos"\n'
    )
    away = tmp_path / "away"
    away.mkdir()
    monkeypatch.chdir(away)
    cfg = load_config(proj / "run.toml", ["data.source=npz:here.npz"])
    assert cfg.data.roots == [str(proj / "data"), "/abs/elsewhere"]
    assert cfg.data.target == f"imagefolder:{proj / 'photos'}"
    assert cfg.data.source == f"npz:{away / 'here.npz'}"  # a --set path: the working directory
    # probe --target on a run folder's config (apply_overrides alone) resolves it the same way
    probed = apply_overrides(config_to_toml_dict(cfg), ["data.target=imagefolder:new"])
    assert probed["data"]["target"] == f"imagefolder:{away / 'new'}"
    # the resolved config (a run folder's config.toml) reads back the same from anywhere
    saved = tmp_path / "runfolder" / "config.toml"
    saved.parent.mkdir()
    saved.write_text(config_to_toml(cfg))
    monkeypatch.chdir(tmp_path)
    again = load_config(saved)
    assert (again.data.roots, again.data.target) == (cfg.data.roots, cfg.data.target)


def config_to_toml_dict(cfg) -> dict:
    import tomllib

    return tomllib.loads(config_to_toml(cfg))


def test_the_shipped_configs_find_the_datasets_beside_the_checkout_from_anywhere(
    tmp_path, monkeypatch
):
    checkout = Path(entropi.host.__file__).resolve().parents[1]
    beside = os.path.abspath(checkout / ".." / "shared" / "datasets")
    monkeypatch.chdir(checkout)
    assert load_config("quickstart").data.roots == [beside]  # as before, from the checkout
    monkeypatch.chdir(tmp_path)
    roots = load_config("quickstart").data.roots
    if (checkout / "pyproject.toml").is_file():
        assert roots == [beside, os.path.abspath(tmp_path / ".." / "shared" / "datasets")]


def test_a_failed_download_names_every_place_searched(tmp_path, monkeypatch):
    from entropi.host.data import cifar

    def offline(url, dest, **kw):
        raise DownloadError(f"cannot download {url}: offline")

    monkeypatch.setattr(cifar, "download_file", offline)
    roots = [tmp_path / "r1", tmp_path / "r2"]
    for call in (
        lambda: check_spec("cifar10", ("train",), roots, download=True, progress=False),
        lambda: load_spec("cifar10", "train", roots, download=True, progress=False),
    ):
        with pytest.raises(DownloadError) as info:
            call()
        msg = str(info.value)
        assert "offline" in msg and "\n" not in msg
        for place in ("r1", "r2", "xdg/entropi"):
            assert str(tmp_path / place) in msg


def test_a_study_checks_every_target_before_building_a_ladder(tmp_path, folders, capsys):
    src, _ = folders
    base = tmp_path / "base.toml"
    base.write_text(config_to_toml(_config(f"imagefolder:{src}", f"imagefolder:{src}")))
    study = tmp_path / "s.toml"
    study.write_text(
        f'base = "{base}"\n[[ladder]]\nname = "l"\n'
        f'[[target]]\nname = "ok"\nspec = "imagefolder:{src}"\n'
        '[[target]]\nname = "gone"\nspec = "imagefolder:/no/such/path"\n'
    )
    out = tmp_path / "out"
    assert cli.main(["study", str(study), "--out", str(out)]) == 2
    assert "/no/such/path" in capsys.readouterr().err
    assert not (out / "ladders").exists()
