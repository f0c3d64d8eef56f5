"""Hostile input, round two (issue 22), the device layer's infrastructure: locks and folders that
never write through a planted link (D2), overwrites that replace only what entropi wrote (D14),
bundles whose every file is hashed and whose encoder is checked before anything is allocated or
run (D19, D1, D8), and error lines that cannot carry terminal codes (D17).
"""

from __future__ import annotations

import os

import pytest
from test_bundle_hostile import make_bundle, tiny_onnx

from entropi.device.bundle import load_bundle
from entropi.device.errors import EntropiError, LinkError, OverwriteError
from entropi.device.io import atomic_dir, atomic_write_bytes, atomic_write_text, ensure_real_dir
from entropi.device.lock import LockError, lock_folder


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
