"""Hostile and broken bundles: every bad manifest, file or encoder ends in a BundleError subclass.

A bundle is copied from anywhere, so :func:`entropi.device.bundle.load_bundle` and
:meth:`Bundle.encoder` must turn every defect into a specific :class:`BundleError` (the CLIs print
it as one line), never a KeyError/TypeError/OSError or an interpreter's own exception, and must
refuse values that would silently train on garbage (a tiny std, a damaged encoder whose checksum
was recomputed). The encoders here are tiny ONNX graphs made with ``onnx.helper`` (milliseconds);
one TFLite case converts a tiny module with litert-torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from entropi.common.errors import EntropiError
from entropi.device import BundleError, ChecksumError, FormatVersionError
from entropi.device.bundle import (
    CHECK,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    load_bundle,
    read_manifest,
    sha256_file,
    write_bundle,
)
from entropi.device.schema import SchemaViolation, check, json_path, load_schema

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SHAPE, DIM = [3, 4, 4], 8
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def tiny_onnx(path, *, seed=0, bad_reshape=False):
    """(N, 3, 4, 4) -> Flatten -> MatMul (48 x 8) -> (N, 8); ``bad_reshape`` loads but cannot
    run (a Reshape of N x 48 values to rows of 7, then MatMul 7 x 8)."""
    rows = 7 if bad_reshape else 48
    w = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1)]
    inits = [numpy_helper.from_array(w, "w")]
    if bad_reshape:
        inits.append(numpy_helper.from_array(np.array([-1, 7], np.int64), "s"))
        nodes.append(helper.make_node("Reshape", ["f", "s"], ["r"]))
        nodes.append(helper.make_node("MatMul", ["r", "w"], ["y"]))
    else:
        nodes.append(helper.make_node("MatMul", ["f", "w"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", DIM])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def make_bundle(out, enc, **kw):
    args = dict(
        encoder_files={"encoder.onnx": enc},
        input_shape=SHAPE,
        normalization={"mean": MEAN, "std": STD},
        feature_dim=DIM,
        class_names=["a", "b"],
        alpha=0.5,
        provenance={"test": True},
    )
    return write_bundle(out, **{**args, **kw})


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    return make_bundle(d / "bundle", tiny_onnx(d / "enc.onnx"))


@pytest.fixture
def copy(good, tmp_path):
    """A fresh copy of the good bundle, with helpers to rewrite its manifest and files."""
    dst = tmp_path / "b"
    shutil.copytree(good, dst)
    return dst


def manifest_of(b):
    return json.loads((b / MANIFEST).read_text())


def put_manifest(b, m):
    (b / MANIFEST).write_text(json.dumps(m))


def rehash(b, name):
    """Record ``name``'s current sha256 and size: a damaged file that passes the checksum."""
    m = manifest_of(b)
    m["files"][name] = {"sha256": sha256_file(b / name), "bytes": (b / name).stat().st_size}
    put_manifest(b, m)


def test_good_bundle_loads_and_checks_its_encoder(good):
    b = load_bundle(good)
    assert b.check_file == good / CHECK
    m = manifest_of(good)
    assert set(m["files"]) == {"encoder.onnx", CHECK}
    with np.load(good / CHECK, allow_pickle=False) as z:
        assert sorted(z.files) == ["inputs", "outputs.encoder.onnx"]
        assert z["inputs"].shape == (4, *SHAPE) and z["inputs"].dtype == np.float32
        assert z["outputs.encoder.onnx"].shape == (4, DIM)
        np.testing.assert_allclose(b.encoder()(z["inputs"]), z["outputs.encoder.onnx"], atol=1e-6)
        lo = (0 - np.array(MEAN)) / np.array(STD)
        hi = (1 - np.array(MEAN)) / np.array(STD)
        x = z["inputs"].transpose(1, 0, 2, 3).reshape(3, -1)
        assert (x.min(1) >= lo - 1e-6).all() and (x.max(1) <= hi + 1e-6).all()


# --- manifest fields missing or of the wrong type ----------------------------------------------


def _del(*keys):
    def f(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return f


def _set(*keys, value):
    def f(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return f


ENC = "encoder.onnx"
BAD_MANIFESTS = {
    "no input": (_del("input"), "input: required entry is missing"),
    "no input.mean": (_del("input", "mean"), "input.mean: required entry is missing"),
    "no feature_dim": (_del("feature_dim"), "feature_dim: required entry is missing"),
    "no sha256": (_del("files", ENC, "sha256"), 'files["encoder.onnx"].sha256: required'),
    "no bytes": (_del("files", ENC, "bytes"), 'files["encoder.onnx"].bytes: required'),
    "no format_version": (_del("format_version"), "format_version: required"),
    "files a list": (_set("files", value=[ENC]), "files: expected object, got array"),
    "files null": (_set("files", value=None), "files: expected object, got null"),
    "encoders a list": (_set("encoders", value=[ENC]), "encoders: expected object, got array"),
    "encoders null": (_set("encoders", value=None), "encoders: expected object, got null"),
    "file entry a string": (
        _set("files", ENC, value="abc"),
        'files["encoder.onnx"]: expected object, got string',
    ),
    "mean entry a dict": (
        _set("input", "mean", 1, value={"v": 1}),
        "input.mean[1]: expected number, got object",
    ),
    "std entry a dict": (
        _set("input", "std", 0, value={}),
        "input.std[0]: expected number, got object",
    ),
    "feature_dim negative": (_set("feature_dim", value=-3), "feature_dim: expected a value >= 1"),
    "feature_dim 1e15 float": (
        _set("feature_dim", value=1e15),
        "feature_dim: expected integer, got number",
    ),
    "feature_dim 10**15": (
        _set("feature_dim", value=10**15),
        "feature_dim: expected a value <= 1048576",
    ),
    "feature_dim a string": (
        _set("feature_dim", value="8"),
        'feature_dim: expected integer, got string "8"',
    ),
    "bytes negative": (
        _set("files", ENC, "bytes", value=-1),
        'files["encoder.onnx"].bytes: expected a value >= 0',
    ),
    "sha256 not hex": (
        _set("files", ENC, "sha256", value="xyz"),
        'files["encoder.onnx"].sha256: expected a string matching',
    ),
    "format_version -1": (
        _set("format_version", value=-1),
        "format_version: expected a value >= 1",
    ),
    "format_version true": (
        _set("format_version", value=True),
        "format_version: expected integer, got boolean",
    ),
    "format_version 1.0": (
        _set("format_version", value=1.0),
        "format_version: expected integer, got number",
    ),
    "one-element mean": (
        _set("input", "mean", value=[0.5]),
        "input.mean: expected 3 entries (one per channel",
    ),
    "four-element std": (
        _set("input", "std", value=[0.2] * 4),
        "input.std: expected 3 entries (one per channel",
    ),
    "negative std": (
        _set("input", "std", 1, value=-0.2),
        "input.std[1]: expected a value >= 0.001",
    ),
    "tiny std": (
        _set("input", "std", 1, value=1e-30),
        "input.std[1]: expected a value >= 0.001",
    ),
    "zero std": (_set("input", "std", 2, value=0), "input.std[2]: expected a value >= 0.001"),
    "NaN std": (
        _set("input", "std", 0, value=float("nan")),
        "input.std[0]: expected number, got non-finite number",
    ),
    "infinite mean": (
        _set("input", "mean", 0, value=float("inf")),
        "input.mean[0]: expected number, got non-finite number",
    ),
    "shape of 2": (_set("input", "shape", value=[3, 4]), "input.shape: expected at least 3"),
    "shape entry 0": (
        _set("input", "shape", 1, value=0),
        "input.shape[1]: expected a value >= 1",
    ),
    "shape entry huge": (
        _set("input", "shape", 1, value=10**12),
        "input.shape[1]: expected a value <= 65536",
    ),
    "pixel_scale 1": (
        _set("input", "pixel_scale", value=1.0),
        "input.pixel_scale: expected 1/255",
    ),
    "dtype float16": (
        _set("input", "dtype", value="float16"),
        'input.dtype: expected one of "float32"',
    ),
    "unknown encoder format": (
        _set("encoders", ENC, "format", value="coreml"),
        'encoders["encoder.onnx"].format: expected one of "tflite", "onnx"',
    ),
    "format not the suffix": (
        _set("encoders", ENC, "format", value="tflite"),
        """encoders["encoder.onnx"].format: expected 'onnx' for a .onnx file""",
    ),
    "encoder not in files": (
        _set("encoders", "other.onnx", value={"format": "onnx"}),
        'encoders["other.onnx"]: expected an encoder file also listed in files',
    ),
    "path in a file name": (
        _set("files", "../x.onnx", value={"sha256": "0" * 64, "bytes": 1}),
        'files["../x.onnx"]: bad entry name',
    ),
    "no files": (_set("files", value={}), "files: expected at least 1 entries"),
    "class_names a string": (
        _set("class_names", value="abc"),
        "class_names: expected array or null, got string",
    ),
    "class name a number": (
        _set("class_names", 0, value=3),
        "class_names[0]: expected string, got integer",
    ),
    "preprocess a list": (
        _set("preprocess", value=[1]),
        "preprocess: expected object or null, got array",
    ),
    "preprocess size wrong": (
        _set("preprocess", "size", value=[2, 2]),
        "preprocess: preprocess size [2, 2] must be the encoder input",
    ),
    "preprocess bad mode": (
        _set("preprocess", "mode", value="stretch"),
        "preprocess: bad preprocess",
    ),
    "provenance a list": (
        _set("provenance", value=[]),
        "provenance: expected object or null, got array",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_a_bundle_error_naming_the_field(copy, case):
    mutate, fragment = BAD_MANIFESTS[case]
    m = manifest_of(copy)
    mutate(m)
    put_manifest(copy, m)
    with pytest.raises(BundleError) as e:
        load_bundle(copy)
    assert type(e.value) is BundleError
    msg = str(e.value)
    assert fragment in msg and str(copy / MANIFEST) in msg and "\n" not in msg


def test_bad_manifest_is_refused_by_write_bundle_too(tmp_path, good):
    enc = good / "encoder.onnx"
    with pytest.raises(BundleError, match=r"input\.std\[1\]: expected a value >= 0.001"):
        make_bundle(tmp_path / "b", enc, normalization={"mean": MEAN, "std": [0.2, 1e-30, 0.2]})
    with pytest.raises(BundleError, match=r"class_names\[0\]: expected string"):
        make_bundle(tmp_path / "b", enc, class_names=[1, 2])
    with pytest.raises(BundleError, match="alpha: expected a value <= 1"):
        make_bundle(tmp_path / "b", enc, alpha=3.0)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[" * 100000, "nested too deeply"),
        ('{"format_version": 1, "provenance": ' + "[" * 100000, "nested too deeply"),
        ("{not json", "is not a valid manifest (Expecting property name"),
        ("[1, 2]", "a JSON object expected"),
        ("null", "a JSON object expected"),
        (b"\xff\xfe{}", "is not a valid manifest ('utf-8' codec"),
    ],
    ids=["deep-list", "deep-provenance", "not-json", "array", "null", "not-utf8"],
)
def test_unparsable_manifest(copy, text, fragment):
    path = copy / MANIFEST
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BundleError) as e:
        load_bundle(copy)
    assert fragment in str(e.value)


def test_manifest_over_the_size_limit_is_refused_unread(copy):
    m = manifest_of(copy)
    m["provenance"] = {"pad": "x" * MAX_MANIFEST_BYTES}
    put_manifest(copy, m)
    with pytest.raises(BundleError, match=f"larger than {MAX_MANIFEST_BYTES} bytes"):
        load_bundle(copy)


def test_manifest_a_directory_is_no_manifest(tmp_path):
    (tmp_path / MANIFEST).mkdir()
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(tmp_path)


def test_newer_format_version_is_a_format_version_error(copy):
    m = manifest_of(copy)
    m["format_version"] = 2
    m["files"] = "whatever a newer writer puts here"
    put_manifest(copy, m)
    with pytest.raises(FormatVersionError, match="format_version 2; this runtime reads"):
        load_bundle(copy)


def test_bytes_not_the_real_size_is_a_checksum_error(copy):
    m = manifest_of(copy)
    m["files"][ENC]["bytes"] += 1
    put_manifest(copy, m)
    with pytest.raises(ChecksumError, match=r'size mismatch for .encoder\.onnx.*files\["encoder'):
        load_bundle(copy)


def test_truncated_file_is_a_checksum_error_before_hashing(copy):
    data = (copy / ENC).read_bytes()
    (copy / ENC).write_bytes(data[:-10])
    with pytest.raises(ChecksumError, match="the file has"):
        load_bundle(copy)


def test_unreadable_file_is_a_bundle_error(copy, monkeypatch):
    import entropi.device.bundle as mod

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(mod, "sha256_file", denied)
    with pytest.raises(BundleError, match="cannot read bundle file .*Permission denied"):
        load_bundle(copy)


# --- encoder files damaged under a recomputed checksum -----------------------------------------


def test_garbage_onnx_is_a_bundle_error_naming_the_file(copy):
    (copy / ENC).write_bytes(b"\x08\x07garbage" * 50)
    rehash(copy, ENC)
    # the manifest and checksums are fine; the file is refused before onnxruntime opens it
    with pytest.raises(BundleError, match=r"encoder\.onnx is not a valid ONNX model"):
        load_bundle(copy)


def test_onnx_that_fails_to_run_is_a_bundle_error(copy):
    tiny_onnx(copy / ENC, bad_reshape=True)
    rehash(copy, ENC)
    with pytest.raises(BundleError, match=r"encoder\.onnx failed to run in onnxruntime"):
        load_bundle(copy).encoder()


def test_replaced_weights_do_not_reproduce_the_check_outputs(copy):
    tiny_onnx(copy / ENC, seed=1)  # a valid model, another network
    rehash(copy, ENC)
    with pytest.raises(
        BundleError,
        match=r"encoder encoder\.onnx does not reproduce its recorded check outputs: "
        r"max abs diff \S+ > tol \S+",
    ):
        load_bundle(copy).encoder()


def test_one_flipped_weight_byte_is_refused(copy):
    data = bytearray((copy / ENC).read_bytes())
    w = np.random.default_rng(0).standard_normal((48, DIM)).astype(np.float32)
    at = bytes(data).find(w.tobytes())
    assert at > 0
    data[at + 3] ^= 0x40  # the exponent of the first weight
    (copy / ENC).write_bytes(bytes(data))
    rehash(copy, ENC)
    with pytest.raises(BundleError, match="does not reproduce its recorded check outputs"):
        load_bundle(copy).encoder()


def test_fault_campaign_onnx_never_escapes_as_another_exception(copy, tmp_path):
    """60 damaged copies (byte flips, truncation, zeroed runs), checksums recomputed: each is
    refused with a BundleError or reproduces its recorded outputs."""
    data = (copy / ENC).read_bytes()
    rng = np.random.default_rng(123)
    refused = 0
    for i in range(60):
        d = bytearray(data)
        kind = i % 3
        if kind == 0:
            for pos in rng.integers(0, len(d), rng.integers(1, 9)):
                d[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:
            d = d[: int(rng.integers(1, len(d)))]
        else:
            start = int(rng.integers(0, len(d) - 16))
            d[start : start + 16] = bytes(16)
        (copy / ENC).write_bytes(bytes(d))
        rehash(copy, ENC)
        try:
            load_bundle(copy).encoder()
        except BundleError:
            refused += 1
    assert refused >= 40


def _rewrite_check(b, arrays):
    from entropi.device._npz import save_npz

    save_npz(b / CHECK, arrays)
    rehash(b, CHECK)


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"outputs.encoder.onnx": np.zeros((4, DIM), np.float32)}, "has no 'inputs' member"),
        (
            {
                "inputs": np.zeros((4, *SHAPE), np.float64),
                "outputs.encoder.onnx": np.zeros((4, DIM), np.float32),
            },
            "member 'inputs' is float64(4, 3, 4, 4); expected float32 (4, 3, 4, 4)",
        ),
        (
            {
                "inputs": np.zeros((4, *SHAPE), np.float32),
                "outputs.encoder.onnx": np.zeros((3, DIM), np.float32),
            },
            "member 'outputs.encoder.onnx' is float32(3, 8); expected float32 (4, 8)",
        ),
        (
            {
                "inputs": np.zeros((4, 3, 5, 5), np.float32),
                "outputs.encoder.onnx": np.zeros((4, DIM), np.float32),
            },
            "expected float32 (4, 3, 4, 4)",
        ),
        (
            {
                "inputs": np.full((4, *SHAPE), np.nan, np.float32),
                "outputs.encoder.onnx": np.zeros((4, DIM), np.float32),
            },
            "non-finite check values",
        ),
    ],
    ids=["no-inputs", "float64", "rows", "input-shape", "nan"],
)
def test_malformed_check_file(copy, arrays, fragment):
    _rewrite_check(copy, arrays)
    with pytest.raises(BundleError, match="check") as e:
        load_bundle(copy).encoder()
    assert fragment in str(e.value)


def test_check_file_not_a_zip(copy):
    (copy / CHECK).write_bytes(b"not a zip at all")
    rehash(copy, CHECK)
    with pytest.raises(BundleError, match="is not a valid check file"):
        load_bundle(copy).encoder()


def test_pickled_check_member_is_refused(copy):
    import zipfile

    with zipfile.ZipFile(copy / CHECK, "w") as zf:
        for name in ("inputs", "outputs.encoder.onnx"):
            buf = __import__("io").BytesIO()
            np.save(buf, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
            zf.writestr(f"{name}.npy", buf.getvalue())
    rehash(copy, CHECK)
    with pytest.raises(BundleError, match=r"check\.npz.*(unpickle|expected float32)"):
        load_bundle(copy).encoder()


def test_bundle_without_check_file_still_loads(copy):
    """Bundles written before check.npz existed: no check, the encoder runs."""
    m = manifest_of(copy)
    del m["files"][CHECK]
    put_manifest(copy, m)
    (copy / CHECK).unlink()
    b = load_bundle(copy)
    assert b.check_file is None
    assert b.encoder()(np.zeros((2, *SHAPE), np.float32)).shape == (2, DIM)


def test_check_outputs_missing_for_the_chosen_encoder_skip_the_check(copy):
    with np.load(copy / CHECK) as z:
        inputs = z["inputs"]
    _rewrite_check(copy, {"inputs": inputs, "outputs.other.onnx": np.zeros((4, DIM), np.float32)})
    assert load_bundle(copy).encoder()(inputs).shape == (4, DIM)


def test_cli_prints_one_line_and_exits_2(copy, tmp_path, capsys):
    from entropi.device.cli import main

    tiny_onnx(copy / ENC, seed=1)
    rehash(copy, ENC)
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 4, 4, 3), np.uint8), y_train=[0, 1, 0, 1])
    argv = ["train", "--bundle", str(copy), "--data", str(tmp_path / "d.npz")]
    assert main([*argv, "--out", str(tmp_path / "head")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not reproduce its recorded check outputs" in err and "\n" not in err


# --- the validator and its schema --------------------------------------------------------------


def test_json_path():
    assert json_path(()) == "(root)"
    assert json_path(("input", "std", 1)) == "input.std[1]"
    assert json_path(("files", "encoder.onnx", "bytes")) == 'files["encoder.onnx"].bytes'


def test_validator_keywords():
    schema = {
        "type": "object",
        "required": ["a"],
        "additionalProperties": False,
        "properties": {
            "a": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"enum": [1, "x"]}},
            "b": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "c": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3},
        },
    }
    check({"a": [1, "x"], "b": 0.5, "c": "abc"}, schema)
    bad = [
        ({}, "a: required entry is missing"),
        ({"a": []}, "a: expected at least 1 entries"),
        ({"a": [1, 1, 1]}, "a: expected at most 2 entries"),
        ({"a": [True]}, 'a[0]: expected one of 1, "x", got true'),
        ({"a": [1], "b": 0}, "b: expected a value > 0"),
        ({"a": [1], "b": 1}, "b: expected a value < 1"),
        ({"a": [1], "c": "A"}, "c: expected a string matching"),
        ({"a": [1], "c": "abcd"}, "c: expected at most 3 characters"),
        ({"a": [1], "z": 1}, "z: no such entry is allowed here"),
        ([], "(root): expected object, got array"),
    ]
    for doc, fragment in bad:
        with pytest.raises(SchemaViolation) as e:
            check(doc, schema)
        assert fragment in str(e.value), (doc, str(e.value))


def test_schema_uses_only_supported_keywords_and_is_valid_draft_2020_12():
    schema = load_schema("manifest.schema.json")
    assert schema["properties"]["input"]["properties"]["std"]["items"]["minimum"] == 1e-3
    from entropi.device.schema import _check_keywords

    with pytest.raises(ValueError, match="unsupported schema keyword"):
        _check_keywords({"oneOf": []}, "x")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_error_is_an_entropi_value_error():
    assert issubclass(BundleError, EntropiError) and issubclass(BundleError, ValueError)
    assert issubclass(ChecksumError, BundleError) and issubclass(FormatVersionError, BundleError)


def test_read_manifest_returns_the_checked_manifest(good):
    m = read_manifest(good)
    assert m["feature_dim"] == DIM and m["input"]["shape"] == SHAPE


# --- TFLite ------------------------------------------------------------------------------------


@pytest.mark.tflite
def test_tflite_damaged_weights_are_refused(tmp_path):
    """The LiteRT interpreter runs a TFLite file with damaged weights without complaint: only the
    recorded check outputs catch it."""
    litert_torch = pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    import torch

    torch.manual_seed(0)
    lin = torch.nn.Linear(48, DIM)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    litert_torch.convert(model, (torch.randn(1, *SHAPE),)).export(str(tmp_path / "e.tflite"))
    b = write_bundle(
        tmp_path / "b",
        encoder_files={"encoder.tflite": tmp_path / "e.tflite"},
        input_shape=SHAPE,
        normalization={"mean": MEAN, "std": STD},
        feature_dim=DIM,
    )
    assert load_bundle(b).encoder_format == "tflite"
    load_bundle(b).encoder()  # reproduces its own outputs
    data = bytearray((b / "encoder.tflite").read_bytes())
    bias = lin.bias.detach().numpy().astype(np.float32).tobytes()
    at = bytes(data).find(bias)
    assert at > 0, "bias bytes not found verbatim in the TFLite file"
    data[at + 3] ^= 0x40
    (b / "encoder.tflite").write_bytes(bytes(data))
    rehash(b, "encoder.tflite")
    with pytest.raises(BundleError, match="encoder.tflite does not reproduce"):
        load_bundle(b).encoder()
    (b / "encoder.tflite").write_bytes(b"TFL3" + bytes(200))
    rehash(b, "encoder.tflite")
    with pytest.raises(BundleError, match="could not be loaded by the LiteRT interpreter"):
        load_bundle(b).encoder()


# --- host: export keyed by the rung file, stale temp folders ------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_remove_stale_tmp_keeps_live_and_recent_folders(tmp_path):
    from entropi.export.exporter import remove_stale_tmp

    out = tmp_path / "export"
    old = time.time() - 10 * 24 * 3600
    names = {
        "dead": f".export.{_dead_pid()}.abcd_123.tmp",
        "legacy": ".export.k2j4h5g6.tmp",
        "live": f".export.{os.getpid()}.zzzzzzzz.tmp",
        "recent": ".export.recent00.tmp",
        "other": ".exports.abcdefgh.tmp",
        "file": ".export.fileabcd.tmp",
    }
    for key, name in names.items():
        p = tmp_path / name
        if key == "file":
            p.write_text("x")
        else:
            p.mkdir()
            (p / "encoder.onnx").write_bytes(b"x")
        if key != "recent":
            os.utime(p, (old, old))
    removed = remove_stale_tmp(out)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["legacy"]])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {names[k] for k in ("live", "recent", "other", "file")}


@pytest.mark.slow
def test_ensure_export_is_keyed_by_the_rung_file(tmp_path, monkeypatch):
    from test_export_rung import write_run

    from entropi.host.deployment import rung_export as host_bundle
    from entropi.host.deployment.rung_export import ensure_export, rung_hash
    from entropi.host.run.rundir import RunDir

    run = RunDir(write_run(tmp_path / "run"))
    stale = tmp_path / "run" / ".export.q1w2e3r4.tmp"
    stale.mkdir()
    old = time.time() - 3600 * 24
    os.utime(stale, (old, old))
    out, info = ensure_export(run, 1, formats=("onnx",), forms=("sparse",))
    assert not stale.exists()
    assert info["rung_sha256"] == rung_hash(run, 1) == sha256_file(run.rung(1))
    assert json.loads((out / "export.json").read_text())["rung_sha256"] == info["rung_sha256"]

    calls = []
    real = host_bundle.export_encoder
    monkeypatch.setattr(
        host_bundle, "export_encoder", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    assert ensure_export(run, 1, formats=("onnx",), forms=("sparse",)) == (out, info)
    assert calls == []
    # a replaced rung (another file at the same index) ships a fresh export
    shutil.copyfile(run.rung(0), run.rung(1))
    _, info2 = ensure_export(run, 1, formats=("onnx",), forms=("sparse",))
    assert calls == [1] and info2["rung_sha256"] == sha256_file(run.rung(0))
    # an exported file changed under export.json is exported again
    (out / "encoder.onnx").write_bytes(b"tampered")
    _, info3 = ensure_export(run, 1, formats=("onnx",), forms=("sparse",))
    assert (
        calls == [1, 1]
        and sha256_file(out / "encoder.onnx") == info3["files"]["encoder.onnx"]["sha256"]
    )
    # an export.json from before rung_sha256 existed is redone
    legacy = {**info3}
    del legacy["rung_sha256"]
    (out / "export.json").write_text(json.dumps(legacy))
    ensure_export(run, 1, formats=("onnx",), forms=("sparse",))
    assert calls == [1, 1, 1]


TFLITE_CAMPAIGN = """
import json, shutil, sys
from pathlib import Path
import numpy as np
from entropi.device import load_bundle
from entropi.device.bundle import sha256_file
from entropi.device.errors import BundleError
src, work = Path(sys.argv[1]), Path(sys.argv[2])
data = (src / "encoder.tflite").read_bytes()
for i in range(60):
    rng = np.random.default_rng(1000 + i)
    d = bytearray(data)
    if i % 3 == 0:
        for pos in rng.integers(0, len(d), rng.integers(1, 9)):
            d[pos] ^= int(rng.integers(1, 256))
    elif i % 3 == 1:
        d = d[: int(rng.integers(1, len(d)))]
    else:
        s = int(rng.integers(0, len(d) - 16))
        d[s : s + 16] = bytes(16)
    b = work / f"copy{i}"
    shutil.copytree(src, b)
    (b / "encoder.tflite").write_bytes(bytes(d))
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["encoder.tflite"].update(sha256=sha256_file(b / "encoder.tflite"), bytes=len(d))
    (b / "manifest.json").write_text(json.dumps(m))
    print(i, end=" ", flush=True)
    try:
        load_bundle(b).encoder()
        print("reproduced", flush=True)
    except BundleError:
        print("refused", flush=True)
    except Exception as e:
        print("escaped", type(e).__name__, flush=True)
"""


@pytest.mark.tflite
def test_fault_campaign_tflite_is_refused_or_reproduces(tmp_path):
    """60 damaged TFLite files, checksums recomputed (before the check outputs, 51 of 60 were
    accepted and trained on): each is refused with a BundleError or reproduces its recorded
    outputs (damage in bytes the graph never reads). In a child process, so that an interpreter
    that crashes outright fails this test instead of the test run."""
    litert_torch = pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, DIM),
    ).eval()  # fmt: skip
    litert_torch.convert(model, (torch.randn(1, *SHAPE),)).export(str(tmp_path / "e.tflite"))
    b = write_bundle(
        tmp_path / "b",
        encoder_files={"encoder.tflite": tmp_path / "e.tflite"},
        input_shape=SHAPE,
        normalization={"mean": MEAN, "std": STD},
        feature_dim=DIM,
    )
    (tmp_path / "work").mkdir()
    p = subprocess.run(
        [sys.executable, "-c", TFLITE_CAMPAIGN, str(b), str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = p.stdout.split("\n")
    assert p.returncode == 0, f"interpreter crashed (rc {p.returncode}) after: {lines[-3:]}"
    outcomes = [line.split(" ", 1)[1] for line in lines if line.strip()]
    assert len(outcomes) == 60 and not [o for o in outcomes if o.startswith("escaped")]
    assert outcomes.count("refused") >= 40  # most damage changes what the graph computes
