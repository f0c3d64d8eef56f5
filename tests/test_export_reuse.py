"""The exporter does each expensive step once: one conversion and one int8 quantization per
format and distinct graph (entropi.export.compact.same_graph), one thread for calibration, one
TFLite Micro pass for the MCU form's two checks.

References: the files a form's export writes alone (its own conversion and quantization), byte
for byte, against the same form's files from an export of every form (shared ones); run_tflm and
compare_tflm_litert against tflm_vs_litert on the same file and inputs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from synthetic import fake_rung_meta, synthetic_encoder

from entropi.export import compact_encoder, export_encoder, fold_batchnorm
from entropi.export.compact import same_graph
from entropi.export.formats import FORMATS
from entropi.export.quantize import one_thread

pytest.importorskip("onnxruntime")

SHAPE = (3, 32, 32)
EXAMPLE = torch.zeros(1, *SHAPE)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_same_graph_is_a_compaction_that_removed_nothing():
    folded = fold_batchnorm(synthetic_encoder("smallnet", alpha=0.2))
    small, report = compact_encoder(folded, EXAMPLE)
    assert report.channels_after == report.channels_before  # nothing to remove at alpha 0.2
    assert same_graph(small, folded) and same_graph(folded, small)

    dead = fold_batchnorm(synthetic_encoder("smallnet", alpha=0.2, kill=0.5))
    smaller, report = compact_encoder(dead, EXAMPLE)
    assert report.channels_after < report.channels_before
    assert not same_graph(smaller, dead)

    changed = compact_encoder(folded, EXAMPLE)[0]
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-6  # one weight, one ulp-sized change
    assert not same_graph(changed, folded)
    assert not same_graph(folded, fold_batchnorm(synthetic_encoder("smallnet", seed=1)))


def _counting(monkeypatch, names):
    """Wrap ``convert`` and ``quantize`` of the formats ``names``: calls counted per format."""
    calls = {name: {"convert": 0, "quantize": 0} for name in names}
    for name in names:
        fmt = FORMATS[name]

        def wrap(fn, name=name, what="convert"):
            def counted(*args, **kwargs):
                calls[name][what] += 1
                return fn(*args, **kwargs)

            return counted

        monkeypatch.setitem(
            FORMATS,
            name,
            dataclasses.replace(
                fmt, convert=wrap(fmt.convert), quantize=wrap(fmt.quantize, what="quantize")
            ),
        )
    return calls


FORMS = ("sparse", "compact", "compact-dense")


@pytest.mark.tflite
def test_one_conversion_per_distinct_graph_and_the_same_bytes(monkeypatch, tmp_path):
    """Nothing to compact: every form shares one conversion and one int8 quantization per
    format, and each file is the one the form's own export writes."""
    enc = synthetic_encoder("smallnet", alpha=0.2)
    info = fake_rung_meta(enc, "smallnet")
    kw = dict(
        verify_images=_images(4, 1),
        quantize="int8",
        calibration_images=_images(16, 0),
        min_cosine=-1.0,  # random weights on random images: the bytes are what is compared
    )
    calls = _counting(monkeypatch, ("onnx", "tflite"))
    every = export_encoder(enc, info, tmp_path / "every", forms=FORMS, **kw)
    assert calls == {n: {"convert": 1, "quantize": 1} for n in ("onnx", "tflite")}
    alone = export_encoder(enc, info, tmp_path / "alone", forms=("compact-dense",), **kw)
    assert sorted(alone["files"]) == sorted(
        n for n in every["files"] if n.startswith("encoder_compact_dense")
    )
    for name in alone["files"]:
        assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "every" / name).read_bytes()
        assert alone["files"][name] == every["files"][name]


def test_dead_channels_make_two_graphs(monkeypatch, tmp_path):
    """A compaction that removes channels is another graph: converted once more, shared by
    the two compact forms."""
    enc = synthetic_encoder("smallnet", alpha=0.2, kill=0.5)
    calls = _counting(monkeypatch, ("onnx",))
    result = export_encoder(
        enc, fake_rung_meta(enc, "smallnet"), tmp_path / "out", formats=["onnx"], forms=FORMS
    )
    assert calls["onnx"]["convert"] == 2
    files = result["files"]
    assert files["encoder_compact.onnx"]["params"] == files["encoder_compact_dense.onnx"]["params"]
    assert files["encoder_compact.onnx"]["params"] < files["encoder.onnx"]["params"]


def test_one_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), one_thread():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


@pytest.mark.tflite
def test_tflm_vs_litert_is_one_pass_of_both_checks():
    pytest.importorskip("tflite_micro")
    from entropi.export.quantize import tflite_int8_bytes
    from entropi.export.tflite_export import convert_tflite
    from entropi.export.tflm import compare_tflm_litert, run_tflm, tflm_vs_litert

    enc = fold_batchnorm(synthetic_encoder("smallnet", alpha=0.2))
    x = np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)
    int8, _ = tflite_int8_bytes(enc, x, input_shape=SHAPE)
    for data in (convert_tflite(enc, EXAMPLE), int8):
        figures, ours = tflm_vs_litert(data, x)
        assert figures == compare_tflm_litert(data, x)
        expected = run_tflm(data, x)
        assert ours.dtype == expected.dtype == np.float32
        np.testing.assert_array_equal(ours, expected)
