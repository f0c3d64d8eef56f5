"""Hostile input, round two (issue 22), the device layer's infrastructure: locks and folders that
never write through a planted link (D2), overwrites that replace only what entropi wrote (D14),
bundles whose every file is hashed and whose encoder is checked before anything is allocated or
run (D19, D1, D8), and error lines that cannot carry terminal codes (D17).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tracemalloc

import numpy as np
import pytest
from test_bundle_hostile import make_bundle, tiny_onnx

from entropi.common.errors import EntropiError, LinkError, OverwriteError, one_line
from entropi.common.files import (
    atomic_dir,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    ensure_real_dir,
)
from entropi.common.lock import LockError, lock_folder
from entropi.device import BundleError, DataError
from entropi.device import encoder as encoder_mod
from entropi.device._npz import npz_names
from entropi.device._onnx import summarize_onnx
from entropi.device.bundle import CHECK, MANIFEST, load_bundle, sha256_file, write_bundle

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def tiny_enc(tmp_path_factory):
    """A tiny ONNX encoder file (3 x 4 x 4 -> 8 features)."""
    return tiny_onnx(tmp_path_factory.mktemp("h2enc") / "enc.onnx")


# --- D2: nothing entropi writes follows a link it did not create --------------------------------


def test_lock_refuses_a_planted_symlink(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    out = tmp_path / "H"
    out.mkdir()
    (out / ".entropi.lock").symlink_to(notes)
    with pytest.raises(LockError, match=r"\.entropi\.lock is a symbolic link"):
        lock_folder(out)
    assert notes.read_text() == "my notes\n"


def test_lock_refuses_a_dangling_symlink_and_creates_nothing(tmp_path):
    out = tmp_path / "H"
    out.mkdir()
    (out / ".entropi.lock").symlink_to(tmp_path / "planted")
    with pytest.raises(LockError, match="symbolic link"):
        lock_folder(out)
    assert not (tmp_path / "planted").exists()


def test_lock_refuses_a_planted_hard_link(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    out = tmp_path / "H"
    out.mkdir()
    os.link(notes, out / ".entropi.lock")
    with pytest.raises(LockError, match="is a hard link to another file"):
        lock_folder(out)
    assert notes.read_text() == "my notes\n"


def test_lock_refuses_a_fifo(tmp_path):
    out = tmp_path / "H"
    out.mkdir()
    os.mkfifo(out / ".entropi.lock")
    with pytest.raises(LockError, match="not a regular file"):
        lock_folder(out)


def test_ensure_real_dir_creates_accepts_and_refuses(tmp_path):
    made = ensure_real_dir(tmp_path / "a" / "b")
    assert made.is_dir() and not made.is_symlink()
    assert ensure_real_dir(made) == made  # an existing real folder is fine
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(LinkError, match="link is a symbolic link"):
        ensure_real_dir(tmp_path / "link")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(LinkError, match="symbolic link"):
        ensure_real_dir(tmp_path / "dangling")
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(LinkError, match="not a folder"):
        ensure_real_dir(tmp_path / "file")
    assert issubclass(LinkError, EntropiError)


def test_atomic_write_refuses_a_symlinked_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "H"
    out.mkdir()
    (out / ".cache").symlink_to(outside, target_is_directory=True)
    with pytest.raises(LinkError, match=r"\.cache is a symbolic link"):
        atomic_write_bytes(out / ".cache" / "train.npy", b"data")
    assert list(outside.iterdir()) == []


def test_atomic_write_replaces_a_link_at_its_name_not_its_target(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    (tmp_path / "out.json").symlink_to(notes)
    atomic_write_text(tmp_path / "out.json", "{}\n")
    assert notes.read_text() == "my notes\n"
    assert not (tmp_path / "out.json").is_symlink()
    assert (tmp_path / "out.json").read_text() == "{}\n"


# --- D14: overwrite replaces only a folder entropi wrote -----------------------------------------


def _user_folder(path):
    (path / "sub").mkdir(parents=True)
    (path / "thesis.txt").write_text("four years\n")
    (path / "sub" / "photo.jpg").write_bytes(b"\xff\xd8 jpeg")
    return path


def _survived(path):
    return (path / "thesis.txt").read_text() == "four years\n" and (
        path / "sub" / "photo.jpg"
    ).read_bytes() == b"\xff\xd8 jpeg"


def _temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_overwrite_refuses_a_folder_entropi_did_not_write(tmp_path, tiny_enc):
    out = _user_folder(tmp_path / "DIR")
    with pytest.raises(OverwriteError, match="has no manifest.json, so it is not a bundle"):
        make_bundle(out, tiny_enc, overwrite=True)
    assert _survived(out) and _temporaries(tmp_path) == []


def test_overwrite_refuses_a_bundle_holding_unlisted_files(tmp_path, tiny_enc):
    out = make_bundle(tmp_path / "B", tiny_enc)
    _user_folder(out)
    with pytest.raises(OverwriteError, match=r"does not list \('sub', 'thesis.txt'\)"):
        make_bundle(out, tiny_enc, overwrite=True)
    assert _survived(out)


def test_overwrite_replaces_a_bundle(tmp_path, tiny_enc):
    out = make_bundle(tmp_path / "B", tiny_enc, alpha=0.5)
    make_bundle(out, tiny_enc, alpha=0.25, overwrite=True)
    assert load_bundle(out).manifest["alpha"] == 0.25 and _temporaries(tmp_path) == []


@pytest.mark.parametrize("which", [".", ".."])
def test_overwrite_of_the_current_folder_or_a_parent_is_refused_cleanly(
    tmp_path, tiny_enc, monkeypatch, which
):
    here = make_bundle(tmp_path / "A" / "B", tiny_enc)  # even a bundle: cwd cannot move
    monkeypatch.chdir(here)
    with pytest.raises(OverwriteError, match="the current folder or one of its parents"):
        make_bundle(which, tiny_enc, overwrite=True)
    assert _temporaries(tmp_path / "A") == [] and _temporaries(tmp_path) == []
    assert load_bundle(here).feature_dim == 8


def test_atomic_dir_refuses_a_link_and_a_file(tmp_path):
    real = _user_folder(tmp_path / "real")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with pytest.raises(LinkError, match="symbolic link"), atomic_dir(tmp_path / "link"):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(OverwriteError, match="not a folder"):
        with atomic_dir(tmp_path / "file", overwrite=True, foreign=lambda p: None):
            pass
    assert _survived(real) and _temporaries(tmp_path) == []


def test_atomic_dir_moves_the_old_folder_back_when_the_rename_fails(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    real_replace = os.replace

    def failing(src, dst):
        if str(src).endswith(".tmp") and str(dst) == str(out):  # the new folder into place
            raise OSError(16, "Device or resource busy", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="busy"):
        with atomic_dir(out, overwrite=True, foreign=lambda p: None) as tmp:
            (tmp / "manifest.json").write_text("new")
    assert (out / "manifest.json").read_text() == "old" and _temporaries(tmp_path) == []


# --- D19, D1, D8: a bundle's encoder is inspected before an interpreter allocates or runs it ----


def _bundle_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _set_encoder(b, model, *, drop_check=True, **save):
    """Replace the bundle's encoder.onnx by ``model`` (checksum recomputed, as an attacker or a
    careless edit would); ``drop_check`` also removes check.npz from the bundle."""
    onnx.save(model, str(b / "encoder.onnx"), **save)
    m = json.loads((b / MANIFEST).read_text())
    if drop_check and CHECK in m["files"]:
        (b / CHECK).unlink()
        del m["files"][CHECK]
    m["files"]["encoder.onnx"] = {
        "sha256": sha256_file(b / "encoder.onnx"),
        "bytes": (b / "encoder.onnx").stat().st_size,
    }
    (b / MANIFEST).write_text(json.dumps(m))


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory, tiny_enc):
    return make_bundle(tmp_path_factory.mktemp("h2good") / "bundle", tiny_enc)


def test_unlisted_external_data_is_refused(good_bundle, tiny_enc, tmp_path):
    b = _bundle_copy(good_bundle, tmp_path / "b")
    model = onnx.load(str(tiny_enc))
    _set_encoder(
        b,
        model,
        drop_check=False,  # the weights are the same: the check outputs would still agree
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (b / "weights.bin").is_file()
    with pytest.raises(BundleError, match=r"external data from 'weights.bin', not a file listed"):
        load_bundle(b)
    m = json.loads((b / MANIFEST).read_text())  # listed and hashed: loads and reproduces
    m["files"]["weights.bin"] = {
        "sha256": sha256_file(b / "weights.bin"),
        "bytes": (b / "weights.bin").stat().st_size,
    }
    (b / MANIFEST).write_text(json.dumps(m))
    load_bundle(b).encoder()


def test_external_data_outside_the_bundle_is_refused(good_bundle, tiny_enc, tmp_path):
    b = _bundle_copy(good_bundle, tmp_path / "b")
    model = onnx.load(str(tiny_enc))
    w = next(t for t in model.graph.initializer if t.name == "w")
    (tmp_path / "secret.bin").write_bytes(numpy_helper.to_array(w).tobytes())
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../secret.bin")
    _set_encoder(b, model, drop_check=False)
    with pytest.raises(BundleError, match=r"external data from '\.\./secret\.bin'"):
        load_bundle(b)


@pytest.mark.parametrize("with_check", [False, True])
def test_manifest_input_shape_not_the_files_is_refused_before_any_allocation(
    good_bundle, tmp_path, with_check
):
    b = _bundle_copy(good_bundle, tmp_path / "b")
    m = json.loads((b / MANIFEST).read_text())
    m["input"]["shape"] = [3, 8192, 8192]
    m["preprocess"]["size"] = [8192, 8192]
    if not with_check:
        (b / CHECK).unlink()
        del m["files"][CHECK]
    (b / MANIFEST).write_text(json.dumps(m))
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match=r"\[C, H, W\] = \[3, 4, 4\].*input.shape is "):
            load_bundle(b).encoder()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # one input of the manifest's shape would be 805 MB


def _loop_model(trips=10**15):
    """(N, 3, 4, 4) -> 8 features, through a Loop of ``trips`` iterations that adds nothing."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    w = np.zeros((48, 8), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=1),
            helper.make_node("Loop", ["trips", "cond", "f"], ["g"], body=body),
            helper.make_node("MatMul", ["g", "w"], ["y"]),
        ],
        "looping",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [
            numpy_helper.from_array(np.array(trips, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(w, "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_an_op_no_export_writes_is_refused_by_name(good_bundle, tmp_path):
    b = _bundle_copy(good_bundle, tmp_path / "b")
    _set_encoder(b, _loop_model())
    with pytest.raises(BundleError, match=r"operators an entropi export never writes: 'Loop'"):
        load_bundle(b)  # refused before onnxruntime sees it: nothing hangs


def test_a_custom_domain_op_and_a_local_function_are_refused(good_bundle, tiny_enc, tmp_path):
    b = _bundle_copy(good_bundle, tmp_path / "b")
    model = onnx.load(str(tiny_enc))
    model.graph.node[0].domain = "com.evil"
    _set_encoder(b, model)
    with pytest.raises(BundleError, match=r"'com.evil::Flatten'"):
        load_bundle(b)
    model = onnx.load(str(tiny_enc))
    model.functions.add(name="f", domain="local")
    _set_encoder(b, model)
    with pytest.raises(BundleError, match="1 local functions"):
        load_bundle(b)


def test_summarize_onnx_agrees_with_the_onnx_package(tiny_enc, tmp_path):
    model = _loop_model(3)
    model.graph.sparse_initializer.append(
        helper.make_sparse_tensor(
            numpy_helper.from_array(np.ones(2, np.float32), "s"),
            numpy_helper.from_array(np.array([0, 5], np.int64), "s.indices"),
            [2, 4],
        )
    )
    model.graph.input.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 4]))
    s = summarize_onnx(model.SerializeToString())
    assert (
        s.ops
        == {("", n.op_type) for n in model.graph.node}
        == {
            ("", "Flatten"),
            ("", "Loop"),
            ("", "MatMul"),
        }
    )
    assert s.inputs == [("x", ("n", 3, 4, 4))] and s.subgraphs == 1 and s.functions == 0
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="d.bin",
              size_threshold=0)  # fmt: skip
    assert summarize_onnx((tmp_path / "m.onnx").read_bytes()).external == {"d.bin"}


def test_summarize_onnx_raises_only_value_error_on_damaged_bytes(tiny_enc):
    data = tiny_enc.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(300):
        d = bytearray(data[: int(rng.integers(1, len(data)))] if i % 2 else data)
        for pos in rng.integers(0, len(d), 4):
            d[pos] = int(rng.integers(0, 256))
        try:
            summarize_onnx(bytes(d))
            outcomes["ok"] += 1
        except ValueError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50


# --- wording: a full disk names the file, a FIFO or device is no "missing" file ------------------


def test_a_full_disk_names_the_file(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "head" / "checkpoint.npz", full)
    assert one_line(info.value) == f"No space left on device: {tmp_path}/head/checkpoint.npz"
    assert list((tmp_path / "head").iterdir()) == []


def test_a_fifo_or_device_npz_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "x.npz")
    (tmp_path / "zero.npz").symlink_to("/dev/zero")
    for name in ("x.npz", "zero.npz"):  # refused at once: nothing blocks or reads forever
        with pytest.raises(DataError, match="is not a regular file"):
            npz_names(tmp_path / name)


def test_a_fifo_or_device_in_a_bundle_is_not_called_missing(good_bundle, tmp_path):
    b = _bundle_copy(good_bundle, tmp_path / "b")
    (b / CHECK).unlink()
    os.mkfifo(b / CHECK)
    with pytest.raises(BundleError, match="'check.npz' in .* is not a regular file"):
        load_bundle(b)
    (b / CHECK).unlink()
    (b / CHECK).symlink_to("/dev/zero")
    with pytest.raises(BundleError, match="'check.npz' in .* is not a regular file"):
        load_bundle(b)
    (b / CHECK).unlink()
    with pytest.raises(BundleError, match="'check.npz' listed in manifest.json is missing"):
        load_bundle(b)


# --- D17: an error line cannot carry terminal codes ---------------------------------------------

HOSTILE_NAME = "\x1b[31mRED\x1b[0m\x07\x00\x9b\u202e.jpg"


def test_one_line_escapes_control_characters():
    e = FileNotFoundError(errno.ENOENT, "No such file or directory", "/d/" + HOSTILE_NAME)
    line = one_line(e)
    assert line == "No such file or directory: /d/\\x1b[31mRED\\x1b[0m\\x07\\x00\\x9b\\u202e.jpg"
    assert line.isprintable()
    assert one_line(ValueError("a\nb\tc é ü 日本")) == "a b c é ü 日本"  # text stays text
    assert one_line(ValueError("bad name '\udcff'")) == "bad name '\\udcff'"  # undecodable byte


def test_device_cli_error_line_is_escaped(good_bundle, tmp_path, capsys):
    from entropi.device.cli import main

    bad = tmp_path / HOSTILE_NAME.replace("\x00", "")
    rc = main(
        ["train", "--bundle", str(good_bundle), "--data", str(bad), "--out", str(tmp_path / "h")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "\\x1b[31mRED" in err and err.count("\n") == 1
    assert all(c.isprintable() for c in err.rstrip("\n")), err


# --- the class: other folders written through a planted link ------------------------------------


def test_export_into_a_folder_an_export_did_not_write_is_refused(tmp_path):
    from synthetic import fake_rung_meta, synthetic_encoder

    from entropi.export import ExportError, export_encoder

    out = _user_folder(tmp_path / "DIR")
    (out / "encoder.onnx").write_bytes(b"my own model")  # would be replaced
    enc = synthetic_encoder("smallnet", alpha=0.5, seed=0)
    with pytest.raises(ExportError, match=r"an export did not write \(it holds 'sub', 'thesis"):
        export_encoder(enc, fake_rung_meta(enc, "smallnet"), out, formats="onnx")
    assert _survived(out) and (out / "encoder.onnx").read_bytes() == b"my own model"


def test_export_into_a_planted_link_is_refused_before_any_work(tmp_path):
    from synthetic import fake_rung_meta, synthetic_encoder

    from entropi.export import ExportError, export_encoder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "export").symlink_to(elsewhere, target_is_directory=True)
    enc = synthetic_encoder("smallnet", alpha=0.5, seed=0)
    with pytest.raises(ExportError, match="symbolic link entropi did not create"):
        export_encoder(enc, fake_rung_meta(enc, "smallnet"), tmp_path / "export", formats="onnx")
    assert list(elsewhere.iterdir()) == [] and sorted(os.listdir(tmp_path)) == [
        "elsewhere",
        "export",
    ]


@pytest.mark.tflite
def test_tflite_op_and_input_shape_are_checked_before_allocation(tmp_path):
    litert_torch = pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    import torch

    class Sine(torch.nn.Module):  # SIN: no entropi export writes it
        def forward(self, x):
            return torch.sin(x.flatten(1)[:, :8])

    litert_torch.convert(Sine().eval(), (torch.randn(1, 3, 4, 4),)).export(
        str(tmp_path / "s.tflite")
    )
    args = dict(normalization={"mean": [0.5] * 3, "std": [0.25] * 3}, feature_dim=8)
    with pytest.raises(BundleError, match=r"operators an entropi export never writes: .*'SIN'"):
        write_bundle(tmp_path / "b", encoder_files={"e.tflite": tmp_path / "s.tflite"},
                     input_shape=[3, 4, 4], **args)  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:  # the op allowed: the input shape is still checked
        mp.setattr(encoder_mod, "TFLITE_OPS", encoder_mod.TFLITE_OPS | {"SIN", "SLICE"})
        with pytest.raises(BundleError, match=r"\[C, H, W\] = \[3, 4, 4\].*is \[3, 64, 64\]"):
            write_bundle(tmp_path / "b", encoder_files={"e.tflite": tmp_path / "s.tflite"},
                         input_shape=[3, 64, 64], **args)  # fmt: skip
    assert not (tmp_path / "b").exists()


def test_export_verification_refuses_a_file_the_device_would_refuse(tiny_enc):
    from entropi.export import ExportError
    from entropi.export.verify import device_ops_check

    device_ops_check(tiny_enc, "onnx")  # an encoder's operators: accepted
    with pytest.raises(ExportError, match=r"the device runtime refuses: Loop; add them to "):
        device_ops_check(_loop_model().SerializeToString(), "onnx")


def test_an_encoder_of_variable_input_size_takes_a_bounded_manifest_size(tmp_path):
    from entropi.device.encoder import MAX_VARIABLE_INPUT, inspect_encoder

    model = onnx.load(str(tiny_onnx(tmp_path / "fixed.onnx")))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"  # [n, 3, h, w]
    onnx.save(model, str(tmp_path / "any.onnx"))
    assert inspect_encoder(tmp_path / "any.onnx", "onnx", input_shape=(3, 16, 24)) == (3, -1, -1)
    with pytest.raises(BundleError, match=f"more than the {MAX_VARIABLE_INPUT} this runtime"):
        inspect_encoder(tmp_path / "any.onnx", "onnx", input_shape=(3, 8192, 8192))
    with pytest.raises(BundleError, match=r"\[3, -1, -1\] .* input.shape is \[1, 16, 24\]"):
        inspect_encoder(tmp_path / "any.onnx", "onnx", input_shape=(1, 16, 24))


def test_a_fifo_or_device_head_is_not_called_missing(tmp_path):
    from entropi.device.head import load_head

    os.mkfifo(tmp_path / "head.npz")
    (tmp_path / "zero.npz").symlink_to("/dev/zero")
    for name in ("head.npz", "zero.npz"):
        with pytest.raises(EntropiError, match="is not a regular file"):
            load_head(tmp_path / name)
    with pytest.raises(EntropiError, match="no head at"):
        load_head(tmp_path / "none.npz")
