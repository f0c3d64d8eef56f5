"""Images of any size and colour mode -> the encoder input (imageprep), streamed image folders,
the bundle's recorded preprocessing, and `entropi-device train` on a mixed folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_device_bundle import MEAN, STD, export_onnx

from entropi.device import DataError
from entropi.device.app import evaluate, predict
from entropi.device.bundle import BundleError, load_bundle, write_bundle
from entropi.device.cli import main
from entropi.device.data import FolderImages, NpzImages, load_images
from entropi.device.imageprep import (
    Preprocess,
    convert_image,
    convert_images,
    read_image_file,
)

P32 = Preprocess()


def _rng_img(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- Preprocess --------------------------------------------------------------------------------


def test_preprocess_validates_and_round_trips():
    p = Preprocess(size=[24, 40], mode="center_crop", filter="lanczos")
    assert p.size == (24, 40)
    assert p.to_dict() == {"size": [24, 40], "mode": "center_crop", "filter": "lanczos"}
    assert Preprocess.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert Preprocess.from_dict({}) == Preprocess()
    for bad, match in [
        ({"size": (0, 3)}, "two positive ints"),
        ({"size": (32,)}, "two positive ints"),
        ({"size": "32"}, "two positive ints"),
        ({"size": (32.0, 32)}, "two positive ints"),
        ({"mode": "pad"}, "mode must be one of resize, center_crop"),
        ({"filter": "cubic"}, "filter must be one of bilinear"),
    ]:
        with pytest.raises(DataError, match=match):
            Preprocess(**bad)
    with pytest.raises(DataError, match="unknown preprocess key"):
        Preprocess.from_dict({"size": [32, 32], "antialias": True})


# --- convert_image -----------------------------------------------------------------------------


def test_gray_is_replicated_into_three_channels():
    g = _rng_img((32, 32))
    for img in (g, g[..., None], Image.fromarray(g, "L")):
        out = convert_image(img, P32)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], g)


def test_rgba_is_composited_on_black():
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 51, 128]]], np.uint8)
    expect = np.array([[[200, 100, 50], [0, 0, 0], [100, 50, 26]]], np.uint8)
    prep = Preprocess(size=(1, 3))
    np.testing.assert_array_equal(convert_image(rgba, prep), expect)
    np.testing.assert_array_equal(convert_image(Image.fromarray(rgba, "RGBA"), prep), expect)
    # a palette image: converted through RGB by Pillow
    pal = Image.fromarray(_rng_img((32, 32, 3))).quantize(8)
    np.testing.assert_array_equal(convert_image(pal, P32), np.asarray(pal.convert("RGB")))


def test_rgb_at_target_size_passes_through_bit_identical():
    x = _rng_img((32, 32, 3))
    for mode in ("resize", "center_crop"):
        for f in ("bilinear", "nearest", "lanczos"):
            prep = Preprocess(mode=mode, filter=f)
            np.testing.assert_array_equal(convert_image(x, prep), x)
            np.testing.assert_array_equal(convert_image(Image.fromarray(x), prep), x)
    # a non-square target too
    y = _rng_img((20, 30, 3))
    assert np.array_equal(convert_image(y, Preprocess(size=(20, 30), mode="center_crop")), y)


@pytest.mark.parametrize("filt", ["bilinear", "bicubic", "nearest", "lanczos", "box"])
@pytest.mark.parametrize("shape", [(28, 28, 3), (30, 40, 3), (64, 50, 3), (40, 30)])
def test_resize_equals_pillow_resize(shape, filt):
    a = _rng_img(shape, seed=1)
    pil = Image.fromarray(a)
    ref = np.asarray(pil.convert("RGB").resize((32, 24), getattr(Image.Resampling, filt.upper())))
    out = convert_image(a, Preprocess(size=(24, 32), filter=filt))
    assert out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(convert_image(pil, Preprocess(size=(24, 32), filter=filt)), ref)


def test_center_crop_geometry():
    prep = Preprocess(size=(4, 4), mode="center_crop", filter="nearest")
    # 4 x 10, wide: the centred 4 x 4 columns 3..6 are kept as they are
    wide = np.arange(40, dtype=np.uint8).reshape(4, 10)
    np.testing.assert_array_equal(convert_image(wide, prep)[..., 0], wide[:, 3:7])
    # 9 x 4, tall: rows 2..5 (the odd row dropped at the bottom)
    tall = np.arange(36, dtype=np.uint8).reshape(9, 4)
    np.testing.assert_array_equal(convert_image(tall, prep)[..., 0], tall[2:6])
    # 8 x 12 to a 4 x 4 target: crop 8 x 8 from column 2, then PIL's resize of the crop
    a = _rng_img((8, 12, 3), seed=2)
    ref = np.asarray(
        Image.fromarray(a).crop((2, 0, 10, 8)).resize((4, 4), Image.Resampling.BILINEAR)
    )
    out = convert_image(a, Preprocess(size=(4, 4), mode="center_crop"))
    np.testing.assert_array_equal(out, ref)
    # a non-square target: 10 x 10 -> aspect 1:2 keeps rows 2..7 (5 x 10), then resize to 2 x 4
    sq = _rng_img((10, 10, 3), seed=3)
    ref = np.asarray(
        Image.fromarray(sq).crop((0, 2, 10, 7)).resize((4, 2), Image.Resampling.BILINEAR)
    )
    np.testing.assert_array_equal(
        convert_image(sq, Preprocess(size=(2, 4), mode="center_crop")), ref
    )


def test_convert_images_batch_and_bad_input():
    xs = [_rng_img((28, 28, 3), seed=i) for i in range(3)] + [_rng_img((40, 30), seed=9)]
    out = convert_images(xs, P32)
    assert out.shape == (4, 32, 32, 3)
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(out[i], convert_image(x, P32))
    buf = np.empty((4, 32, 32, 3), np.uint8)
    assert convert_images(xs, P32, out=buf) is buf
    with pytest.raises(DataError, match="uint8"):
        convert_image(np.zeros((4, 4, 3), np.float32), P32)
    with pytest.raises(DataError, match=r"\(H, W, 4\)"):
        convert_image(np.zeros((4, 4, 2), np.uint8), P32)


def test_read_image_file_matches_convert_and_refuses_corrupt(tmp_path):
    a = _rng_img((40, 30), seed=4)
    Image.fromarray(a).save(tmp_path / "g.png")
    np.testing.assert_array_equal(
        read_image_file(tmp_path / "g.png", P32), convert_image(Image.fromarray(a), P32)
    )
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot read image .*bad\.png"):
        read_image_file(tmp_path / "bad.png", P32)
    # a truncated PNG: the header is fine, the pixel data is not (load() fails)
    data = (tmp_path / "g.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"trunc\.png"):
        read_image_file(tmp_path / "trunc.png", P32)


# --- image folders -----------------------------------------------------------------------------


def _write_mixed_folder(root, per_class=5, classes=("a", "b", "c")):
    """``root/<class>/*`` PNG/JPG/BMP of mixed sizes and modes (gray, RGB, RGBA)."""
    sizes = [(28, 28), (30, 40), (32, 32), (17, 50)]
    k = 0
    for ci, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[(i + ci) % len(sizes)]
            base = np.full((h, w, 3), 40, np.uint8)
            base[..., ci % 3] = 220
            noise = _rng_img((h, w, 3), seed=k) // 8
            img = base + noise
            kind = k % 4
            if kind == 0:
                Image.fromarray(img).convert("L").save(d / f"{i:03d}.png")
            elif kind == 1:
                Image.fromarray(img).save(d / f"{i:03d}.PNG")
            elif kind == 2:
                Image.fromarray(img).save(d / f"{i:03d}.bmp")
            else:
                rgba = np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], -1)
                Image.fromarray(rgba, "RGBA").save(d / f"{i:03d}.png")
            k += 1
        (d / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    return root


def test_folder_chunks_equal_a_whole_decode(tmp_path):
    root = _write_mixed_folder(tmp_path / "f")
    s = load_images(root, "train", P32)
    assert isinstance(s.images, FolderImages) and s.split is None
    assert s.class_names == ["a", "b", "c"] and s.images.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(s.labels, np.repeat([0, 1, 2], 5))
    whole = np.stack([read_image_file(p, P32) for p in s.images.paths])
    for size in (1, 4, 15, 100):
        got = np.concatenate([c.copy() for _, c in s.images.chunks(size)])
        np.testing.assert_array_equal(got, whole)
    bufs = {id(c.base if c.base is not None else c) for _, c in s.images.chunks(4)}
    assert len(bufs) == 1  # one reused buffer


def test_folder_split_layout_and_errors(tmp_path):
    root = tmp_path / "s"
    _write_mixed_folder(root / "train", per_class=2)
    _write_mixed_folder(root / "test", per_class=1)
    s = load_images(root, "test", P32)
    assert s.split == "test" and len(s.images) == 3
    with pytest.raises(DataError, match="has no 'val' split"):
        load_images(root, "val", P32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        load_images(tmp_path / "empty", "train", P32)
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="holds no images"):
        load_images(tmp_path / "noimg", "train", P32)
    # without a Preprocess the files must share one size
    with pytest.raises(DataError, match="resize them"):
        list(load_images(root, "train").images.chunks(8))


def test_corrupt_file_in_folder_is_refused_naming_it(tmp_path):
    root = _write_mixed_folder(tmp_path / "f", per_class=2)
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    s = load_images(root, "train", P32)  # the listing only: nothing decoded yet
    with pytest.raises(DataError, match=r"cannot read image .*b/broken\.jpg"):
        list(s.images.chunks(4))


def test_npz_of_another_size_is_converted_chunk_by_chunk(tmp_path):
    x = _rng_img((7, 28, 20), seed=5)
    np.savez(tmp_path / "g.npz", x_train=x, y_train=np.arange(7) % 2)
    s = load_images(tmp_path / "g.npz", "train", P32)
    assert isinstance(s.images, NpzImages) and s.images.shape == (7, 32, 32, 3)
    got = np.concatenate([c.copy() for _, c in s.images.chunks(3)])
    np.testing.assert_array_equal(got, convert_images(x, P32))
    with pytest.raises(DataError, match=r"must be uint8 \(N, H, W, 3\)"):
        load_images(tmp_path / "g.npz", "train")  # no Preprocess: stored as is only
    y = _rng_img((3, 32, 32, 3), seed=6)
    np.savez(tmp_path / "same.npz", x_train=y)
    s = load_images(tmp_path / "same.npz", "train", P32)
    np.testing.assert_array_equal(next(s.images.chunks(8))[1], y)  # served as stored


# --- bundle manifest ---------------------------------------------------------------------------


def _export_any_size_onnx(path):
    """smallnet -> ONNX with a dynamic batch, height and width (global pooling takes any size)."""
    import torch

    from entropi.host.ladder.models import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("smallnet").eval()
    dims = {0: torch.export.Dim("n"), 2: torch.export.Dim("h", min=8, max=256)}
    dims[3] = torch.export.Dim("w", min=8, max=256)
    x = torch.randn(2, 3, 32, 32)
    torch.onnx.export(
        enc, (x,), str(path), dynamo=True, external_data=False, dynamic_shapes=(dims,)
    )
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgbundle")
    export_onnx(d / "enc.onnx")
    return write_bundle(
        d / "bundle",
        encoder_files={"encoder.onnx": d / "enc.onnx"},
        input_shape=[3, 32, 32],
        normalization={"mean": MEAN, "std": STD},
        feature_dim=256,
        preprocess=Preprocess(mode="center_crop", filter="bicubic").to_dict(),
    )


def test_manifest_records_preprocess_and_old_manifests_load(bundle, tmp_path):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["preprocess"] == {"size": [32, 32], "mode": "center_crop", "filter": "bicubic"}
    assert load_bundle(bundle).preprocess == Preprocess(mode="center_crop", filter="bicubic")
    # a manifest written before the key existed: the default at the input size
    import shutil

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    del m["preprocess"]
    (old / "manifest.json").write_text(json.dumps(m))
    assert load_bundle(old).preprocess == Preprocess(size=(32, 32))
    # default when not given; a size other than the input's is refused (write_bundle runs the
    # encoder on the input shape, so these bundles take an encoder of any input size)
    enc = _export_any_size_onnx(tmp_path / "any.onnx")
    kw = dict(
        encoder_files={"encoder.onnx": enc},
        normalization={"mean": MEAN, "std": STD},
        feature_dim=256,
    )
    b2 = write_bundle(tmp_path / "b2", input_shape=[3, 16, 24], **kw)
    assert json.loads((b2 / "manifest.json").read_text())["preprocess"] == {
        "size": [16, 24],
        "mode": "resize",
        "filter": "bilinear",
    }
    with pytest.raises(BundleError, match="must be the encoder input"):
        write_bundle(tmp_path / "b3", input_shape=[3, 32, 32], preprocess={"size": [8, 8]}, **kw)
    with pytest.raises(BundleError, match="filter must be one of"):
        write_bundle(tmp_path / "b4", input_shape=[3, 32, 32], preprocess={"filter": "x"}, **kw)
    assert not (tmp_path / "b3").exists() and not (tmp_path / "b4").exists()
    m["preprocess"] = {"size": [24, 20], "mode": "stretch"}
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="mode must be one of"):
        load_bundle(old)


# --- end to end --------------------------------------------------------------------------------


def test_train_on_a_folder_of_mixed_grayscale_pngs(bundle, tmp_path, capsys):
    data = tmp_path / "data"
    _write_mixed_folder(data / "train", per_class=12)
    _write_mixed_folder(data / "test", per_class=4)
    for p in data.rglob("*"):  # all grayscale PNGs of mixed sizes
        if p.is_file() and p.suffix.lower() in {".png", ".bmp"}:
            Image.open(p).convert("L").save(p.with_suffix(".png"))
            if p.suffix != ".png":
                p.unlink()
    out = tmp_path / "head"
    argv = ["train", "--bundle", str(bundle), "--data", str(data), "--out", str(out)]
    assert main([*argv, "--epochs", "30", "--budget", "1MB", "--lr", "5"]) == 0
    rep = json.loads((out / "train.json").read_text())
    assert rep["accuracy_split"] == "test" and rep["n_train"] + rep["n_val"] == 36
    assert 0 <= rep["accuracy"] <= 1
    capsys.readouterr()
    ev = evaluate(bundle, out, data)
    assert ev["samples"] == 12 and ev["accuracy"] == pytest.approx(rep["test_accuracy"])
    preds = predict(bundle, out, data / "test" / "a" / "000.png")
    assert len(preds) == 1 and preds[0]["class"] in (0, 1, 2)


@pytest.mark.slow
def test_device_rss_script_measures_both_sizes(tmp_path):
    from scripts_loader import load_script

    res = load_script("device_rss").measure([20, 40], tmp_path)
    assert set(res["runs"]) == {"20", "40"}
    for n, run in res["runs"].items():
        assert run["peak_rss_bytes"] > 0 and run["n_train"] + run["n_val"] == int(n)
    assert res["ratio_largest_to_smallest"] > 0


def test_without_pillow_a_clear_error_and_pass_through_still_works(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)
    x = _rng_img((32, 32, 3))
    assert convert_image(x, P32) is x
    with pytest.raises(DataError, match="pip install pillow"):
        convert_image(_rng_img((28, 28, 3)), P32)
    with pytest.raises(DataError, match="pip install pillow"):
        read_image_file(tmp_path / "x.png", P32)
