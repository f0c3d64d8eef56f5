"""Hostile input, round two (issue 22), the device layer's infrastructure: locks and folders that
never write through a planted link (D2), overwrites that replace only what entropi wrote (D14),
bundles whose every file is hashed and whose encoder is checked before anything is allocated or
run (D19, D1, D8), and error lines that cannot carry terminal codes (D17).
"""

from __future__ import annotations

import os

import pytest

from entropi.device.errors import EntropiError, LinkError
from entropi.device.io import atomic_write_bytes, atomic_write_text, ensure_real_dir
from entropi.device.lock import LockError, lock_folder

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
