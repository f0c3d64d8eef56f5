"""A head knows its classes and its bundle (issue 23, #2): eval and predict match classes by
name, so the same images as an ``.npz`` or as a class folder score the same; a head used with
another bundle's encoder, or on data of classes it was not trained on, is refused in one line;
a head written before names and digests were recorded is used by index, with a warning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_device_bundle import smallnet_bundle

from entropi.device import DataError, TrainConfig, evaluate, load_head, predict, train_on_bundle
from entropi.device.app import DeviceWarning
from entropi.device.bundle import write_bundle
from entropi.device.cli import main
from entropi.device.head import save_head

NAMES = ["r", "g", "b"]  # not sorted: a folder lists them b, g, r


def _images(rng, n):
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 100, (n, 32, 32, 3))
    x[np.arange(n), :, :, y] += 150  # colour = class
    return x.astype(np.uint8), y


def _as_folder(root, x, y, names):
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / names[label] / f"{i:03d}.png")
    return root


def _another_encoder(bundle, out):
    """``bundle`` with its encoder's first weight scaled: a bundle of another encoder (made
    without a second export)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(bundle / "encoder.onnx")
    w = model.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.5, w.name))
    onnx.save(model, out.with_suffix(".onnx"))
    m = json.loads((bundle / "manifest.json").read_text())
    kw = {"input_shape": m["input"]["shape"], "feature_dim": m["feature_dim"]}
    kw["normalization"] = {k: m["input"][k] for k in ("mean", "std")}
    return write_bundle(out, encoder_files={"encoder.onnx": out.with_suffix(".onnx")}, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bundle, a head trained on an npz whose class_names are not sorted, the npz, the same
    test images as a class folder, and a second bundle with another encoder."""
    d = tmp_path_factory.mktemp("identity")
    bundle, _ = smallnet_bundle(d, class_names=["x", "y", "z"])
    rng = np.random.default_rng(0)
    (xtr, ytr), (xte, yte) = _images(rng, 120), _images(rng, 30)
    names = np.array(NAMES)
    np.savez(d / "d.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, class_names=names)
    head = d / "head"
    argv = ["train", "--bundle", str(bundle), "--data", str(d / "d.npz"), "--out", str(head)]
    flags = ["--epochs", "40", "--lr", "20", "--momentum", "0", "--weight-decay", "0"]
    assert main([*argv, *flags, "--budget", "64KB", "--patience", "40"]) == 0
    other = _another_encoder(bundle, d / "other")
    folder = _as_folder(d / "folder", xte, yte, NAMES)
    return {"d": d, "bundle": bundle, "head": head, "other": other, "folder": folder}


def test_the_head_records_its_class_names_and_encoder(trained):
    h = load_head(trained["head"])
    assert h.class_names == NAMES
    manifest = json.loads((trained["bundle"] / "manifest.json").read_text())
    assert h.encoder_sha256 == [manifest["files"]["encoder.onnx"]["sha256"]]
    rep = json.loads((trained["head"] / "train.json").read_text())
    assert rep["class_names"] == NAMES
    assert rep["encoder"]["sha256"] == manifest["files"]["encoder.onnx"]["sha256"]


def test_an_npz_and_the_same_images_as_a_folder_score_the_same(trained):
    b, h = trained["bundle"], trained["head"]
    rep = json.loads((h / "train.json").read_text())
    on_npz = evaluate(b, h, trained["d"] / "d.npz")
    on_folder = evaluate(b, h, trained["folder"], split="train")
    assert on_npz["accuracy"] >= 0.9  # the head learnt; matching by index would give ~1/3
    assert on_folder["accuracy"] == on_npz["accuracy"] == pytest.approx(rep["test_accuracy"])
    assert on_folder["loss"] == pytest.approx(on_npz["loss"], rel=1e-5)
    # predict names the classes the same way on both
    by_npz = [p["name"] for p in predict(b, h, trained["d"] / "d.npz")]
    by_folder = {p["file"]: p["name"] for p in predict(b, h, trained["folder"])}
    want = {str(f): f.parent.name for f in sorted(trained["folder"].rglob("*.png"))}
    hits = sum(by_folder[f] == name for f, name in want.items())
    assert hits / len(want) == pytest.approx(on_folder["accuracy"])
    assert sorted(by_npz) == sorted(by_folder.values())


def test_a_head_with_another_bundles_encoder_is_refused(trained, capsys):
    h = trained["head"]
    for cmd in ("eval", "predict"):
        argv = [cmd, "--bundle", str(trained["other"]), "--head", str(h)]
        assert main([*argv, "--data", str(trained["d"] / "d.npz")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "trained with another bundle's encoder" in err


def test_data_of_a_class_the_head_does_not_know_is_refused(trained, tmp_path, capsys):
    x, y = _images(np.random.default_rng(1), 9)
    folder = _as_folder(tmp_path / "f", x, y, ["r", "g", "cat"])
    argv = ["eval", "--bundle", str(trained["bundle"]), "--head", str(trained["head"])]
    assert main([*argv, "--data", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'cat'" in err and "was not trained on" in err
    # a subset of the head's classes is fine (matched by name)
    sub = _as_folder(tmp_path / "sub", x[y < 2], y[y < 2], ["b", "r"])
    res = evaluate(trained["bundle"], trained["head"], sub)
    assert res["samples"] == int((y < 2).sum())


def test_an_old_head_without_names_or_digest_is_used_by_index_with_a_warning(trained, tmp_path):
    h = load_head(trained["head"])
    h.class_names = h.encoder_sha256 = None
    save_head(tmp_path, h)
    with pytest.warns(DeviceWarning, match="does not record the encoder"):
        res = evaluate(trained["bundle"], tmp_path, trained["d"] / "d.npz")
    assert res["accuracy"] >= 0.9  # the npz's indices are the head's
    with pytest.warns(DeviceWarning, match=r"records no class names.*matched by index"):
        evaluate(trained["bundle"], tmp_path, trained["folder"])


def test_an_npz_without_class_names_does_not_take_the_bundles(trained, tmp_path, capsys):
    """The bundle names x, y, z; data without names gives a head without names (a warning
    says so), never the bundle's names."""
    x, y = _images(np.random.default_rng(2), 40)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    argv = ["train", "--bundle", str(trained["bundle"]), "--data", str(tmp_path / "d.npz")]
    assert main([*argv, "--out", str(tmp_path / "h"), "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "names no classes" in err and "bundle's class names are not assumed" in err
    assert load_head(tmp_path / "h").class_names is None
    np.savez(tmp_path / "dup.npz", x_train=x, y_train=y, class_names=["a", "b", "a"])
    with pytest.raises(DataError, match="names a class twice"):
        train_on_bundle(trained["bundle"], tmp_path / "dup.npz", tmp_path / "h2", TrainConfig())
