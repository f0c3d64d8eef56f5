"""TensorFlow Lite Micro (entropi.export.tflm, entropi.export.mcu) against LiteRT and PyTorch.

References: LiteRT's interpreter on the same file, the PyTorch encoder, the C compiler (the
generated array compiled and dumped byte for byte), and TFLM's own refusals.

Tolerances: float files ``max|TFLM - LiteRT| <= 1e-5 + 1e-4 x max|LiteRT|`` (measured 2.4e-7 on
smallnet); int8 files: every output within one quantization step of LiteRT's (measured: all of
them, max one step), mean cosine to PyTorch >= 0.99 (measured >= 0.9999).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from synthetic import synthetic_encoder

pytest.importorskip("tflite_micro")
pytest.importorskip("litert_torch")

from entropi.export import fold_batchnorm  # noqa: E402
from entropi.export.footprint import tflite_op_names  # noqa: E402
from entropi.export.mcu import NHWCInput, mcu_export  # noqa: E402
from entropi.export.tflite_export import convert_tflite, sparsify_tflite  # noqa: E402
from entropi.export.tflm import (  # noqa: E402
    TFLMError,
    compare_tflm_litert,
    open_tflm,
    resolver_ops,
    run_tflm,
    tflm_arena_bytes,
)
from entropi.export.verify import run_tflite  # noqa: E402

SHAPE = (3, 32, 32)


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def encoder():
    return synthetic_encoder("smallnet", alpha=1.0, seed=0).eval()


@pytest.fixture(scope="module")
def float_file(encoder):
    return convert_tflite(fold_batchnorm(encoder).eval(), torch.zeros(1, *SHAPE))


@pytest.fixture(scope="module")
def mcu_int8(encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("mcu") / "mcu"
    torch.set_num_threads(1)
    info = mcu_export(
        encoder,
        out,
        input_shape=SHAPE,
        verify_inputs=images(6, 1),
        calibration=images(16, 0),
        dtype="int8",
    )
    return out, info


def test_tflm_runs_a_float_file_as_litert_and_torch_do(encoder, float_file):
    x = images(4, 2)
    ours = run_tflm(float_file, x)
    ref = run_tflite(float_file, x).reshape(len(x), -1)
    scale = float(np.abs(ref).max())
    assert np.abs(ours - ref).max() <= 1e-5 + 1e-4 * scale
    with torch.no_grad():
        torch_ref = encoder(torch.from_numpy(x)).numpy()
    assert np.abs(ours - torch_ref).max() <= 1e-5 + 1e-4 * scale
    diff = compare_tflm_litert(float_file, x)
    assert diff["dtype"] == "float32" and diff["max_rel_diff"] <= 1e-4


def test_the_measured_arena_is_the_least_tflm_runs_in(float_file):
    arena = tflm_arena_bytes(float_file)
    # the planned activations alone: 16 x 32 x 32 float32 in and out of the first conv
    assert arena > 2 * 16 * 32 * 32 * 4
    open_tflm(float_file, arena_size=arena)  # exactly the measured arena loads
    with pytest.raises(TFLMError, match="too small") as e:
        open_tflm(float_file, arena_size=arena // 2)
    assert e.value.arena_needed is not None and e.value.arena_needed > arena // 2


def test_a_sparse_file_is_refused_naming_densify():
    enc = synthetic_encoder("smallnet", alpha=0.2, seed=0).eval()
    sparse, _ = sparsify_tflite(convert_tflite(fold_batchnorm(enc), torch.zeros(1, *SHAPE)))
    assert "DENSIFY" in tflite_op_names(sparse)
    for call in (lambda: open_tflm(sparse), lambda: resolver_ops(sparse)):
        with pytest.raises(TFLMError, match="DENSIFY.*compact-dense") as e:
            call()
        assert e.value.missing_op == "DENSIFY"


@pytest.mark.parametrize("junk", [b"", b"garbage" * 100, b"TFL3" + bytes(64)])
def test_a_file_that_is_no_model_is_one_error(junk):
    with pytest.raises(TFLMError):
        open_tflm(junk)


def test_the_mcu_int8_file_is_nhwc_without_transpose_and_verified(mcu_int8, encoder):
    out, info = mcu_int8
    data = (out / info["file"]).read_bytes()
    ops = tflite_op_names(data)
    assert "TRANSPOSE" not in ops and ops[0] == "CONV_2D"
    assert info["input"]["dtype"] == "int8" and info["input"]["shape"] == [1, 32, 32, 3]
    assert info["resolver_ops"] == ["AddConv2D", "AddMaxPool2D", "AddMean"]
    assert info["tflm_arena_bytes"] == tflm_arena_bytes(data)
    v = info["verification"]
    assert v["tflm_vs_litert"]["within_one_step"] >= 0.99
    assert v["tflm_vs_torch"]["mean_cos"] >= 0.99
    assert json.loads((out / "mcu.json").read_text()) == info
    # independently: TFLM on NHWC input against PyTorch on the same images as NCHW
    x = images(3, 5)
    ours = run_tflm(data, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    with torch.no_grad():
        ref = encoder(torch.from_numpy(x)).numpy()
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler")
def test_the_c_array_compiles_and_holds_the_file_byte_for_byte(mcu_int8, tmp_path):
    out, info = mcu_int8
    main = tmp_path / "dump.c"
    main.write_text(
        '#include <stdio.h>\n#include <stdint.h>\n#include "model_data.h"\n'
        "int main(void) {\n"
        "  if ((uintptr_t)entropi_model_data % 16 != 0) return 3;\n"
        f"  if (ENTROPI_ARENA_BYTES != {info['tflm_arena_bytes']}u) return 4;\n"
        "  fwrite(entropi_model_data, 1, entropi_model_len, stdout);\n  return 0;\n}\n"
    )
    exe = tmp_path / "dump"
    subprocess.run(
        [
            "gcc",
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            f"-I{out}",
            str(main),
            str(out / "model_data.c"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    dumped = subprocess.run([str(exe)], capture_output=True, check=True).stdout
    assert dumped == (out / info["file"]).read_bytes()


def test_the_resolver_macro_calls_one_method_per_op(mcu_int8, tmp_path):
    """The header's ENTROPI_ADD_OPS expands, in C++, to the resolver calls the file needs."""
    if shutil.which("g++") is None:
        pytest.skip("needs a C++ compiler")
    out, info = mcu_int8
    methods = "".join(f"  void {m}() {{ n++; }}\n" for m in info["resolver_ops"])
    src = tmp_path / "ops.cc"
    src.write_text(
        f'#include "model_data.h"\nstruct R {{\n  int n = 0;\n{methods}}};\n'
        "int main() { R r; ENTROPI_ADD_OPS(r); return r.n == ENTROPI_OP_COUNT ? 0 : 1; }\n"
    )
    subprocess.run(
        ["g++", "-Wall", "-Werror", f"-I{out}", str(src), "-o", str(tmp_path / "ops")], check=True
    )
    assert subprocess.run([str(tmp_path / "ops")]).returncode == 0


def test_mcu_export_refuses_bad_input_and_writes_nothing(encoder, tmp_path):
    from entropi.export import ExportError

    out = tmp_path / "mcu"
    with pytest.raises(ExportError, match="dtype"):
        mcu_export(encoder, out, input_shape=SHAPE, verify_inputs=images(2, 0), dtype="int4")
    with pytest.raises(ExportError, match="verify_inputs"):
        mcu_export(encoder, out, input_shape=SHAPE, verify_inputs=images(2, 0)[:, :1])
    with pytest.raises(ExportError, match="calibration"):
        mcu_export(encoder, out, input_shape=SHAPE, verify_inputs=images(2, 0), dtype="int8")
    assert not out.exists()


def test_nhwc_wrapper_is_the_same_function(encoder):
    x = images(2, 7)
    with torch.no_grad():
        a = encoder(torch.from_numpy(x))
        b = NHWCInput(encoder)(torch.from_numpy(x).permute(0, 2, 3, 1))
    assert torch.equal(a, b)


def test_mcu_export_replaces_only_its_own_folder(mcu_int8, encoder, tmp_path):
    from entropi.common.errors import EntropiError

    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.txt").write_text("keep")
    with pytest.raises(EntropiError, match="mcu.json"):
        mcu_export(
            encoder,
            user,
            input_shape=SHAPE,
            verify_inputs=images(2, 0),
            dtype="float32",
            overwrite=True,
        )
    assert (user / "thesis.txt").read_text() == "keep"


def test_export_json_records_tflm_for_every_tflite_file(tmp_path):
    """A dense-stored TFLite file is run in TFLM (arena, agreement with LiteRT); a sparse one is
    recorded as refused, naming DENSIFY."""
    from synthetic import fake_rung_meta

    from entropi.export import export_encoder

    enc = synthetic_encoder("smallnet", alpha=0.2, seed=0).eval()
    info = export_encoder(
        enc,
        fake_rung_meta(enc, "smallnet"),
        tmp_path / "out",
        formats=["tflite"],
        forms=["sparse", "compact-dense"],
    )
    sparse, dense = info["files"]["encoder.tflite"], info["files"]["encoder_compact_dense.tflite"]
    assert sparse["tflm"]["missing_op"] == "DENSIFY"
    assert dense["tflm"]["arena_bytes"] == tflm_arena_bytes(
        tmp_path / "out" / "encoder_compact_dense.tflite"
    )
    assert dense["tflm"]["vs_litert"]["max_rel_diff"] <= 1e-4


def test_the_report_names_the_arena_or_the_missing_op():
    from entropi.host.run.report import _tflm_cell

    assert _tflm_cell({"tflm": {"arena_bytes": 47296, "vs_litert": {}}}).startswith("arena 46.")
    assert _tflm_cell({"tflm": {"refused": "x", "missing_op": "DENSIFY"}}) == "refused (no DENSIFY)"
    assert _tflm_cell({}) == "-"
