"""`entropi entropy` and `entropi criteria` on hostile feature files: one line and exit 2, never
a traceback, never invalid JSON; extreme but legitimate values give the right answer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.lib import format as npy

from entropi.host import cli
from entropi.host.selection.entropy import state_entropy


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _lying_npy(path, shape, dtype="<f4"):
    with open(path, "wb") as f:
        npy.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
        f.write(b"\0" * 64)


@pytest.mark.parametrize("command", ["entropy", "criteria"])
def test_bad_feature_files_are_one_line(command, tmp_path, capsys):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    assert "is not a .npy array file" in _error(capsys, [command, str(empty)])
    text = tmp_path / "text.npy"
    text.write_text("1,2,3\n")
    err = _error(capsys, [command, str(text)])
    assert "is not a .npy array file" in err and "pickle" not in err
    huge = tmp_path / "huge.npy"
    _lying_npy(huge, (2**25, 2**23))  # 1.8 PiB of float32 claimed, 64 bytes held
    assert "claims shape (33554432, 8388608)" in _error(capsys, [command, str(huge)])
    folder = tmp_path / "dir.npy"
    folder.mkdir()
    assert "is a folder, not a .npy file" in _error(capsys, [command, str(folder)])
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "holds Python objects" in _error(capsys, [command, str(obj)])
    assert "does not exist" in _error(capsys, [command, str(tmp_path / "missing.npy")])


def test_absurd_levels_are_refused(tmp_path, capsys):
    f = tmp_path / "f.npy"
    np.save(f, np.random.default_rng(0).normal(size=(20, 4)))
    assert "levels must be an integer in [2, 1024]" in _error(
        capsys, ["entropy", str(f), "--levels", "2000000000"]
    )


def test_values_near_the_float_limit_are_quantized_right(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 3))
    base /= np.abs(base).max()
    f = tmp_path / "big.npy"
    np.save(f, base * 1.5e308)  # max - min overflows float64
    assert cli.main(["entropy", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)  # valid JSON: no Infinity
    ref = state_entropy(base, 4)  # the quantization is scale-invariant
    assert np.isfinite(out["delta"]) and out["delta"] == pytest.approx(ref.delta * 1.5e308)
    assert out["entropy"] == pytest.approx(ref.entropy, abs=1e-12)
    assert out["distinct_states"] == ref.distinct_states


def test_negative_dimensions_and_npy_version_3(tmp_path, capsys):
    neg = tmp_path / "neg.npy"
    _lying_npy(neg, (-1, 4))
    assert "claims the shape (-1, 4)" in _error(capsys, ["entropy", str(neg)])
    v3 = tmp_path / "v3.npy"
    rng = np.random.default_rng(0)
    with open(v3, "wb") as f:
        npy.write_array(f, rng.normal(size=(30, 4)), version=(3, 0))
    assert cli.main(["entropy", str(v3)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 30


def test_an_error_line_is_one_write(monkeypatch):
    """Processes sharing a stderr pipe (the ranks of a torchrun job) each print their error:
    ``print`` writes text and newline separately, so lines could splice; ``say`` writes the line
    and its newline in one write. Modeled on the real stderr: write-through, over a raw stream
    that records each write."""
    import io

    from entropi.common.errors import say

    class Recorder(io.RawIOBase):
        def __init__(self):
            self.writes = []

        def writable(self):
            return True

        def write(self, b):
            self.writes.append(bytes(b))
            return len(b)

    raw = Recorder()
    monkeypatch.setattr("sys.stderr", io.TextIOWrapper(raw, write_through=True))
    say("entropi: error: " + "x" * 300)
    say("second")
    assert raw.writes == [b"entropi: error: " + b"x" * 300 + b"\n", b"second\n"]
