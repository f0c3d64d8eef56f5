"""export_rung on a run directory: files, export.json, atomicity, and bad input."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from entropi.export import VerificationError, export_rung, read_metadata
from entropi.export.synthetic import kill_channels_, magnitude_prune_, randomize_batchnorm_
from entropi.host.checkpoint import CheckpointError, rung_path, save_checkpoint
from entropi.host.models import build_model, prunable_parameters

NORM = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25]}


def write_run(rundir, alphas=(1.0, 0.1), selected=1):
    """A run directory with a smallnet ladder (random weights) as host.checkpoint writes it."""
    torch.manual_seed(0)
    model = build_model("smallnet", 10)
    randomize_batchnorm_(model.encoder)
    kill_channels_(model.encoder, 0.25)
    n = sum(p.numel() for _, p in prunable_parameters(model.encoder))
    for i, alpha in enumerate(alphas):
        magnitude_prune_(model.encoder, alpha)
        params = prunable_parameters(model.encoder)
        save_checkpoint(
            rung_path(rundir, i),
            {
                "format": 1,
                "arch": "smallnet",
                "feature_dim": 256,
                "num_source_classes": 10,
                "alpha": alpha,
                "nnz": sum(int(torch.count_nonzero(p)) for _, p in params),
                "n_prunable": n,
                "source_accuracy": 0.5,
                "normalization": NORM,
                "input_shape": [3, 32, 32],
                "source_dataset": "cifar10",
                "encoder": model.encoder.state_dict(),
                "head": model.head.state_dict(),
                "masks": {k: p != 0 for k, p in params},
            },
        )
    (rundir / "results.json").write_text(json.dumps({"selected_index": selected}))
    (rundir / "config.toml").write_text('arch = "smallnet"\n')
    return rundir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    torch.set_num_threads(1)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("exp") / "export"
    return out, export_rung(run, "selected", compact=True, out_dir=out, verify_images=images)


def test_files_and_export_json(exported, run):
    out, result = exported
    names = {"encoder.onnx", "encoder.tflite", "encoder_compact.onnx", "encoder_compact.tflite"}
    assert set(result["files"]) == names
    assert {p.name for p in out.iterdir()} == names | {"export.json"}
    assert json.loads((out / "export.json").read_text()) == result
    for name, entry in result["files"].items():
        data = (out / name).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["max_rel_diff"] <= result["tolerance"]["rtol"]
    assert result["verification_inputs"] == {
        "random": 4,
        "images": 2,
        "reference": "PyTorch encoder (eval, BN not folded), float32",
    }
    assert result["floor_bytes"] == result["nnz"] * 8 and result["index_bytes"] == 4
    assert result["files"]["encoder.onnx"]["bytes"] < result["dense_bytes"] / 3
    assert result["compact"]["params_after"] < result["compact"]["params_before"]
    prov = result["provenance"]
    config_hash = hashlib.sha256((run / "config.toml").read_bytes()).hexdigest()
    assert prov["rung_index"] == 1 and prov["config_sha256"] == config_hash
    assert prov["normalization"] == NORM and prov["source_dataset"] == "cifar10"


def test_provenance_inside_the_models(exported):
    out, result = exported
    props = {p.key: p.value for p in onnx.load(out / "encoder.onnx").metadata_props}
    assert json.loads(props["entropi.alpha"]) == result["provenance"]["alpha"]
    assert props["entropi.entropi_version"] == result["provenance"]["entropi_version"]
    meta = read_metadata(out / "encoder.tflite")
    assert meta["nnz"] == result["nnz"] and meta["form"] == "pruned"


def test_failed_verification_leaves_nothing(run, tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "old.txt").write_text("keep")
    with pytest.raises(VerificationError, match="differs from the PyTorch encoder"):
        export_rung(run, 0, formats=["onnx"], out_dir=tmp_path / "export", atol=-1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["old.txt"]


def test_run_without_ladder(tmp_path):
    with pytest.raises(CheckpointError, match="no pruning ladder"):
        export_rung(tmp_path, 0, out_dir=tmp_path / "out")


def test_rung_out_of_range(run, tmp_path):
    with pytest.raises(CheckpointError, match=r"rung 7 does not exist.*rungs 0\.\.1"):
        export_rung(run, 7, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint(tmp_path):
    rundir = write_run(tmp_path / "run", alphas=(1.0,), selected=0)
    rung_path(rundir, 0).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        export_rung(rundir, "selected", out_dir=tmp_path / "out")


def test_unknown_format(run, tmp_path):
    with pytest.raises(ValueError, match=r"unknown export format.*'coreml'.*valid"):
        export_rung(run, 0, formats=["coreml"], out_dir=tmp_path / "out")


def test_wrong_image_size(run, tmp_path):
    images = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"16x16.*\[3, 32, 32\]"):
        export_rung(run, 0, formats=["onnx"], out_dir=tmp_path / "out", verify_images=images)
