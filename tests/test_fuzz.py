"""A short run of every fuzzer (the property: accepted, or refused with an EntropiError, in
time), the regression cases they found, and a check that the runner does catch a crash."""

from __future__ import annotations

import pytest

from entropi.benchmarks import fuzz
from entropi.host.config import ConfigError, config_from_dict, load_config, parse_override


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
