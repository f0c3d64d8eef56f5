"""int8 export (entropi.export.quantize): full-integer TFLite (litert-torch PT2E) and QDQ ONNX
(onnxruntime quantize_static) against the PyTorch float encoder.

Encoders: smallnet, random init with randomized BN statistics (tests/synthetic.py), dense and
magnitude-pruned to alpha = 0.2 and 0.05; calibration (32) and test (8) inputs are separate
seeded N(0, 1) images.

Tolerance: ``mean_cos >= 0.999`` and ``max_rel <= 0.05`` (``max|int8 - float| / max|float|``).
Each int8 layer adds up to half an output step (~0.2 % of its range) of rounding; over four
convs plus the input quantization smallnet measures max_rel ~ 2e-3 .. 9e-3 and mean_cos >=
0.99998. The bound leaves a 5x margin for other seeds and is far below what a wrong scale, zero
point or layout produces (order-1 errors, cosines well below 0.99).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import synthetic_encoder

from entropi.common.errors import EntropiError
from entropi.export import ExportError, VerificationError, export_onnx, fold_batchnorm
from entropi.export.quantize import (
    int8_feature_error,
    pruned_zeros_kept,
    quantize_onnx_qdq,
    quantize_tflite_int8,
    run_onnx_qdq,
    run_tflite_int8,
    tflite_io_quantization,
)
from entropi.export.verify import torch_features

pytest.importorskip("onnxruntime")

SHAPE = (3, 32, 32)
# alpha 0.05 (the zeros case) prunes smallnet's last conv entirely (global magnitude pruning of a
# random init hits the widest layer hardest), so its features are input-independent; alpha 0.2
# keeps 13 % of that layer and is the pruned case whose features vary with the input.
ALPHAS = [1.0, 0.2, 0.05]
IDS = ["dense", "alpha0.2", "alpha0.05"]
N_CONV_WEIGHTS = 387_936  # smallnet's four convs
MIN_COS = 0.999
MAX_REL = 0.05


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def float_zeros(encoder) -> int:
    folded = fold_batchnorm(encoder)
    return sum(int((m.weight == 0).sum()) for m in folded.modules() if hasattr(m, "weight"))


CAL = images(32, seed=0)
TEST = images(8, seed=1)


@pytest.fixture(scope="module")
def encoders():
    return {alpha: synthetic_encoder("smallnet", alpha=alpha, seed=0) for alpha in ALPHAS}


@pytest.fixture(scope="module")
def tflite_files(encoders, tmp_path_factory):
    """alpha -> (path, info) of the int8 TFLite file of each encoder."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    root = tmp_path_factory.mktemp("int8_tflite")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for alpha, enc in encoders.items():
            path = root / f"encoder_{alpha}.tflite"
            out[alpha] = path, quantize_tflite_int8(enc, CAL, path, input_shape=SHAPE)
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def onnx_files(encoders, tmp_path_factory):
    """alpha -> (float path, QDQ path, info); the pruned float file is stored sparse."""
    pytest.importorskip("onnx")
    root = tmp_path_factory.mktemp("int8_onnx")
    out = {}
    for alpha, enc in encoders.items():
        data, _ = export_onnx(
            fold_batchnorm(enc),
            torch.zeros(1, *SHAPE),
            sparse=alpha < 1,
            metadata={"entropi.alpha": str(alpha)},
        )
        fp, qp = root / f"f_{alpha}.onnx", root / f"q_{alpha}.onnx"
        fp.write_bytes(data)
        out[alpha] = fp, qp, quantize_onnx_qdq(fp, CAL, qp)
    return out


# --- the error measure -------------------------------------------------------------------------


def test_feature_error_hand_computed():
    ref = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    got = np.array([[3.0, 4.5], [0.0, 0.0], [0.0, 0.0]])
    e = int8_feature_error(ref, got)
    assert e["max_abs"] == pytest.approx(1.0)  # row 3: |1 - 0|
    assert e["ref_scale"] == pytest.approx(4.0)
    assert e["max_rel"] == pytest.approx(0.25)
    cos0 = (9 + 18) / (5 * np.sqrt(9 + 20.25))  # = 27 / 27.0416 = 0.99846
    # row 2: both zero -> 1; row 3: zero vs non-zero -> 0
    assert e["mean_cos"] == pytest.approx((cos0 + 1 + 0) / 3)
    assert e["min_cos"] == 0.0
    assert e["n"] == 3


def test_feature_error_identical_and_all_zero():
    x = np.arange(12.0).reshape(3, 4)
    e = int8_feature_error(x, x)
    assert e["max_rel"] == 0 and e["mean_cos"] == pytest.approx(1.0)
    z = np.zeros((2, 5))
    assert int8_feature_error(z, z) == {
        "max_abs": 0.0,
        "max_rel": 0.0,
        "ref_scale": 0.0,
        "mean_cos": 1.0,
        "min_cos": 1.0,
        "n": 2,
    }
    assert int8_feature_error(z, z + 1)["max_rel"] == float("inf")


def test_feature_error_rejects_bad_arrays():
    with pytest.raises(VerificationError, match="shape"):
        int8_feature_error(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(VerificationError, match="NaN"):
        int8_feature_error(np.zeros((2, 3)), np.full((2, 3), np.nan))


# --- TFLite ------------------------------------------------------------------------------------


@pytest.mark.tflite
@pytest.mark.parametrize("alpha", ALPHAS, ids=IDS)
def test_tflite_int8_matches_float(encoders, tflite_files, alpha):
    path, info = tflite_files[alpha]
    ref = torch_features(encoders[alpha], TEST)
    err = int8_feature_error(ref, run_tflite_int8(path, TEST))
    assert err["mean_cos"] >= MIN_COS, err
    assert err["max_rel"] <= MAX_REL, err
    assert info["bytes"] == path.stat().st_size
    assert info["n_calibration"] == len(CAL) and info["seconds"] > 0


@pytest.mark.tflite
def test_tflite_int8_quantization_matches_interpreter(tflite_files):
    from ai_edge_litert.interpreter import Interpreter

    path, info = tflite_files[1.0]
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    for side, d in (
        ("input", interp.get_input_details()[0]),
        ("output", interp.get_output_details()[0]),
    ):
        scale, zp = d["quantization"]
        assert d["dtype"] == np.int8
        assert info[side]["dtype"] == "int8"
        assert info[side]["scale"] == pytest.approx(float(scale), rel=0, abs=0)
        assert info[side]["zero_point"] == int(zp)
        assert info[side]["shape"] == [int(s) for s in d["shape"]]
        assert scale > 0
    assert info["input"]["shape"] == [1, *SHAPE]
    assert (info["input"], info["output"]) == tflite_io_quantization(path)
    # full integer: no float tensor anywhere in the graph
    dtypes = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    assert dtypes <= {"int8", "int32"}, dtypes


@pytest.mark.tflite
def test_tflite_int8_runner_quantizes_as_documented(tflite_files):
    """The runner against an independent loop: q = clip(round(x / s) + z), (q - z) * s."""
    from ai_edge_litert.interpreter import Interpreter

    path, info = tflite_files[1.0]
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    s, z = info["input"]["scale"], info["input"]["zero_point"]
    so, zo = info["output"]["scale"], info["output"]["zero_point"]
    want = []
    for x in TEST[:3] * 10:  # * 10: some values saturate at -128 / 127
        q = np.clip(np.round(x[None] / s) + z, -128, 127).astype(np.int8)
        interp.set_tensor(i["index"], q)
        interp.invoke()
        want.append((interp.get_tensor(o["index"]).astype(np.float64) - zo) * so)
    got = run_tflite_int8(path.read_bytes(), TEST[:3] * 10)
    np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-6, atol=0)


@pytest.mark.tflite
@pytest.mark.parametrize("alpha", ALPHAS, ids=IDS)
def test_tflite_int8_pruned_zeros_stay_zero(encoders, tflite_files, alpha):
    path, _ = tflite_files[alpha]
    z = pruned_zeros_kept(encoders[alpha], path)
    assert z["all_kept"] and z["zeros_lost"] == 0
    assert len(z["layers"]) == 4
    assert z["float_zeros"] + z["float_nonzeros"] == N_CONV_WEIGHTS
    assert z["float_zeros"] == float_zeros(encoders[alpha])
    assert z["float_zeros"] >= (N_CONV_WEIGHTS - round(alpha * N_CONV_WEIGHTS)) * (alpha < 1)
    for layer in z["layers"]:  # every int8 weight is its float weight rounded (<= half a step)
        assert layer["max_error_steps"] <= 0.5 + 1e-3


@pytest.mark.tflite
def test_tflite_int8_zeros_check_detects_a_lost_zero(encoders, tflite_files):
    """A float zero where the file holds a non-zero int8 weight is reported, not missed."""
    path, _ = tflite_files[1.0]
    enc = fold_batchnorm(encoders[1.0])
    conv = next(m for m in enc.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        flat = conv.weight.view(-1)
        flat[int(flat.abs().argmax())] = 0.0
    z = pruned_zeros_kept(enc, path)
    assert not z["all_kept"] and z["zeros_lost"] == 1


@pytest.mark.tflite
def test_tflite_int8_bad_calibration_raises(encoders, tmp_path):
    pytest.importorskip("litert_torch")
    enc, path = encoders[1.0], tmp_path / "e.tflite"
    bad = {
        "shape N x 3 x 32 x 32": images(4, 0)[:, :2],
        "at least one image": np.zeros((0, *SHAPE), np.float32),
        "NaN or inf": np.where(np.arange(4)[:, None, None, None] == 2, np.nan, images(4, 0)),
    }
    for match, cal in bad.items():
        with pytest.raises(ExportError, match=match):
            quantize_tflite_int8(enc, cal, path, input_shape=SHAPE)
    with pytest.raises(ExportError, match="input_shape"):
        quantize_tflite_int8(enc, CAL, path, input_shape=(3, 32))
    with pytest.raises(ExportError, match="shape N x 1 x 32 x 32"):
        quantize_tflite_int8(enc, CAL, path, input_shape=(1, 32, 32))
    with pytest.raises(ExportError, match="does not run"):
        quantize_tflite_int8(enc, CAL[:, :1], path, input_shape=(1, 32, 32))
    assert not path.exists()
    assert issubclass(ExportError, EntropiError)


@pytest.mark.tflite
def test_tflite_int8_runner_rejects_bad_inputs(tflite_files):
    path, _ = tflite_files[1.0]
    with pytest.raises(ExportError, match="shape"):
        run_tflite_int8(path, TEST[:, :2])
    with pytest.raises(ExportError, match="NaN"):
        run_tflite_int8(path, np.full((1, *SHAPE), np.nan, np.float32))


# --- ONNX QDQ ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS, ids=IDS)
def test_onnx_qdq_matches_float(encoders, onnx_files, alpha):
    fp, qp, info = onnx_files[alpha]
    ref = torch_features(encoders[alpha], TEST)
    err = int8_feature_error(ref, run_onnx_qdq(qp, TEST))
    assert err["mean_cos"] >= MIN_COS, err
    assert err["max_rel"] <= MAX_REL, err
    assert info["bytes"] == qp.stat().st_size
    assert info["input"] == {
        "dtype": "float32",
        "shape": [None, *SHAPE],
        "scale": None,
        "zero_point": None,
    }
    assert info["output"]["dtype"] == "float32" and info["output"]["scale"] is None


def test_onnx_qdq_is_int8(onnx_files):
    import onnx

    _, qp, _ = onnx_files[1.0]
    m = onnx.load(str(qp))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Conv") == 4 and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weights = [
        i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4
    ]
    assert len(weights) == 4
    assert {p.key: p.value for p in m.metadata_props}["entropi.alpha"] == "1.0"


@pytest.mark.parametrize("alpha", ALPHAS, ids=IDS)
def test_onnx_qdq_pruned_zeros_stay_zero(encoders, onnx_files, alpha):
    _, qp, _ = onnx_files[alpha]
    z = pruned_zeros_kept(encoders[alpha], qp)
    assert z["all_kept"] and z["zeros_lost"] == 0 and len(z["layers"]) == 4
    assert z["float_zeros"] == float_zeros(encoders[alpha])
    assert z["float_zeros"] >= (N_CONV_WEIGHTS - round(alpha * N_CONV_WEIGHTS)) * (alpha < 1)
    for layer in z["layers"]:
        assert layer["max_error_steps"] <= 0.5 + 1e-3


def test_onnx_qdq_bad_calibration_raises(onnx_files, tmp_path):
    fp, _, _ = onnx_files[1.0]
    out = tmp_path / "q.onnx"
    bad = {
        "shape N x 3 x 32 x 32": images(4, 0)[:, :, :16],
        "at least one image": np.zeros((0, *SHAPE), np.float32),
        "NaN or inf": np.where(np.arange(4)[:, None, None, None] == 1, np.inf, images(4, 0)),
    }
    for match, cal in bad.items():
        with pytest.raises(ExportError, match=match):
            quantize_onnx_qdq(fp, cal, out)
    with pytest.raises(ExportError, match="cannot read the ONNX file"):
        (tmp_path / "junk.onnx").write_bytes(b"not onnx")
        quantize_onnx_qdq(tmp_path / "junk.onnx", CAL, out)
    assert not out.exists()
