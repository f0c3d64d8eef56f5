"""`entropi select --flash --ram` considers int8 on a float32 run, then `entropi bundle` follows
the pick (issue 23, items 1 and 6).

References: the run's own deployment table (the limit is set between the smallest int8 need and
the smallest float32 need, so only int8 rows fit), and the export layer's int8 feature error.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from entropi.host.cli import main
from entropi.host.run.rundir import RunDir

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def float_run(image_folder, tmp_path_factory):
    """A tiny two-rung run with no int8 anywhere in its config, not exported."""
    from test_pipeline import tiny_config

    from entropi.host.run import pipeline

    torch.set_num_threads(1)
    cfg = tiny_config(image_folder, alpha_min=0.5)
    cfg.export.enabled = False
    cfg.export.calibration_images = 8
    assert cfg.export.quantize == "none"
    out = tmp_path_factory.mktemp("run") / "r"
    pipeline.run_all(cfg, out, argv=["entropi", "run"])
    return cfg, out


@pytest.mark.slow
def test_only_an_int8_row_fits_and_select_picks_it(float_run, tmp_path, capsys):
    from entropi.export.formats import ENCODER_FORMS, FORMATS
    from entropi.host.deployment.fit import deployment_table

    cfg, out = float_run
    rows = deployment_table(cfg, RunDir(out))
    assert {r["dtype"] for r in rows} == {"float32", "int8"}  # int8 although quantize = none
    assert all(r["int8_mean_cos"] >= cfg.export.min_cosine for r in rows if r["dtype"] == "int8")
    limit = min(r["flash_bytes"] for r in rows if r["dtype"] == "float32") - 1
    assert any(r["flash_bytes"] <= limit for r in rows if r["dtype"] == "int8")
    capsys.readouterr()
    assert main(["select", str(out), "--flash", str(limit)]) == 0
    printed = capsys.readouterr().out
    pick = json.loads((out / "results.json").read_text())["deployment"]["pick"]
    assert pick["dtype"] == "int8" and pick["flash_bytes"] <= limit
    assert f"as {pick['form']} int8" in printed
    # `entropi bundle` with no flags bundles that row: the int8 file of the measured format
    assert main(["bundle", "--run", str(out), "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    name = FORMATS["tflite"].filename(ENCODER_FORMS[pick["form"]].stem, "int8")
    assert set(manifest["encoders"]) == {name}
    assert manifest["encoders"][name]["dtype"] == "int8"
    assert "(the form and dtype that fit the device, from `entropi select`" in printed
    # asked for int8 by hand: the message does not say select chose the dtype
    argv = ["bundle", "--run", str(out), "--quantize", "int8", "--out", str(tmp_path / "c")]
    assert main([*argv, "--min-cosine", "0.5", "--calibration-images", "4"]) == 0
    printed = capsys.readouterr().out
    assert "(the form that fit the device, from `entropi select`" in printed
    assert "dtype that fit" not in printed
    quant = json.loads((out / "export" / "export.json").read_text())["quantization"]
    assert (quant["calibration_images"], quant["min_cosine"]) == (4, 0.5)  # the flags were used


@pytest.mark.slow
def test_int8_rows_left_out_say_why(float_run, monkeypatch, capsys):
    """No target to calibrate on: the int8 rows are left out, each logged with its reason, and
    the float32 rows stay; an int8 row below [export] min_cosine is left out the same way."""
    from entropi.export import ExportError
    from entropi.host.deployment import fit
    from entropi.host.deployment import rung_export as bundle
    from entropi.host.deployment.fit import deployment_table

    cfg, out = float_run
    other = copy.deepcopy(cfg)
    other.export.calibration_images = 5  # another calibration set: int8 rows not cached
    gone = _raise(ExportError("the target folder is gone"))
    monkeypatch.setattr(bundle, "run_target", gone)
    monkeypatch.setattr(fit, "run_target", gone)  # the table's own binding of it
    capsys.readouterr()
    rows = deployment_table(other, RunDir(out), forms=("compact",))
    assert {(r["rung"], r["dtype"]) for r in rows} == {(0, "float32"), (1, "float32")}
    err = capsys.readouterr().err
    for i in (0, 1):
        assert (
            f"left out rung {i} compact int8: the run's target images (int8 calibration) "
            "cannot be loaded: the target folder is gone" in err
        )
    strict = copy.deepcopy(cfg)
    strict.export.min_cosine = 1.0
    rows = deployment_table(strict, RunDir(out), forms=("compact",))  # cached int8 rows
    assert {r["dtype"] for r in rows} == {"float32"}
    assert "< [export] min_cosine 1.0, so `entropi export` would refuse" in capsys.readouterr().err


def test_the_run_exports_the_picked_int8_row(float_run):
    """A run whose deployment pick is int8 exports that row's int8 files in its export stage
    (with their downstream cost), whatever [export] quantize says; the ONNX int8 weights have 7
    bits, so onnxruntime's U8S8 kernels cannot saturate int16 on a CPU without VNNI."""
    from entropi.export.quantize import onnx_int8_weights
    from entropi.host.deployment.rung_export import run_target
    from entropi.host.run.stages import stage_export

    cfg, out = float_run
    run = RunDir(out)
    info = stage_export(cfg, run, run_target(run), 1, "compact", "int8")
    name = "encoder_compact_int8.onnx"  # tiny_config exports ONNX
    assert name in info["files"] and name in info["downstream"]
    assert info["files"][name]["feature_error"]["mean_cos"] >= cfg.export.min_cosine
    weights = onnx_int8_weights(run.export / name)
    assert weights and max(int(abs(w["q"].astype(int)).max()) for w in weights) <= 64


def test_resume_with_a_new_quantize_points_to_select(float_run, capsys):
    _, out = float_run
    argv = ["run", "--out", str(out), "--resume", "--set", "export.quantize=int8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "entropi select" in err and "entropi bundle" in err


def test_int8_flags_without_int8_are_refused(float_run, tmp_path, capsys):
    _, out = float_run
    argv = ["bundle", "--run", str(out), "--rung", "0", "--quantize", "none"]
    assert main([*argv, "--min-cosine", "0.9", "--out", str(tmp_path / "b")]) == 2
    assert "--min-cosine acts on int8 files only" in capsys.readouterr().err


def _raise(error: Exception):
    def fail(*args, **kwargs):
        raise error

    return fail
