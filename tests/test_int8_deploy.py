"""int8 deployment: sparse int8 storage, int8 files in the export registry, int8 bundles on the
device, the flash / RAM footprint and the fit rule of `entropi select --flash --ram`.

References: the dense int8 weights and the LiteRT interpreter / onnxruntime outputs of the same
file before sparsification (sparse storage must change nothing: exact equality), the float
PyTorch encoder (int8 features: mean cosine >= 0.99 on images, the scale-aware bound the export
enforces; the per-layer rounding analysis is in tests/test_export_int8.py), the export layer's
own int8 runner (the device's quantize / dequantize must give the same features: one int8 step
of the output scale at most), hand-computed activation sizes and hand-made deployment tables.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from synthetic import fake_rung_meta, synthetic_encoder

from entropi.device.bundle import load_bundle, write_bundle
from entropi.device.errors import BundleError
from entropi.export import ExportError, VerificationError, export_encoder, export_onnx
from entropi.export.fold import fold_batchnorm
from entropi.export.footprint import tflite_footprint, tflite_latency_ms
from entropi.export.quantize import (
    onnx_int8_weights,
    onnx_qdq_bytes,
    run_onnx_qdq,
    run_tflite_int8,
    sparsify_onnx_int8,
    tflite_int8_bytes,
    tflite_int8_weights,
)
from entropi.export.tflite_export import convert_tflite, sparsify_tflite
from entropi.host.deployment.fit import DeployError, fit_rule, parse_limit
from entropi.host.run.config import ConfigError, config_from_dict

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("onnxruntime")

SHAPE = (3, 32, 32)


def inputs(n, seed):
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def pixels(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sparse_encoder():
    """smallnet with 5 % of every conv's weights kept at random: every layer below the density
    (1/9) where ONNX sparse storage pays, and none pruned entirely."""
    torch.set_num_threads(1)
    enc = synthetic_encoder("smallnet", alpha=1.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(torch.rand(m.weight.shape, generator=gen) < 0.05)
    return enc


@pytest.fixture(scope="module")
def int8_tflite(sparse_encoder):
    data, info = tflite_int8_bytes(sparse_encoder, inputs(16, 0), input_shape=SHAPE)
    return data, info


# --- sparse int8 storage -----------------------------------------------------------------------


def test_sparse_int8_tflite_reads_back_and_runs_identically(int8_tflite):
    dense, _ = int8_tflite
    sparse, stats = sparsify_tflite(dense, sparse=True)
    assert stats.tensors == 4 and len(sparse) < 0.5 * len(dense)
    wd, ws = tflite_int8_weights(dense), tflite_int8_weights(sparse)
    assert [w["sparse"] for w in wd] == [False] * len(wd)
    assert sum(w["sparse"] for w in ws) == stats.tensors
    for a, b in zip(wd, ws, strict=True):
        assert a["q"].dtype == b["q"].dtype == np.int8
        np.testing.assert_array_equal(a["q"], b["q"])
        np.testing.assert_array_equal(a["scale"], b["scale"])
    x = inputs(4, 1)
    np.testing.assert_array_equal(run_tflite_int8(dense, x), run_tflite_int8(sparse, x))


def test_sparse_int8_onnx_reads_back_and_runs_identically(sparse_encoder):
    folded = fold_batchnorm(sparse_encoder)
    float_bytes, _ = export_onnx(folded, torch.zeros(1, *SHAPE), sparse=True, metadata={})
    dense, _ = onnx_qdq_bytes(float_bytes, inputs(16, 0))
    sparse, stats = sparsify_onnx_int8(dense)
    model = onnx.load_from_string(sparse)
    assert stats.tensors == len(model.graph.sparse_initializer) == 4  # smallnet's four convs
    assert all(
        sp.values.data_type == onnx.TensorProto.INT8 for sp in model.graph.sparse_initializer
    )
    assert len(sparse) < 0.6 * len(dense)
    for a, b in zip(onnx_int8_weights(dense), onnx_int8_weights(sparse), strict=True):
        np.testing.assert_array_equal(a["q"], b["q"])
    x = inputs(4, 1)
    np.testing.assert_array_equal(run_onnx_qdq(dense, x), run_onnx_qdq(sparse, x))


def test_onnx_int8_dense_weights_stay_dense():
    """Above density 1/9 the int64 indices of an ONNX sparse tensor cost more than they save."""
    enc = synthetic_encoder("smallnet", alpha=1.0, seed=0)
    float_bytes, _ = export_onnx(
        fold_batchnorm(enc), torch.zeros(1, *SHAPE), sparse=True, metadata={}
    )
    dense, _ = onnx_qdq_bytes(float_bytes, inputs(4, 0))
    _, stats = sparsify_onnx_int8(dense)
    assert stats.tensors == 0


# --- the export registry -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_export(sparse_encoder, tmp_path_factory):
    enc = synthetic_encoder("smallnet", alpha=0.2, seed=0)
    out = tmp_path_factory.mktemp("int8") / "export"
    info = export_encoder(
        enc,
        fake_rung_meta(enc, "smallnet"),
        out,
        verify_images=pixels(8, 1),
        quantize="int8",
        calibration_images=pixels(16, 0),
    )
    return enc, out, info


def test_int8_files_in_export_json(int8_export):
    enc, out, info = int8_export
    names = {"encoder.onnx", "encoder.tflite", "encoder_int8.onnx", "encoder_int8.tflite"}
    assert set(info["files"]) == names
    assert {p.name for p in out.iterdir()} == names | {"export.json"}
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(info))
    q = info["quantization"]
    assert q["dtype"] == "int8" and q["calibration_images"] == 16 and q["checked_images"] == 8
    for name in names:
        f = info["files"][name]
        if "_int8" not in name:
            continue
        assert f["dtype"] == "int8"
        assert f["feature_error"]["mean_cos"] >= 0.99 and f["feature_error"]["n"] == 8
        assert f["zeros"]["zeros_lost"] == 0 and f["zeros"]["float_zeros"] > 0
        if name.endswith(".tflite"):
            assert f["sparse_tensors"] >= 1
    tfl = info["files"]["encoder_int8.tflite"]["quantization"]
    assert tfl["input"]["dtype"] == tfl["output"]["dtype"] == "int8"
    assert tfl["input"]["scale"] > 0
    # at most 35 % of the dense float32 weights, and smaller than the sparse float32 file
    int8_bytes = info["files"]["encoder_int8.tflite"]["bytes"]
    assert int8_bytes <= 0.35 * info["dense_bytes"]
    assert int8_bytes < info["files"]["encoder.tflite"]["bytes"]


def test_int8_features_against_pytorch(int8_export):
    """Independent of the export's own check: the float PyTorch encoder on fresh images."""
    from entropi.export import images_to_inputs
    from entropi.export.quantize import int8_feature_error
    from entropi.export.verify import torch_features

    enc, out, info = int8_export
    x = images_to_inputs(pixels(6, 7), info["provenance"]["normalization"])
    ref = torch_features(enc, x)
    for name, run in (
        ("encoder_int8.tflite", run_tflite_int8),
        ("encoder_int8.onnx", run_onnx_qdq),
    ):
        err = int8_feature_error(ref, run(out / name, x))
        assert err["mean_cos"] >= 0.99, name
        assert err["max_rel"] <= 0.1, name


def test_int8_refused_below_min_cosine(tmp_path):
    enc = synthetic_encoder("smallnet", alpha=0.2, seed=0)
    out = tmp_path / "export"
    with pytest.raises(VerificationError, match="mean cosine"):
        export_encoder(
            enc,
            fake_rung_meta(enc, "smallnet"),
            out,
            formats=["tflite"],
            verify_images=pixels(4, 1),
            quantize="int8",
            calibration_images=pixels(4, 0),
            min_cosine=1.0,  # no int8 file reaches it
        )
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no temporary folder left either


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantize": "int4"}, "unknown quantize dtype 'int4'; valid: \\['none', 'int8'\\]"),
        ({"quantize": "int8"}, "needs calibration images"),
        (
            {"quantize": "int8", "calibration_images": np.zeros((0, 32, 32, 3), np.uint8)},
            "needs calibration images",
        ),
        (
            {"quantize": "int8", "calibration_images": pixels(2, 0), "min_cosine": 2.0},
            "min_cosine must be a number in \\[-1, 1\\]",
        ),
        (
            {"quantize": "int8", "calibration_images": np.zeros((2, 16, 16, 3), np.uint8)},
            "calibration images are 16x16",
        ),
    ],
)
def test_bad_quantize_arguments(kwargs, message, tmp_path):
    enc = synthetic_encoder("smallnet", alpha=1.0, seed=0)
    with pytest.raises(ExportError, match=message):
        export_encoder(enc, fake_rung_meta(enc, "smallnet"), tmp_path / "e", **kwargs)


# --- int8 bundles on the device ----------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_bundle(int8_export, tmp_path_factory):
    enc, out, info = int8_export
    name = "encoder_int8.tflite"
    path = tmp_path_factory.mktemp("bundle") / "b"
    write_bundle(
        path,
        encoder_files={
            name: out / name,
            "encoder_int8.onnx": out / "encoder_int8.onnx",
        },
        encoder_quantization={
            name: info["files"][name]["quantization"],
            "encoder_int8.onnx": info["files"]["encoder_int8.onnx"]["quantization"],
        },
        input_shape=SHAPE,
        normalization=info["provenance"]["normalization"],
        feature_dim=256,
    )
    return path, out, info


def test_device_applies_the_manifest_quantization(int8_bundle):
    path, out, info = int8_bundle
    bundle = load_bundle(path)
    meta = bundle.manifest["encoders"]["encoder_int8.tflite"]
    assert meta["dtype"] == "int8"
    assert (
        meta["quantization"]["input"]["zero_point"]
        == info["files"]["encoder_int8.tflite"]["quantization"]["input"]["zero_point"]
    )
    runner = bundle.encoder()  # also replays check.npz
    x = inputs(5, 3)
    reference = run_tflite_int8(out / "encoder_int8.tflite", x)
    step = meta["quantization"]["output"]["scale"]
    assert np.max(np.abs(runner(x) - reference)) <= step * (1 + 1e-6)
    onnx_bundle = load_bundle(path, prefer=("onnx",))
    assert (
        onnx_bundle.manifest["encoders"]["encoder_int8.onnx"]["quantization"]["input"]["dtype"]
        == "float32"
    )
    np.testing.assert_allclose(
        onnx_bundle.encoder()(x), run_onnx_qdq(out / "encoder_int8.onnx", x), atol=1e-6
    )


def _rewrite_manifest(path, edit):
    from entropi.device.bundle import sha256_file  # noqa: F401  (manifest checksums untouched)

    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_that_disagrees_with_its_file_is_refused(int8_bundle, tmp_path):
    import shutil

    src, _, _ = int8_bundle
    name = "encoder_int8.tflite"

    def wrong_scale(m):
        m["encoders"][name]["quantization"]["input"]["scale"] *= 2

    def no_quantization(m):
        del m["encoders"][name]["quantization"]

    def bad_zero_point(m):
        m["encoders"][name]["quantization"]["output"]["zero_point"] = 300

    for edit, message in (
        (wrong_scale, "input quantization .* is not the file's"),
        (no_quantization, "gives no quantization"),
        (bad_zero_point, "zero_point"),
    ):
        path = tmp_path / edit.__name__
        shutil.copytree(src, path)
        _rewrite_manifest(path, edit)
        with pytest.raises(BundleError, match=message):
            load_bundle(path).encoder()


def test_write_bundle_refuses_quantization_of_unknown_files(int8_export, tmp_path):
    _, out, info = int8_export
    with pytest.raises(BundleError, match="not in encoder_files"):
        write_bundle(
            tmp_path / "b",
            encoder_files={"encoder.onnx": out / "encoder.onnx"},
            encoder_quantization={"other.tflite": {}},
            input_shape=SHAPE,
            normalization=info["provenance"]["normalization"],
            feature_dim=256,
        )


# --- footprint ---------------------------------------------------------------------------------


def test_activation_peak_by_hand():
    """One 3x3 conv, 3 -> 4 channels on 8 x 8: litert-torch's graph is TRANSPOSE (NCHW ->
    NHWC), CONV_2D, TRANSPOSE back. Live float32 bytes per op: in 768 + transposed 768; 768 +
    conv out 1024; 1024 + out 1024 = 2048 (the peak, at the last transpose)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    data = convert_tflite(conv, torch.zeros(1, 3, 8, 8))
    from ai_edge_litert.interpreter import Interpreter

    ops = [o["op_name"] for o in Interpreter(model_content=data)._get_ops_details()]
    assert ops == ["TRANSPOSE", "CONV_2D", "TRANSPOSE"]
    fp = tflite_footprint(data)
    assert fp["activation_peak_bytes"] == 2048
    assert fp["densified_bytes"] == 0 and fp["file_bytes"] == len(data)


def test_sparse_file_densifies_in_ram(int8_tflite):
    dense, _ = int8_tflite
    sparse, _ = sparsify_tflite(dense, sparse=True)
    fd, fs = tflite_footprint(dense), tflite_footprint(sparse)
    assert fd["densified_bytes"] == 0
    assert fs["densified_bytes"] == sum(
        w["q"].size for w in tflite_int8_weights(sparse) if w["sparse"]
    )
    assert fs["activation_peak_bytes"] == fd["activation_peak_bytes"]


def test_footprint_of_garbage():
    with pytest.raises(ExportError, match="not a readable TFLite file"):
        tflite_footprint(b"\x00" * 64)


def test_latency_of_a_file(int8_tflite):
    """A positive finite median (its size is never asserted: a shared machine), clear errors."""
    dense, _ = int8_tflite
    ms = tflite_latency_ms(dense, repeats=3)
    assert math.isfinite(ms) and ms > 0
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        tflite_latency_ms(dense, repeats=0)
    with pytest.raises(ExportError, match="cannot load the TFLite file"):
        tflite_latency_ms(b"\x00" * 64)


# --- the fit rule ------------------------------------------------------------------------------


def row(rung, flash, ram, form="compact", dtype="float32"):
    return {"rung": rung, "form": form, "dtype": dtype, "flash_bytes": flash, "ram_bytes": ram}


TABLE = [
    row(0, 900, 500),
    row(0, 300, 500, dtype="int8"),
    row(1, 600, 400),
    row(1, 200, 350, dtype="int8"),
    row(2, 250, 300),
    row(2, 100, 250, dtype="int8"),
    row(3, 80, None),  # its head does not fit the device budget
]
VALUES = [0.9, 0.8, 0.5, 0.99]  # higher is better; rung 3 is best but can never fit


def test_fit_rule_picks_the_best_fitting_rung_in_its_smallest_row():
    assert fit_rule(TABLE, VALUES)["rung"] == 0  # no limits: the criterion's pick
    p = fit_rule(TABLE, VALUES, flash=300 * 1)
    assert (p["rung"], p["dtype"], p["flash_bytes"]) == (0, "int8", 300)
    p = fit_rule(TABLE, VALUES, flash=280)
    assert (p["rung"], p["dtype"]) == (1, "int8") and p["fits"] == [1, 2]
    p = fit_rule(TABLE, VALUES, flash=280, ram=300)
    assert (p["rung"], p["dtype"]) == (2, "int8")
    assert fit_rule(TABLE, [0.5, 0.5, 0.5, 0.5], flash=1000)["rung"] == 0  # ties: denser
    assert fit_rule(TABLE, [float("nan"), 0.1, 0.2, 0.3])["rung"] == 2  # NaN never wins


def test_fit_rule_names_the_smallest_need():
    with pytest.raises(
        DeployError, match=r"smallest flash need is 80 B \(rung 3, compact float32\)"
    ):
        fit_rule(TABLE, VALUES, flash=50)
    with pytest.raises(DeployError, match=r"smallest RAM need 250 B \(rung 2, compact int8\)"):
        fit_rule(TABLE, VALUES, ram=100)
    with pytest.raises(DeployError, match="no rung's head training fits"):
        fit_rule([row(0, 10, None)], [1.0])
    # both limits: also the nearest row within each one (here the flash one alone is missed)
    with pytest.raises(DeployError) as e:
        fit_rule(TABLE, VALUES, flash=90, ram=260)
    assert str(e.value).endswith(
        "; within RAM 260 B the smallest flash need is 100 B (rung 2, compact int8)"
    )
    with pytest.raises(DeployError) as e:
        fit_rule(TABLE, VALUES, flash=250, ram=240)
    assert str(e.value).endswith(
        "smallest RAM need 250 B (rung 2, compact int8); within flash 250 B the smallest RAM "
        "need is 250 B (rung 2, compact int8)"
    )


@pytest.mark.parametrize("text", ["abc", "-1KB", "0", "12 parsecs", "5TB"])
def test_bad_limits(text):
    with pytest.raises(DeployError, match="--flash"):
        parse_limit(text, "--flash")


def test_limits_parse():
    assert parse_limit("300KB", "x") == 300 * 1024 and parse_limit(None, "x") is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"export": {"quantize": "int4"}}, "export.quantize = 'int4' is not a known"),
        ({"export": {"calibration_images": 0}}, "export.calibration_images"),
        ({"export": {"min_cosine": 1.5}}, "export.min_cosine"),
        ({"deploy": {"flash": "lots"}}, "deploy.flash"),
        ({"deploy": {"ram": 256}}, "deploy.ram"),
        ({"deploy": {"rom": "1MB"}}, "rom"),
    ],
)
def test_bad_config(section, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(section)


def test_deploy_config_limits():
    cfg = config_from_dict({"deploy": {"flash": "300KB"}})
    assert cfg.deploy.limits() == {"flash": 300 * 1024, "ram": None}


# --- end to end: `entropi run` with [export] quantize = "int8", then select --flash ------------


@pytest.fixture(scope="module")
def int8_run(image_folder, tmp_path_factory):
    from test_pipeline import tiny_config

    from entropi.host.run import pipeline

    torch.set_num_threads(1)
    cfg = tiny_config(image_folder, alpha_min=0.5)
    cfg.export.formats = ["tflite"]
    cfg.export.quantize = "int8"
    cfg.export.calibration_images = 8
    out = tmp_path_factory.mktemp("run") / "r"
    results = pipeline.run_all(cfg, out, argv=["entropi", "run"])
    return cfg, out, results


@pytest.mark.slow
def test_run_exports_and_bundles_int8(int8_run):
    cfg, out, results = int8_run
    files = results["export"]["files"]
    assert {"encoder_compact_int8.tflite", "encoder_int8.tflite"} <= set(files)
    assert files["encoder_compact_int8.tflite"]["mean_cos"] >= 0.99
    down = results["export"]["downstream"]["encoder_compact_int8.tflite"]
    assert 0 <= down["int8_accuracy"] <= 1 and down["test_images"] > 0
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert set(manifest["encoders"]) == {"encoder_compact_int8.tflite"}
    assert manifest["encoders"]["encoder_compact_int8.tflite"]["dtype"] == "int8"
    dev = results["device"]
    assert dev["peak_bytes"] <= dev["budget_bytes"] and 0 <= dev["accuracy"] <= 1
    report = (out / "report.md").read_text()
    assert "int8 mean cos" in report and "probe acc, int8 features" in report


@pytest.mark.slow
def test_select_fits_flash(int8_run, capsys, tmp_path):
    from entropi.host.cli import main
    from entropi.host.run.rundir import RunDir
    from entropi.host.run.stages import stage_select

    cfg, out, _ = int8_run
    run = RunDir(out)
    free = stage_select(cfg, run)
    assert free["deployment"] is None
    dense_need = min(r["flash_bytes"] for r in _table(cfg, run) if r["rung"] == 0)
    limit = dense_need - 1  # rung 0 fits in no form and no dtype
    res = stage_select(cfg, run, flash=limit)
    dep = res["deployment"]
    assert dep["pick"]["flash_bytes"] <= limit and 0 not in dep["fitting_rungs"]
    assert res["selected_index"] == dep["pick"]["rung"] != 0
    forms = ("compact", "sparse", "compact-dense")
    assert {(r["rung"], r["form"], r["dtype"]) for r in dep["table"]} == {
        (i, f, d) for i in (0, 1) for f in forms for d in ("float32", "int8")
    }
    assert "## Deployment" in (out / "report.md").read_text()
    # `entropi bundle` of the selected rung follows the picked row's form and dtype
    from entropi.export.formats import ENCODER_FORMS, FORMATS

    pick = dep["pick"]
    capsys.readouterr()
    argv = ["bundle", "--run", str(out), "--format", "tflite", "--out", str(tmp_path / "b")]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    name = FORMATS["tflite"].filename(ENCODER_FORMS[pick["form"]].stem, pick["dtype"])
    assert set(manifest["encoders"]) == {name}
    assert manifest["provenance"]["form"] == pick["form"]
    assert f"{pick['form']} {pick['dtype']} (the form and dtype that fit" in capsys.readouterr().out
    assert main([*argv[:-1], str(tmp_path / "c"), "--form", "sparse", "--quantize", "none"]) == 0
    assert set(json.loads((tmp_path / "c" / "manifest.json").read_text())["encoders"]) == {
        "encoder.tflite"
    }
    assert main(["select", str(out), "--flash", "1KB"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # the log lines of the run, then the one-line error
    assert "no rung fits flash 1.0 KB: the smallest flash need is" in err.strip().splitlines()[-1]
    assert main(["select", str(out), "--flash", "lots"]) == 2


@pytest.mark.slow
def test_compact_dense_rows_trade_flash_for_ram(int8_run):
    """The compact-dense file of a pruned rung stores every weight: no DENSIFY, so its RAM is
    the activations and the head plan alone, below the compact (sparse-stored) file's, for a
    larger file; a RAM limit between the two fits the rung only in its compact-dense row."""
    from entropi.host.deployment.fit import fit_rule
    from entropi.host.run.rundir import RunDir

    cfg, out, _ = int8_run
    rows = {(r["rung"], r["form"], r["dtype"]): r for r in _table(cfg, RunDir(out))}
    for dtype in ("float32", "int8"):
        dense, sparse = rows[1, "compact-dense", dtype], rows[1, "compact", dtype]
        assert dense["densified_bytes"] == 0 < sparse["densified_bytes"]
        assert dense["ram_bytes"] == (
            dense["activation_peak_bytes"] + dense["head_train_bytes"]
        )  # fmt: skip
        assert (
            dense["ram_bytes"] < sparse["ram_bytes"] and dense["file_bytes"] > sparse["file_bytes"]
        )
        assert dense["activation_peak_bytes"] == sparse["activation_peak_bytes"]
    limit = rows[1, "compact-dense", "float32"]["ram_bytes"]
    below = [r for r in rows.values() if r["rung"] == 1 and r["ram_bytes"] > limit]
    assert {r["form"] for r in below} >= {"compact", "sparse"}
    pick = fit_rule(list(rows.values()), [0.0, 1.0], ram=limit)  # the criterion rates rung 1 best
    assert (pick["rung"], pick["form"]) == (1, "compact-dense") and pick["ram_bytes"] <= limit


@pytest.mark.slow
def test_a_run_with_a_ram_limit_bundles_the_row_that_fits(
    int8_run, image_folder, tmp_path, monkeypatch
):
    """`entropi run` with [deploy] ram at rung 1's compact-dense need (float32 rows only, to
    keep it short): the pick fits, and the export and the device bundle hold that row's form,
    whatever [export] form says."""
    from test_pipeline import tiny_config

    from entropi.export.formats import ENCODER_FORMS, FORMATS
    from entropi.host.run import pipeline
    from entropi.host.run.rundir import RunDir

    cfg, out, _ = int8_run
    rows = [r for r in _table(cfg, RunDir(out)) if r["dtype"] == "float32"]
    limit = next(r["ram_bytes"] for r in rows if (r["rung"], r["form"]) == (1, "compact-dense"))
    monkeypatch.setattr("entropi.host.deployment.fit.DTYPES", ("float32",))  # the run's table
    cfg2 = tiny_config(image_folder, alpha_min=0.5)  # the same ladder as int8_run's
    cfg2.export.formats, cfg2.export.form, cfg2.deploy.ram = ["tflite"], "sparse", str(limit)
    results = pipeline.run_all(cfg2, tmp_path / "r", argv=["entropi", "run"])
    dep = results["deployment"]
    pick = dep["pick"]
    assert pick["ram_bytes"] <= limit and results["selected_index"] == pick["rung"]
    assert all(r["ram_bytes"] > limit for r in rows if r["rung"] not in dep["fitting_rungs"])
    assert dep["fitting_rungs"] == [0, 1]  # rung 1 fits only stored dense
    assert pick["form"] == "compact-dense"  # its smallest fitting row; [export] form is sparse
    name = FORMATS["tflite"].filename(ENCODER_FORMS[pick["form"]].stem, pick["dtype"])
    manifest = json.loads((tmp_path / "r" / "bundle" / "manifest.json").read_text())
    assert set(manifest["encoders"]) == {name} and name in results["export"]["files"]
    assert results["device"]["peak_bytes"] <= results["device"]["budget_bytes"]


def _table(cfg, run):
    from entropi.host.deployment.fit import deployment_table

    return deployment_table(cfg, run, dtypes=("float32", "int8"))


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_calibration_count(n):
    from entropi.host.deployment.rung_export import calibration_images

    with pytest.raises(ExportError, match="at least 1 image"):
        calibration_images(pixels(4, 0), n=n)


def test_calibration_set_is_a_seeded_draw():
    from entropi.host.deployment.rung_export import calibration_images

    x = pixels(50, 0)
    a, b = calibration_images(x, n=10, seed=3), calibration_images(x, n=10, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, calibration_images(x, n=10, seed=4))
    assert len(calibration_images(x, n=500)) == 50  # capped at what there is
    rows = {bytes(r) for r in x.reshape(50, -1)}
    assert all(bytes(r) in rows for r in a.reshape(10, -1))


class _Residual(torch.nn.Module):
    """conv -> relu -> conv, plus the input, then relu: ResNet's basic block without BN."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.nn.functional.relu(self.b(torch.nn.functional.relu(self.a(x))) + x)


def test_residual_add_is_int8():
    """torch 2.13's export drops the metadata litert-torch's quantizer finds adds by; without
    the fix the ADD stays float32 between DEQUANTIZE and QUANTIZE ops."""
    from ai_edge_litert.interpreter import Interpreter

    from entropi.export.quantize import tflite_float_ops

    torch.manual_seed(0)
    cal = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    data, info = tflite_int8_bytes(_Residual().eval(), cal, input_shape=(3, 8, 8))
    assert tflite_float_ops(data) == {}
    ops = [o["op_name"] for o in Interpreter(model_content=data)._get_ops_details()]
    assert "ADD" in ops and "DEQUANTIZE" not in ops and "QUANTIZE" not in ops
    assert info["input"]["dtype"] == info["output"]["dtype"] == "int8"


class _Sin(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.sin(self.conv(x))


def test_not_full_integer_is_refused():
    """An op TFLite has no int8 kernel for (SIN) stays float32: the file is refused, the op
    named."""
    cal = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ExportError, match="not full-integer: .*SIN x1"):
        tflite_int8_bytes(_Sin().eval(), cal, input_shape=(3, 8, 8))


class _SqueezeExcite(torch.nn.Module):
    """MobileNetV3's gate: mean -> conv -> relu -> conv -> hardsigmoid, times the input."""

    def __init__(self, ch: int = 8) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Conv2d(ch, 4, 1), torch.nn.Conv2d(4, ch, 1)

    def forward(self, x):
        s = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return x * torch.nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


def test_hardsigmoid_folds_into_its_conv_exactly():
    """hardsigmoid(conv(x)) -> hardtanh(conv'(x), 0, 1) with conv' = (W / 6, (b + 3) / 6): the
    same outputs (float32 rounding), the encoder's own parameters untouched; a hardsigmoid not
    fed by a conv is left as it is."""
    from entropi.export.quantize import _hardsigmoid_into_conv

    torch.manual_seed(0)
    se = _SqueezeExcite().eval()
    with torch.no_grad():
        se.fc2.bias.uniform_(-4, 4)  # both clamps and the linear part are reached
    before = {k: v.clone() for k, v in se.state_dict().items()}
    x = torch.randn(16, 8, 5, 5) * 3
    graph = torch.export.export(se, (x[:1],)).module()
    assert _hardsigmoid_into_conv(graph) == 1
    targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert "aten.hardsigmoid.default" not in targets and "aten.hardtanh.default" in targets
    with torch.no_grad():
        got = torch.cat([graph(x[i : i + 1]) for i in range(len(x))])  # exported at batch 1
        torch.testing.assert_close(got, se(x), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in se.state_dict().items())
    free = torch.export.export(torch.nn.Hardsigmoid(), (x[:1],)).module()
    assert _hardsigmoid_into_conv(free) == 0


@pytest.mark.slow
def test_mobilenetv3_is_full_integer_and_its_sparse_file_loads():
    """MobileNetV3-small (hardswish, squeeze-excitation gates, a final linear) converts with no
    float op left, its int8 features match the float encoder, and its sparse-stored file loads
    in the interpreter (the int8 FULLY_CONNECTED weight stays dense: XNNPACK cannot prepare it
    behind a DENSIFY) and gives the same features as the dense-stored one."""
    from entropi.export.quantize import int8_feature_error, run_tflite_int8, tflite_float_ops

    enc = synthetic_encoder("mobilenetv3_small", alpha=0.3, seed=0)
    folded = fold_batchnorm(enc)
    rng = np.random.default_rng(0)
    cal = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    data, _ = tflite_int8_bytes(folded, cal, input_shape=(3, 32, 32))
    assert tflite_float_ops(data) == {}
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = folded(torch.from_numpy(x)).numpy()
    err = int8_feature_error(ref, run_tflite_int8(data, x))
    assert err["mean_cos"] >= 0.99, err
    sparse, stats = sparsify_tflite(data)
    assert stats.tensors > 0 and len(sparse) < len(data)
    np.testing.assert_array_equal(run_tflite_int8(sparse, x), run_tflite_int8(data, x))


def test_an_int8_export_is_reused_only_for_the_same_calibration(tmp_path, monkeypatch):
    """ensure_export keys an int8 export by its calibration set and min_cosine too: another
    calibration draw or threshold exports again instead of shipping the old files."""
    from test_export_rung import write_run

    from entropi.export.exporter import calibration_digest
    from entropi.host.deployment import rung_export as host_bundle
    from entropi.host.deployment.rung_export import ensure_export
    from entropi.host.run.rundir import RunDir

    run = RunDir(write_run(tmp_path / "run"))
    calls = []
    real = host_bundle.export_encoder
    monkeypatch.setattr(
        host_bundle, "export_encoder", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    kw = {
        "formats": ("onnx",),
        "forms": ["sparse"],
        "quantize": "int8",
        "verify_images": pixels(8, 9),
    }
    a, b = pixels(8, 1), pixels(8, 2)
    _, info = ensure_export(run, 1, calibration=a, min_cosine=0.9, **kw)
    assert info["quantization"]["calibration_sha256"] == calibration_digest(a)
    ensure_export(run, 1, calibration=a.copy(), min_cosine=0.9, **kw)
    assert calls == [1]  # the same images: reused
    _, info = ensure_export(run, 1, calibration=b, min_cosine=0.9, **kw)
    assert calls == [1, 1] and info["quantization"]["calibration_sha256"] == calibration_digest(b)
    ensure_export(run, 1, calibration=b, min_cosine=0.5, **kw)
    assert calls == [1, 1, 1]
    assert calibration_digest(a) != calibration_digest(a[:4])  # the count is part of it
