"""A channel ladder end to end on a tiny image folder: ``[prune] method = "channel"``.

References: the rung record's widths against the rebuilt network's own layer shapes; alpha
against the prunable weights counted in the rebuilt network; the MCU form's file size and TFLM
arena against the dense rung's, measured by TFLite Micro itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_pipeline import tiny_config

pytest.importorskip("torch_pruning")

from entropi.export.rung import load_rung_file  # noqa: E402
from entropi.host.ladder.channels import channel_widths, prunable_count  # noqa: E402
from entropi.host.ladder.rungs import load_rung  # noqa: E402
from entropi.host.run import pipeline  # noqa: E402
from entropi.host.run.config import ConfigError, config_from_dict  # noqa: E402


@pytest.fixture(scope="module")
def channel_run(image_folder, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("channel") / "r"
    results = pipeline.run_all(tiny_config(image_folder, method="channel"), out)
    return out, results


def test_the_ladder_is_ever_smaller_dense_networks(channel_run):
    out, results = channel_run
    alphas = [r["alpha"] for r in results["rungs"]]
    assert alphas == pytest.approx([1.0, 0.5, 0.25, 0.125], rel=0.02)
    dense, _ = load_rung(out, 0)
    n = prunable_count(dense)
    previous = channel_widths(dense)
    for k in range(1, 4):
        encoder, info = load_rung(out, k)
        assert info.method == "channel" and info.n_prunable == n
        assert info.widths == channel_widths(encoder)  # the record rebuilds the network
        assert prunable_count(encoder) == info.nnz == pytest.approx(info.alpha * n, abs=1)
        assert all(
            a <= b
            for name, w in info.widths.items()
            for a, b in zip(w, previous[name], strict=True)
        )  # nested: no layer grows
        previous = info.widths
        with torch.no_grad():
            assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 256)
    # the run went on to select, export and train the device head on whatever it picked
    assert results["device"]["accuracy"] >= 0.0
    assert set(results["export"]["files"]) >= {"encoder.onnx"}


def test_a_magnitude_rung_stays_a_format_1_file(channel_run):
    out, _ = channel_run
    raw = torch.load(out / "rungs" / "rung_000.pt", weights_only=True)
    assert raw["format"] == 1 and "widths" not in raw
    raw = torch.load(out / "rungs" / "rung_002.pt", weights_only=True)
    assert raw["format"] == 2 and raw["method"] == "channel"
    assert load_rung_file(out / "rungs" / "rung_002.pt").info.widths == raw["widths"]


def test_an_unknown_method_is_refused_at_load(image_folder):
    with pytest.raises(ConfigError, match="prune.method"):
        tiny_config(image_folder, method="structured")
    cfg = tiny_config(image_folder, method="channel")
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))).prune.method == "channel"


def test_the_alpha_one_eighth_rung_is_a_fifth_of_the_dense_rung_on_a_microcontroller(
    channel_run, tmp_path
):
    pytest.importorskip("tflite_micro")
    pytest.importorskip("litert_torch")
    from entropi.export.mcu import mcu_export

    out, _ = channel_run
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    info = {}
    for k in (0, 3):
        encoder, _ = load_rung(out, k)
        info[k] = mcu_export(
            encoder,
            tmp_path / f"mcu{k}",
            input_shape=(3, 32, 32),
            verify_inputs=x[:4],
            calibration=x,
            dtype="int8",
        )
    assert info[3]["file_bytes"] <= 0.2 * info[0]["file_bytes"]
    assert info[3]["tflm_arena_bytes"] < info[0]["tflm_arena_bytes"]


def test_select_for_tflm_fits_what_tflm_measures(channel_run, capsys):
    """`entropi select --runtime tflm`: every row is the MCU form; the pick's flash is its file
    plus the head and its RAM the arena TFLite Micro measures for that very file plus the head
    plan; an impossible pair names the smallest need."""
    pytest.importorskip("tflite_micro")
    pytest.importorskip("litert_torch")
    import dataclasses

    from entropi.common.errors import EntropiError
    from entropi.export.mcu import mcu_tflite_bytes
    from entropi.export.tflm import tflm_arena_bytes
    from entropi.host import cli
    from entropi.host.run.rundir import open_run
    from entropi.host.run.stages import stage_select

    out, _ = channel_run
    cfg, run = open_run(None, out, resume=True)
    cfg = dataclasses.replace(cfg, deploy=dataclasses.replace(cfg.deploy, runtime="tflm"))
    results = stage_select(cfg, run, flash=256 * 1024, ram=256 * 1024)
    dep = results["deployment"]
    assert dep["runtime"] == "tflm" and {r["form"] for r in dep["table"]} == {"mcu"}
    pick = dep["pick"]
    assert pick["flash_bytes"] <= 256 * 1024 and pick["ram_bytes"] <= 256 * 1024
    # independently: the float MCU file of that rung, measured by TFLM here
    row = next(r for r in dep["table"] if r["rung"] == pick["rung"] and r["dtype"] == "float32")
    encoder, info = load_rung(out, pick["rung"])
    from entropi.export import compact_encoder, fold_batchnorm

    module = compact_encoder(fold_batchnorm(encoder), torch.zeros(1, 3, 32, 32))[0]
    data = mcu_tflite_bytes(module, "float32", (3, 32, 32))
    assert row["file_bytes"] == len(data)
    assert row["tflm_arena_bytes"] == tflm_arena_bytes(data)
    assert row["flash_bytes"] == len(data) + row["head_bytes"]
    assert row["ram_bytes"] == row["tflm_arena_bytes"] + row["head_train_bytes"]
    with pytest.raises(EntropiError, match="smallest flash need"):
        stage_select(cfg, run, flash=1024, ram=1024)
    run.lock.release()
    assert cli.main(["select", str(out), "--runtime", "tflm", "--flash", "1KB"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "smallest flash need" in errors[0]  # one line, no traceback


@pytest.mark.slow
def test_bundle_mcu_writes_what_a_firmware_links(channel_run, tmp_path, capsys):
    pytest.importorskip("tflite_micro")
    pytest.importorskip("litert_torch")
    from entropi.host import cli

    out, results = channel_run
    mcu = tmp_path / "mcu"
    argv = ["bundle", "--run", str(out), "--out", str(tmp_path / "b"), "--quantize", "int8"]
    assert cli.main([*argv, "--mcu", str(mcu), "--format", "tflite"]) == 0
    said = capsys.readouterr().out
    assert "microcontroller files written" in said and "arena" in said
    info = json.loads((mcu / "encoder" / "mcu.json").read_text())
    assert info["dtype"] == "int8" and info["layout"] == "NHWC"
    assert info["verification"]["tflm_vs_torch"]["mean_cos"] >= 0.99
    for name in ("model_data.c", "model_data.h", info["file"]):
        assert (mcu / "encoder" / name).is_file()
    header = (mcu / "encoder" / "model_data.h").read_text()
    assert f"#define ENTROPI_ARENA_BYTES {info['tflm_arena_bytes']}u" in header
    for name in ("head_trainer.c", "head_trainer.h", "head_plan.h", "README.md"):
        assert (mcu / "head_trainer" / name).is_file()
    # a second call refuses to replace without --overwrite, one line
    assert cli.main([*argv, "--mcu", str(mcu), "--overwrite", "--format", "tflite"]) == 0


def test_bundle_refuses_a_users_folder_before_any_export(
    channel_run, tmp_path, monkeypatch, capsys
):
    from entropi.host import cli
    from entropi.host.deployment import rung_export as bundle

    def no_export(*a, **k):
        raise AssertionError("exported before checking the output folder")

    monkeypatch.setattr(bundle, "ensure_export", no_export)
    monkeypatch.setattr(bundle, "load_rung", no_export)
    out, _ = channel_run
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):
        assert cli.main(["bundle", "--run", str(out), "--out", str(user), *extra]) == 2
    (user / "encoder").mkdir()
    (user / "encoder" / "notes.txt").write_text("keep")
    with pytest.raises(Exception, match="mcu.json"):
        bundle.mcu_package(out, user, overwrite=True)
    assert (user / "thesis.txt").read_text() == "keep"
    assert (user / "encoder" / "notes.txt").read_text() == "keep"


def test_a_size_aware_rule_picks_among_the_rungs_that_fit_by_flash(channel_run):
    """[select] rule = smallest_tied with every rung tied (a huge tie_se): the pick is the
    fitting rung whose fitting row has the least flash, and that row is the pick."""
    pytest.importorskip("tflite_micro")
    pytest.importorskip("litert_torch")
    import dataclasses

    from entropi.host.run.rundir import open_run
    from entropi.host.run.stages import stage_select

    out, _ = channel_run
    cfg, run = open_run(None, out, resume=True)
    try:
        cfg = dataclasses.replace(
            cfg,
            deploy=dataclasses.replace(cfg.deploy, runtime="tflm"),
            select=dataclasses.replace(cfg.select, rule="smallest_tied", tie_se=100.0),
        )
        dep = stage_select(cfg, run, flash=10 << 20, ram=10 << 20)["deployment"]
    finally:
        run.lock.release()
    smallest = min(dep["table"], key=lambda r: r["flash_bytes"])
    assert (dep["pick"]["rung"], dep["pick"]["dtype"]) == (smallest["rung"], smallest["dtype"])
    assert dep["pick"]["rung"] == 3  # the sparsest rung of the tiny ladder
