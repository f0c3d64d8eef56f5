"""Crash consistency in CI: `entropi run` and `entropi-device train` SIGKILLed at seeded random
moments, then resumed, end identical to an uninterrupted run (rung table, selection, head weights
bit for bit), with every file under its final name whole right after the kill and no temporary
file left. A few points here; `scripts/crash_sweep.py` runs the full sweep."""

from __future__ import annotations

import pytest
from scripts_loader import load_script


@pytest.fixture(scope="module")
def sweep():
    return load_script("crash_sweep")


def _check(rows):
    for r in rows:
        assert r["broken_after_kill"] == [], r
        assert r["temporaries_left"] == [], r
        assert r["identical"], r


@pytest.mark.slow
def test_kill_and_resume_host_and_device(sweep, tmp_path):
    host = sweep.sweep_host(tmp_path, points=2, seed=3, log=lambda m: None)
    _check(host["points"])
    assert sum(r["killed"] for r in host["points"]) >= 1  # at least one kill landed mid-run
    bundle, data = sweep.device_inputs(host.pop("ref"), tmp_path)
    dev = sweep.sweep_device(
        tmp_path, bundle, data, points=3, seed=3, log=lambda m: None, epochs=100
    )
    _check(dev["points"])
    assert sum(r["killed"] for r in dev["points"]) >= 1
    table = sweep.summarize([host, dev])
    assert sum(row["kill_points"] for row in table) == 5


def test_a_half_written_file_is_caught_and_same_compares_exactly(sweep, tmp_path):
    import numpy as np

    (tmp_path / "a.json").write_text('{"x": ')
    np.save(tmp_path / "b.npy", np.zeros(3))
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / ".d.json.123.tmp").write_text("")
    assert sorted(sweep.broken_artifacts(tmp_path)) == [
        "a.json: JSONDecodeError",
        "c.npz: BadZipFile",
    ]
    assert sweep.temporaries(tmp_path) == [".d.json.123.tmp"]
    a = {"w": np.array([1.0, 2.0], np.float32), "r": [{"alpha": 0.5}]}
    assert sweep.same(a, {"w": np.array([1.0, 2.0], np.float32), "r": [{"alpha": 0.5}]})
    assert not sweep.same(a, {"w": np.array([1.0, 2.0000002], np.float32), "r": [{"alpha": 0.5}]})
    assert not sweep.same(a, {"w": np.array([1.0, 2.0], np.float64), "r": [{"alpha": 0.5}]})
