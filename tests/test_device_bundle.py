"""Bundles: write/verify/load, encoder runners vs the PyTorch encoder, features, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from entropi.device import BundleError, ChecksumError, DataError, FormatVersionError
from entropi.device.bundle import load_bundle, write_bundle
from entropi.device.features import extract_features, preprocess
from entropi.host.ladder.models import build_encoder

torch.set_num_threads(1)
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def export_onnx(path, *, batch=None, seed=0):
    """smallnet encoder -> one self-contained ONNX file (dynamic batch unless ``batch``)."""
    torch.manual_seed(seed)
    enc = build_encoder("smallnet").eval()
    x = torch.randn(batch or 2, 3, 32, 32)
    kw = {} if batch else {"dynamic_shapes": ({0: torch.export.Dim("n")},)}
    torch.onnx.export(enc, (x,), str(path), dynamo=True, external_data=False, **kw)
    return enc


def smallnet_bundle(folder, **manifest):
    """A smallnet ONNX encoder (32 x 32 input, 256 features) bundled in ``folder/bundle``, with
    ``manifest`` (class_names, alpha, ...) passed to write_bundle; (bundle path, encoder)."""
    enc = export_onnx(folder / "enc.onnx")
    bundle = write_bundle(
        folder / "bundle",
        encoder_files={"encoder.onnx": folder / "enc.onnx"},
        input_shape=[3, 32, 32],
        normalization={"mean": MEAN, "std": STD},
        feature_dim=256,
        **manifest,
    )
    return bundle, enc


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return smallnet_bundle(d, class_names=["a", "b", "c"], alpha=0.1, provenance={"test": True})


def test_bundle_roundtrip_and_manifest(onnx_bundle):
    path, _ = onnx_bundle
    b = load_bundle(path)
    assert b.encoder_format == "onnx" and b.feature_dim == 256
    m = json.loads((path / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["alpha"] == 0.1
    assert set(m["files"]) == {"encoder.onnx", "check.npz"}
    assert len(m["files"]["encoder.onnx"]["sha256"]) == 64
    assert m["input"] == {
        "shape": [3, 32, 32],
        "layout": "NCHW",
        "dtype": "float32",
        "mean": MEAN,
        "std": STD,
        "pixel_scale": 1 / 255,
    }


@pytest.mark.parametrize("batch", [None, 4])
def test_onnx_runner_matches_torch_encoder(tmp_path, batch):
    enc = export_onnx(tmp_path / "e.onnx", batch=batch, seed=1)
    b = write_bundle(
        tmp_path / "b",
        encoder_files={"encoder.onnx": tmp_path / "e.onnx"},
        input_shape=[3, 32, 32],
        normalization={"mean": MEAN, "std": STD},
        feature_dim=256,
    )
    runner = load_bundle(b).encoder()
    assert runner.batch_size == batch
    x = np.random.default_rng(0).standard_normal((7, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = enc(torch.from_numpy(x)).numpy()
    # float32 conv stacks in two runtimes: differences are rounding, ~1e-6 relative
    np.testing.assert_allclose(runner(x), ref, rtol=1e-4, atol=1e-4)


def test_extract_features_normalizes_shuffles_and_stores_atomically(onnx_bundle, tmp_path):
    path, enc = onnx_bundle
    b = load_bundle(path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(10)
    feats, lab = extract_features(
        b.encoder(),
        images,
        labels,
        input_shape=b.input_shape,
        mean=MEAN,
        std=STD,
        feature_dim=256,
        batch_size=4,
        out_path=tmp_path / "f.npy",
        seed=3,
    )
    assert isinstance(feats, np.memmap) and not feats.flags.writeable
    assert sorted(lab.tolist()) == list(range(10)) and lab.tolist() != list(range(10))
    x = (torch.from_numpy(images).float() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    with torch.no_grad():
        ref = enc(x.permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(feats, ref[lab], rtol=1e-4, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["f.npy"]
    np.testing.assert_allclose(
        preprocess(images[:1], MEAN, STD)[0, :, 0, 0],
        (images[0, 0, 0] / 255 - MEAN) / np.array(STD),
        rtol=1e-6,
    )


def test_image_size_mismatch_is_rejected(onnx_bundle, tmp_path):
    b = load_bundle(onnx_bundle[0])
    images = np.zeros((2, 28, 28, 3), np.uint8)
    with pytest.raises(DataError, match="images are 28x28x3 .* encoder takes 32x32x3"):
        extract_features(
            b.encoder(),
            images,
            None,
            input_shape=b.input_shape,
            mean=MEAN,
            std=STD,
            feature_dim=256,
            out_path=tmp_path / "f.npy",
        )
    assert not list(tmp_path.iterdir())


def test_checksum_mismatch_names_the_file(onnx_bundle, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(onnx_bundle[0], bad)
    with open(bad / "encoder.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ChecksumError, match="checksum mismatch for 'encoder.onnx'"):
        load_bundle(bad)


def test_newer_format_version_and_broken_bundles(onnx_bundle, tmp_path):
    import shutil

    newer = tmp_path / "newer"
    shutil.copytree(onnx_bundle[0], newer)
    m = json.loads((newer / "manifest.json").read_text())
    m["format_version"] = 2
    (newer / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatVersionError, match="format_version 2; this runtime reads versions"):
        load_bundle(newer)
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(tmp_path)
    (newer / "encoder.onnx").unlink()
    m["format_version"] = 1
    (newer / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="'encoder.onnx' listed in manifest.json is missing"):
        load_bundle(newer)


def test_write_bundle_is_atomic_and_validates(onnx_bundle, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        write_bundle(
            tmp_path / "b",
            encoder_files={"encoder.onnx": tmp_path / "nope.onnx"},
            input_shape=[3, 32, 32],
            normalization={"mean": MEAN, "std": STD},
            feature_dim=8,
        )
    with pytest.raises(BundleError, match="must have 3 values"):
        write_bundle(
            tmp_path / "b",
            encoder_files={"encoder.onnx": tmp_path / "x"},
            input_shape=[3, 32, 32],
            normalization={"mean": [0.5], "std": STD},
            feature_dim=8,
        )
    (tmp_path / "x.onnx").write_bytes(b"123")
    with pytest.raises(BundleError, match="x.onnx is not a valid ONNX model"):
        write_bundle(
            tmp_path / "b",
            encoder_files={"encoder.onnx": tmp_path / "x.onnx"},
            input_shape=[3, 32, 32],
            normalization={"mean": MEAN, "std": STD},
            feature_dim=8,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]
    good = onnx_bundle[0] / "encoder.onnx"

    class Boom(Exception):
        pass

    import entropi.device.bundle as mod

    orig = mod.atomic_write_json
    mod.atomic_write_json = lambda *a, **k: (_ for _ in ()).throw(Boom())
    try:
        with pytest.raises(Boom):
            write_bundle(
                tmp_path / "b",
                encoder_files={"encoder.onnx": good},
                input_shape=[3, 32, 32],
                normalization={"mean": MEAN, "std": STD},
                feature_dim=256,
            )
    finally:
        mod.atomic_write_json = orig
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]


@pytest.mark.tflite
def test_tflite_runner_fixed_batch_pads_and_matches_torch(tmp_path):
    litert_torch = pytest.importorskip("litert_torch")
    torch.manual_seed(2)
    enc = build_encoder("smallnet").eval()
    litert_torch.convert(enc, (torch.randn(4, 3, 32, 32),)).export(str(tmp_path / "e.tflite"))
    b = write_bundle(
        tmp_path / "b",
        encoder_files={"encoder.tflite": tmp_path / "e.tflite"},
        input_shape=[3, 32, 32],
        normalization={"mean": MEAN, "std": STD},
        feature_dim=256,
    )
    bundle = load_bundle(b)
    assert bundle.encoder_format == "tflite"
    runner = bundle.encoder()
    assert runner.batch_size == 4  # litert-torch keeps the example's batch: 7 rows = 4 + 3 padded
    x = np.random.default_rng(0).standard_normal((7, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = enc(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runner(x), ref, rtol=1e-4, atol=1e-4)
