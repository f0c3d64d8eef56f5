"""A short run of every fuzzer (the property: accepted, or refused with an EntropiError, in
time), the regression cases they found, and a check that the runner does catch a crash."""

from __future__ import annotations

import numpy as np
import pytest

from entropi.benchmarks import fuzz
from entropi.host.run.config import ConfigError, config_from_dict, load_config, parse_override


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_fuzz_target_short_run_has_no_crash(target, tmp_path):
    r = fuzz.fuzz(target, seconds=4, seed=1, examples=40, folder=tmp_path)
    assert r["crashes"] == [], r["crashes"][0]["traceback"]
    assert r["inputs"] >= 20


class _Buggy(fuzz._Target):
    """Refuses most inputs cleanly; one input in 256 hits a bug."""

    def case(self, data):
        from hypothesis import strategies as st

        from entropi.device.errors import DataError

        if data.draw(st.integers(0, 255)) == 7:
            raise KeyError("a bug")
        raise DataError("clean refusal")


def test_the_runner_reports_a_crash_with_its_seed(tmp_path):
    r = fuzz.fuzz(_Buggy(), seconds=30, seed=0, examples=200, folder=tmp_path)
    assert len(r["crashes"]) == 1
    assert "KeyError" in r["crashes"][0]["exception"] and "seed" in r["crashes"][0]


# found by the config fuzzer
def test_config_regressions(tmp_path):
    with pytest.raises(ConfigError, match="must be a table of settings, got NoneType"):
        config_from_dict(None)
    p = tmp_path / "c.toml"
    p.write_bytes(b"\x80name = 1")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)
    p.write_text("a = " + "[" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(p)
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_override("pretrain.epochs=" + "[" * 100_000)
    p.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(ConfigError, match="is over 1048576 bytes"):
        load_config(p)


# found by the npz fuzzer: a zip whose central directory needs a newer zip version
def test_npz_of_an_unsupported_zip_version_is_a_data_error(tmp_path):
    import io

    import numpy as np

    from entropi.device.data import load_images
    from entropi.device.errors import DataError

    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((2, 4, 4, 3), np.uint8), y_train=np.array([0, 1]))
    raw = bytearray(buf.getvalue())
    raw[raw.rfind(b"PK\x01\x02") + 6] = 64  # "version needed to extract": 6.4
    (tmp_path / "v64.npz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="not a valid .npz .* zip file version 6.4"):
        load_images(tmp_path / "v64.npz", "train")


# --- a link planted where entropi writes in a run folder is refused, never written through -------


def _planted(tmp_path, name: str):
    """A scored run folder whose ``name`` (a folder or file entropi writes) is a symbolic link to
    a folder outside it; ``(cfg, run, outside)``."""
    import shutil

    from entropi.benchmarks.fuzz import scored_run

    cfg, run = scored_run(tmp_path / "run", 2, probe={"epochs": 1, "repeats": 1})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("mine")
    shutil.copy(run.rung(0), tmp_path / "rung_000.pt")
    if name in ("ladder.json", "config.toml"):
        return cfg, run, outside
    target = run.root / name
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(outside / "notes.txt" if name == "progress.log" else outside)
    return cfg, run, outside


def _score(cfg, run, tmp_path):
    from entropi.host.run.rundata import TargetData
    from entropi.host.run.stages import stage_score

    y = np.arange(24) % 3  # the labels the scored run's features belong to
    x = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    for i in range(2):
        run.score(i).unlink(missing_ok=True)
    stage_score(cfg, run, TargetData(x, y, x, y, ["a", "b", "c"]), "cpu")


def _tiny_bundle(folder):
    from entropi.benchmarks.fuzz import _tiny_onnx
    from entropi.device.bundle import write_bundle

    _tiny_onnx(folder / "enc.onnx")
    return write_bundle(
        folder / "tiny_bundle",
        encoder_files={"encoder.onnx": folder / "enc.onnx"},
        input_shape=[3, 8, 8],
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
        feature_dim=3,
        class_names=["a", "b"],
    )


def _train_head(cfg, run, tmp_path):
    from entropi.device.app import train_on_bundle
    from entropi.device.config import TrainConfig

    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
             y_train=np.arange(8) % 2)  # fmt: skip
    train_on_bundle(_tiny_bundle(tmp_path), data, run.head, TrainConfig(epochs=1, budget="1MB"))


def _save_rung(cfg, run, tmp_path):
    """stage_prune's write of a rung."""
    from entropi.export.rung import load_rung_file, save_rung

    save_rung(run.rung(0), load_rung_file(tmp_path / "rung_000.pt", 0))


def _reuse(cfg, run, tmp_path):
    """`entropi probe RUNDIR --out DIR`: the ladder hard-linked into DIR/rungs."""
    from entropi.host.run.stages import reuse_ladder

    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "rungs").symlink_to(tmp_path / "outside")
    reuse_ladder(cfg, run, tmp_path / "probe", ["probe.repeats=2"])


def _export(cfg, run, tmp_path):
    from entropi.host.deployment.rung_export import ensure_export

    ensure_export(run.root, 0, formats=("onnx",), forms=("sparse",))


def _open_run(cfg, run, tmp_path):
    """`entropi run --out LINK`: the run folder itself a link."""
    from entropi.host.run.rundir import open_run

    (tmp_path / "linked").symlink_to(tmp_path / "outside")
    open_run(cfg, tmp_path / "linked")


PLANTED = {
    "config.toml": _open_run,  # (planted: nothing; the run folder itself is the link)
    "export": _export,
    "scores": _score,
    "features": _score,
    "rungs": _save_rung,
    "ladder.json": _reuse,  # (planted: nothing; the probe folder's rungs/ is the link)
    "progress.log": lambda cfg, run, tmp: run.log("a line"),
    "head": _train_head,
    "head/.cache": _train_head,
    "head/.work": _train_head,
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_a_link_planted_in_a_run_folder_is_refused(tmp_path, name):
    from entropi.common.errors import EntropiError

    cfg, run, outside = _planted(tmp_path, name)
    with pytest.raises(EntropiError, match="symbolic link"):
        PLANTED[name](cfg, run, tmp_path)
    assert sorted(p.name for p in outside.iterdir()) == ["notes.txt"]
    assert (outside / "notes.txt").read_text() == "mine"
