"""TFLite export: litert-torch conversion, TFLite sparse storage (SparsityParameters + DENSIFY),
provenance metadata; the stock LiteRT interpreter vs the PyTorch encoder.

Tolerance: ``max|tflite - torch| <= 1e-5 + 1e-4 * max|torch|`` (entropi.export.DEFAULT_*);
measured differences are ~1e-7 of the output scale.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils
from synthetic import LazyTable, arch_params, fake_rung_meta, synthetic_encoder
from torch import nn

from entropi.export import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    MissingDependencyError,
    compare_tflite_torch,
    convert_tflite,
    export_encoder,
    fold_batchnorm,
    read_metadata,
    sparsify_tflite,
)
from entropi.export.weights import prunable_parameters

pytest.importorskip("litert_torch")

ARCHS = ["smallnet", "resnet18", "mobilenetv3_small", "resnet18_imagenet"]
ARCH_PARAMS = arch_params(ARCHS)
TOL = {"atol": DEFAULT_ATOL, "rtol": DEFAULT_RTOL}


def make_encoder(arch: str, alpha: float, seed: int = 0) -> nn.Module:
    return synthetic_encoder(arch, alpha=alpha, seed=seed)


def inputs(n: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def exported():
    """(encoder, sparse tflite bytes) for every arch, dense and pruned to alpha = 0.05, each
    converted when a test first asks for it."""

    def convert(arch, alpha):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            enc = make_encoder(arch, alpha)
            dense = convert_tflite(fold_batchnorm(enc), torch.zeros(1, 3, 32, 32))
            return (enc, *sparsify_tflite(dense, metadata={"alpha": alpha}))
        finally:
            torch.set_num_threads(threads)

    return LazyTable(convert)


@pytest.mark.parametrize("alpha", [1.0, 0.05], ids=["dense", "pruned"])
@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_tflite_matches_torch(exported, arch, alpha):
    encoder, data, _ = exported[arch, alpha]
    diff = compare_tflite_torch(data, encoder, inputs(), **TOL)
    assert diff.max_rel_diff < 1e-5


def _sparse_tensors_and_densify_ops(data: bytes):
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    sg = model.subgraphs[0]
    densify = [
        op
        for op in sg.operators
        if flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        == schema.BuiltinOperator.DENSIFY
    ]
    sparse = [t for t in sg.tensors if t.sparsity is not None]
    values = [np.frombuffer(bytes(model.buffers[t.buffer].data), np.float32) for t in sparse]
    for op in densify:  # sparse constant in, dense tensor without data out
        assert sg.tensors[op.inputs[0]].sparsity is not None
        assert model.buffers[sg.tensors[op.outputs[0]].buffer].data is None
    return sparse, densify, values


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_pruned_weights_are_stored_sparse(exported, arch):
    encoder, data, stats = exported[arch, 0.05]
    sparse, densify, values = _sparse_tensors_and_densify_ops(data)
    assert len(sparse) == len(densify) == stats.tensors > 0
    for t in sparse:
        dims = t.sparsity.dimMetadata
        assert [d.format for d in dims[:-1]] == [schema.DimensionType.DENSE] * (len(dims) - 1)
        assert dims[-1].format == schema.DimensionType.SPARSE_CSR
    stored = sum(v.size for v in values)
    assert stored == stats.nnz
    total = sum(int(torch.count_nonzero(p)) for _, p in prunable_parameters(encoder))
    assert stored <= total and stored > 0.5 * total
    assert len(data) < 0.25 * sum(p.numel() for p in encoder.parameters()) * 4


def test_dense_model_gets_no_densify(exported):
    _, data, stats = exported["smallnet", 1.0]
    sparse, densify, _ = _sparse_tensors_and_densify_ops(data)
    assert stats.tensors == 0 and not sparse and not densify


def test_metadata_roundtrip(exported):
    assert read_metadata(exported["resnet18", 0.05][1]) == {"alpha": 0.05}


def test_missing_litert_torch_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    enc = make_encoder("smallnet", 0.05)
    with pytest.raises(MissingDependencyError, match=r'pip install "entropi\[tflite\]"'):
        export_encoder(enc, fake_rung_meta(enc, "smallnet"), tmp_path / "out", formats=["tflite"])
    assert not (tmp_path / "out").exists()
