"""ONNX export: BN folding, sparse storage, provenance; onnxruntime output vs the PyTorch encoder;
the format registry and export_encoder's checks of its input.

Tolerance: ``max|ort - torch| <= 1e-5 + 1e-4 * max|torch|`` (entropi.export.DEFAULT_*); the
measured differences are ~1e-7 of the output scale (float32 summation order).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from synthetic import LazyTable, arch_params, fake_rung_meta, synthetic_encoder
from torch import nn

from entropi.common.errors import EntropiError
from entropi.export import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    FORMAT_NAMES,
    FORMATS,
    ONNX_OPSET,
    ExportError,
    ExportFormat,
    MissingDependencyError,
    UnsupportedModuleError,
    VerificationError,
    compare_onnx_torch,
    export_encoder,
    export_onnx,
    fold_batchnorm,
    resolve_formats,
)
from entropi.export.weights import prunable_parameters
from entropi.host.ladder.models import prunable_parameters as host_prunable_parameters

ARCHS = ["smallnet", "resnet18", "mobilenetv3_small", "resnet18_imagenet"]
ARCH_PARAMS = arch_params(ARCHS)
TOL = {"atol": DEFAULT_ATOL, "rtol": DEFAULT_RTOL}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_encoder(arch: str, alpha: float, seed: int = 0) -> nn.Module:
    return synthetic_encoder(arch, alpha=alpha, seed=seed)


def inputs(n: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def exported():
    """(encoder, onnx bytes) for every arch, dense and pruned to alpha = 0.05, each exported
    when a test first asks for it."""

    def export(arch, alpha):
        enc = make_encoder(arch, alpha)
        data, _ = export_onnx(
            fold_batchnorm(enc),
            torch.zeros(1, 3, 32, 32),
            sparse=True,
            metadata={"entropi.alpha": str(alpha)},
        )
        return enc, data

    return LazyTable(export)


@pytest.mark.parametrize("alpha", [1.0, 0.05], ids=["dense", "pruned"])
@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_onnx_matches_torch(exported, arch, alpha):
    encoder, data = exported[arch, alpha]
    diff = compare_onnx_torch(data, encoder, inputs(), **TOL)
    assert diff.max_rel_diff < 1e-5


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_pruned_weights_are_sparse_initializers(exported, arch):
    encoder, data = exported[arch, 0.05]
    model = onnx.load_from_string(data)
    sparse = list(model.graph.sparse_initializer)
    assert sparse, "no sparse_initializer in a 95%-sparse model"
    for st in sparse:
        values = onnx.numpy_helper.to_array(st.values)
        idx = onnx.numpy_helper.to_array(st.indices)
        assert idx.dtype == np.int64 and idx.ndim == 1 and len(idx) == len(values)
        assert np.all(values != 0) and np.all(np.diff(idx) > 0)
        assert np.all((idx >= 0) & (idx < np.prod(st.dims)))
    dense_nnz = sum(
        int(np.count_nonzero(onnx.numpy_helper.to_array(t)))
        for t in model.graph.initializer
        if len(t.dims) >= 2
    )
    sparse_nnz = sum(onnx.numpy_helper.to_array(st.values).size for st in sparse)
    expected = sum(int(torch.count_nonzero(p)) for _, p in prunable_parameters(encoder))
    assert sparse_nnz + dense_nnz == expected  # BN folding keeps exactly the pruned zeros
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_file_is_self_contained_with_opset_and_metadata(exported):
    model = onnx.load_from_string(exported["smallnet", 0.05][1])
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [ONNX_OPSET]
    for t in [*model.graph.initializer, *(s.values for s in model.graph.sparse_initializer)]:
        assert t.data_location != onnx.TensorProto.EXTERNAL
    assert {p.key: p.value for p in model.metadata_props}["entropi.alpha"] == "0.05"
    onnx.checker.check_model(model)


def test_dynamic_batch(exported):
    encoder, data = exported["resnet18", 0.05]
    compare_onnx_torch(data, encoder, inputs(n=5), **TOL)


def test_fold_keeps_zeros_and_function():
    encoder = make_encoder("mobilenetv3_small", 0.1)
    folded = fold_batchnorm(encoder)
    x = torch.from_numpy(inputs())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), encoder(x), atol=1e-6, rtol=1e-5)
    nnz = sum(int(torch.count_nonzero(p)) for _, p in prunable_parameters(encoder))
    assert sum(int(torch.count_nonzero(p)) for _, p in prunable_parameters(folded)) == nnz
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


class _BnAfterRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.norm(self.act(self.conv(x))).mean((2, 3))


def test_unfoldable_batchnorm_is_named():
    with pytest.raises(UnsupportedModuleError, match=r"'norm' \(BatchNorm2d\).*'act' \(ReLU\)"):
        fold_batchnorm(_BnAfterRelu().eval())


def test_mismatch_raises(exported):
    encoder, data = exported["smallnet", 0.05]
    other = make_encoder("smallnet", 0.05, seed=7)
    with pytest.raises(VerificationError, match="max abs diff"):
        compare_onnx_torch(data, other, inputs(), **TOL)
    del encoder


def test_format_registry():
    assert FORMAT_NAMES == tuple(FORMATS) == ("onnx", "tflite")
    assert "onnx" in FORMATS and "coreml" not in FORMATS
    for name, fmt in FORMATS.items():
        assert isinstance(fmt, ExportFormat) and fmt.name == name
        assert fmt.filename("encoder") == f"encoder.{name}"
        assert (fmt.atol, fmt.rtol) == (DEFAULT_ATOL, DEFAULT_RTOL)
    assert [f.name for f in resolve_formats(["tflite", "onnx", "tflite"])] == ["onnx", "tflite"]
    assert [f.name for f in resolve_formats("onnx")] == ["onnx"]
    for bad in (["coreml"], [], 3):
        with pytest.raises(ExportError, match="format"):
            resolve_formats(bad)


def test_errors_are_entropi_errors():
    assert issubclass(MissingDependencyError, EntropiError)
    assert issubclass(MissingDependencyError, ImportError)
    assert issubclass(UnsupportedModuleError, ExportError) and issubclass(ExportError, ValueError)
    assert host_prunable_parameters is prunable_parameters  # host.models re-exports it


def test_export_loops_over_the_registry(monkeypatch, tmp_path):
    """A registered format is written and verified with its own tolerance, which it records."""
    loose = dataclasses.replace(FORMATS["onnx"], name="loose", suffix=".loose.onnx", atol=0.5)
    monkeypatch.setitem(FORMATS, "loose", loose)
    enc = make_encoder("smallnet", 0.05)
    result = export_encoder(
        enc, fake_rung_meta(enc, "smallnet"), tmp_path / "out", formats=["loose", "onnx"]
    )
    assert list(result["files"]) == ["encoder.onnx", "encoder.loose.onnx"]
    assert "tolerance" not in result["files"]["encoder.onnx"]
    assert result["files"]["encoder.loose.onnx"]["tolerance"] == {"atol": 0.5, "rtol": DEFAULT_RTOL}
    assert result["tolerance"]["atol"] == DEFAULT_ATOL
    prov = result["provenance"]
    assert prov["rung_index"] == 0 and prov["source_accuracy"] is None
    assert prov["arch"] == "smallnet" and prov["feature_dim"] == 256
    props = {p.key: p.value for p in onnx.load(tmp_path / "out" / "encoder.onnx").metadata_props}
    assert props["entropi.form"] == "sparse" and props["entropi.onnx_opset"] == str(ONNX_OPSET)


def test_export_rejects_bad_input(tmp_path):
    enc = make_encoder("smallnet", 0.05)
    info = fake_rung_meta(enc, "smallnet")
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="needs the rung's RungInfo"):
        export_encoder(enc, info.to_dict(), out, formats=["onnx"])
    with pytest.raises(ExportError, match="input_shape must be 3 positive"):
        export_encoder(enc, dataclasses.replace(info, input_shape=(32, 32)), out, formats="onnx")
    one_channel = dataclasses.replace(
        info, input_shape=(1, 32, 32), normalization={"mean": [0.0], "std": [1.0]}
    )
    with pytest.raises(ExportError, match=r"does not run on inputs.*\[1, 32, 32\]"):
        export_encoder(enc, one_channel, out, formats=["onnx"])
    with pytest.raises(ExportError, match="normalization must be"):
        export_encoder(enc, dataclasses.replace(info, normalization={}), out, formats=["onnx"])
    with pytest.raises(ExportError, match="n_random"):
        export_encoder(enc, info, out, formats=["onnx"], n_random=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_encoder(enc, info, tmp_path / "file", formats=["onnx"])
    assert not out.exists()
