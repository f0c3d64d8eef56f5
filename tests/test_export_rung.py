"""export_rung on a run directory: files, export.json, atomicity, and bad input; the rung
record (save / load, legacy files) and the host's checkpoint helpers on top of it."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from synthetic import kill_channels_, magnitude_prune_, randomize_batchnorm_

from entropi.common.errors import EntropiError
from entropi.export import ExportError, VerificationError, read_metadata
from entropi.export.rung import Rung, RungInfo, load_rung_file, save_rung
from entropi.export.weights import prunable_parameters
from entropi.host.deployment.rung_export import bundle_rung, config_hash, ensure_export, export_rung
from entropi.host.ladder.models import build_model
from entropi.host.ladder.rungs import (
    CheckpointError,
    classifier_from_rung,
    list_rungs,
    load_rung,
    resolve_rung,
)
from entropi.host.run.rundir import RunDir

NORM = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25]}


def write_run(rundir, alphas=(1.0, 0.1), selected=1):
    """A run directory with a smallnet ladder (random weights) as the pipeline writes it."""
    run = RunDir(rundir)
    torch.manual_seed(0)
    model = build_model("smallnet", 10)
    randomize_batchnorm_(model.encoder)
    kill_channels_(model.encoder, 0.25)
    n = sum(p.numel() for _, p in prunable_parameters(model.encoder))
    for i, alpha in enumerate(alphas):
        magnitude_prune_(model.encoder, alpha)
        params = prunable_parameters(model.encoder)
        info = RungInfo(
            arch="smallnet",
            feature_dim=256,
            input_shape=(3, 32, 32),
            normalization=NORM,
            alpha=alpha,
            nnz=sum(int(torch.count_nonzero(p)) for _, p in params),
            n_prunable=n,
            alpha_target=alpha,
            source_dataset="cifar10",
            num_source_classes=10,
            source_accuracy=0.5,
        )
        masks = {k: p != 0 for k, p in params}
        save_rung(
            run.rung(i), Rung(info, model.encoder.state_dict(), model.head.state_dict(), masks)
        )
    run.write_json(run.results, {"selected_index": selected})
    run.write_text(run.config, 'arch = "smallnet"\n')
    return rundir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    torch.set_num_threads(1)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("exp") / "export"
    return out, export_rung(
        run, "selected", forms=("sparse", "compact"), out_dir=out, verify_images=images
    )


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
    # the provenance of a real rung: the same keys and values as before RungInfo
    assert set(prov) == {
        "entropi_version",
        "arch",
        "rung_index",
        "alpha",
        "nnz",
        "n_prunable",
        "source_dataset",
        "source_accuracy",
        "normalization",
        "input_shape",
        "input_layout",
        "feature_dim",
        "config_sha256",
    }
    assert prov["arch"] == "smallnet" and prov["alpha"] == 0.1 and prov["feature_dim"] == 256
    assert prov["nnz"] == result["nnz"] and prov["source_accuracy"] == 0.5
    assert prov["input_shape"] == [3, 32, 32] and prov["n_prunable"] == result["n_weights"]
    assert all("tolerance" not in f for f in result["files"].values())


def test_provenance_inside_the_models(exported):
    out, result = exported
    props = {p.key: p.value for p in onnx.load(out / "encoder.onnx").metadata_props}
    assert json.loads(props["entropi.alpha"]) == result["provenance"]["alpha"]
    assert props["entropi.entropi_version"] == result["provenance"]["entropi_version"]
    meta = read_metadata(out / "encoder.tflite")
    assert meta["nnz"] == result["nnz"] and meta["form"] == "sparse"


def test_failed_verification_leaves_nothing(run, tmp_path):
    # an earlier export's folder (only export file names: a user's folder is refused outright)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "encoder.onnx").write_text("keep")
    with pytest.raises(VerificationError, match="differs from the PyTorch encoder"):
        export_rung(run, 0, formats=["onnx"], out_dir=tmp_path / "export", atol=-1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["encoder.onnx"]
    assert (tmp_path / "export" / "encoder.onnx").read_text() == "keep"


def test_run_without_ladder(tmp_path):
    with pytest.raises(CheckpointError, match="no pruning ladder"):
        export_rung(tmp_path, 0, out_dir=tmp_path / "out")


def test_rung_out_of_range(run, tmp_path):
    with pytest.raises(CheckpointError, match=r"rung 7 does not exist.*rungs 0\.\.1"):
        export_rung(run, 7, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint(tmp_path):
    rundir = write_run(tmp_path / "run", alphas=(1.0,), selected=0)
    RunDir(rundir).rung(0).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        export_rung(rundir, "selected", out_dir=tmp_path / "out")


def test_unknown_format(run, tmp_path):
    with pytest.raises(ExportError, match=r"unknown export format.*'coreml'.*valid"):
        export_rung(run, 0, formats=["coreml"], out_dir=tmp_path / "out")


def test_wrong_image_size(run, tmp_path):
    images = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(ExportError, match=r"16x16.*\[3, 32, 32\]"):
        export_rung(run, 0, formats=["onnx"], out_dir=tmp_path / "out", verify_images=images)


def test_errors_are_entropi_errors():
    assert issubclass(ExportError, EntropiError) and issubclass(ExportError, ValueError)
    assert issubclass(VerificationError, ExportError)
    assert issubclass(CheckpointError, EntropiError) and issubclass(CheckpointError, ValueError)


def test_load_rung_and_classifier(run):
    encoder, info = load_rung(run, "selected")
    assert not encoder.training and isinstance(info, RungInfo)
    assert info.index == 1 and info.alpha == 0.1 and info.input_shape == (3, 32, 32)
    assert resolve_rung(run, 0) == 0 and len(list_rungs(run)) == 2
    assert load_rung(RunDir(run), 0)[1].index == 0
    rung = load_rung_file(RunDir(run).rung(1), 1)
    model = classifier_from_rung(rung)
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.eval()(x), encoder(x))
    assert model.head.out_features == 10
    assert config_hash(run) == hashlib.sha256((run / "config.toml").read_bytes()).hexdigest()


def test_legacy_rung_file_loads(run, tmp_path):
    """A rung file written as a plain dict (what the pipeline wrote before the rung record)."""
    rundir = tmp_path / "old"
    (rundir / "rungs").mkdir(parents=True)
    rung = load_rung_file(RunDir(run).rung(1))
    payload = {
        "format": 1,
        "arch": "smallnet",
        "feature_dim": 256,
        "num_source_classes": 10,
        "alpha": 0.1,
        "nnz": rung.info.nnz,
        "n_prunable": rung.info.n_prunable,
        "source_accuracy": 0.5,
        "normalization": NORM,
        "input_shape": [3, 32, 32],
        "source_dataset": "cifar10",
        "encoder": rung.encoder,
        "head": rung.head,
        "masks": rung.masks,
    }
    torch.save(payload, RunDir(rundir).rung(0))
    _, info = load_rung(rundir, 0)
    assert info.nnz == rung.info.nnz and info.alpha_target is None and info.index == 0
    assert Rung.from_payload(rung.to_payload()).info == dataclasses.replace(rung.info, index=None)


def test_mismatched_state_dict(run, tmp_path):
    rung = load_rung_file(RunDir(run).rung(0), 0)
    bad = Rung(rung.info, {"nope": torch.zeros(1)}, rung.head, rung.masks)
    with pytest.raises(CheckpointError, match="encoder does not match arch 'smallnet'"):
        classifier_from_rung(bad)
    rundir = tmp_path / "bad"
    save_rung(RunDir(rundir).rung(0), bad)
    with pytest.raises(CheckpointError, match=r"rung_000\.pt: encoder does not match"):
        load_rung(rundir, 0)


@pytest.mark.parametrize(
    "payload, message",
    [
        ([1, 2], "not a dict"),
        ({"arch": "smallnet"}, "no valid rung format"),
        ({"format": 99}, "rung format 99"),
        ({"format": 1, "arch": "smallnet"}, "lacks keys"),
    ],
)
def test_bad_payloads(tmp_path, payload, message):
    path = tmp_path / "rung_000.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        load_rung_file(path)


def test_bad_rung_argument(run):
    with pytest.raises(CheckpointError, match="'selected' or an integer"):
        resolve_rung(run, "best")
    with pytest.raises(CheckpointError, match="does not exist"):
        list_rungs(run / "missing")


def test_compact_dense_form_stores_the_compact_encoder_dense(exported, run, tmp_path):
    """forms=("compact-dense",): the compact network with every weight stored dense (no sparse
    tensor, no DENSIFY op in the TFLite graph, so nothing is rebuilt in RAM), the same
    parameters as the compact form, and the same features as the compact file (LiteRT and
    onnxruntime, against each other and PyTorch)."""
    from ai_edge_litert.interpreter import Interpreter

    from entropi.export import run_onnx, run_tflite

    compact_out, compact = exported
    out = tmp_path / "export"
    result = export_rung(run, "selected", forms=("compact-dense",), out_dir=out)
    names = {"encoder_compact_dense.onnx", "encoder_compact_dense.tflite"}
    assert set(result["files"]) == names and result["forms"] == ["compact-dense"]
    assert compact["forms"] == ["sparse", "compact"]
    for name in names:
        dense, sparse = result["files"][name], compact["files"][name.replace("_dense", "")]
        assert dense["sparse_tensors"] == 0 < sparse["sparse_tensors"]
        assert dense["params"] == sparse["params"] == compact["compact"]["params_after"]
        assert dense["bytes"] >= 4 * dense["params"] > sparse["bytes"]
    ops = {
        o["op_name"]
        for o in Interpreter(str(out / "encoder_compact_dense.tflite"))._get_ops_details()
    }
    assert "DENSIFY" not in ops
    assert "DENSIFY" in {
        o["op_name"]
        for o in Interpreter(str(compact_out / "encoder_compact.tflite"))._get_ops_details()
    }
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = run_tflite(compact_out / "encoder_compact.tflite", x)
    np.testing.assert_allclose(run_tflite(out / "encoder_compact_dense.tflite", x), ref, atol=1e-5)
    np.testing.assert_allclose(run_onnx(out / "encoder_compact_dense.onnx", x), ref, atol=1e-4)
    assert read_metadata(out / "encoder_compact_dense.tflite")["form"] == "compact-dense"
    with pytest.raises(ExportError, match="unknown encoder form.*'dense'.*valid"):
        export_rung(run, "selected", forms=("dense",), out_dir=tmp_path / "x")
    with pytest.raises(ExportError, match="not both"):
        from entropi.export import export_encoder

        export_encoder(*load_rung(run, 1), tmp_path / "y", compact=True, forms=("compact",))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_ensure_export_reuses_and_bundle_rung(tmp_path, monkeypatch):
    from entropi.device import load_bundle
    from entropi.host.deployment import rung_export as host_bundle

    rundir = write_run(tmp_path / "run")
    run = RunDir(rundir)
    run.write_json(run.target_classes, ["cat", "dog"])
    out, info = ensure_export(rundir, formats=("onnx",), forms=("sparse",))
    assert out == run.export and set(info["files"]) == {"encoder.onnx"}
    assert info["provenance"]["rung_index"] == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(host_bundle, "export_encoder", no_export)
    assert ensure_export(run, 1, formats=["onnx"], forms=["sparse"]) == (out, info)
    path = bundle_rung(rundir, tmp_path / "bundle", form="sparse", formats=("onnx",))
    b = load_bundle(path, prefer=("onnx",))
    assert b.class_names == ["cat", "dog"] and b.feature_dim == 256
    assert b.manifest["alpha"] == info["provenance"]["alpha"]
    assert b.manifest["provenance"]["export"] == {"encoder.onnx": info["files"]["encoder.onnx"]}
    with pytest.raises(ExportError, match="form must be one of"):
        bundle_rung(rundir, tmp_path / "b2", form="dense")
    monkeypatch.undo()
    # another form: exported again with the forms the export had, so both bundle from it
    path = bundle_rung(rundir, tmp_path / "b4", form="compact-dense", formats=("onnx",))
    assert set(load_bundle(path).manifest["encoders"]) == {"encoder_compact_dense.onnx"}
    _, info = ensure_export(run, 1, formats=["onnx"], forms=["sparse"])  # reused
    assert info["forms"] == ["sparse", "compact-dense"]
    _, info = ensure_export(run, 1, formats=["onnx"], forms=["compact"])  # missing: re-exported
    assert info["forms"] == ["sparse", "compact", "compact-dense"]  # with the forms it had
    assert set(info["files"]) == {
        "encoder.onnx", "encoder_compact.onnx", "encoder_compact_dense.onnx"
    }  # fmt: skip
    with pytest.raises(ExportError, match="unknown export format"):
        bundle_rung(rundir, tmp_path / "b3", form="sparse", formats=("coreml",))
