"""Hostile and broken inputs of the device runtime: every one ends in a specific EntropiError
naming the file and what was expected (never a zip/PIL/OS traceback, never silent nonsense).

The files are made here: tiny PNGs with PIL, tiny ``.npz`` with numpy, and ``.npz`` with lying
``.npy`` headers written by hand into a zip.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from entropi.common.errors import EntropiError
from entropi.device import DataError, ResumeError, TrainConfig, train_head
from entropi.device._npz import load_npz, npy_member, read_npz_into, save_npz
from entropi.device.data import load_images
from entropi.device.errors import TrainConfigError
from entropi.device.head import Head, load_head, save_head
from entropi.device.imageprep import MAX_IMAGE_PIXELS, Preprocess, read_image_file

P32 = Preprocess()


# --- helpers -----------------------------------------------------------------------------------


def _npy_bytes(descr: str, shape: tuple, data: bytes = b"") -> bytes:
    """A ``.npy`` v1.0 file: a hand-made header (any shape it likes) followed by ``data``."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(header) + 1) % 64
    header = (header + " " * pad + "\n").encode()
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def _lying_npz(path, members: dict[str, bytes], compress: bool = False):
    """A zip of raw ``.npy`` member bytes (the zip directory is honest, the headers need not)."""
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode) as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)
    return path


def _images(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 3


def _flip_data_byte(path, needle: bytes) -> None:
    """Flip one byte of the stored array data that starts with ``needle``."""
    raw = bytearray(path.read_bytes())
    i = raw.index(needle) + len(needle) // 2
    raw[i] ^= 0x01
    path.write_bytes(bytes(raw))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (8-bit RGB) with next to no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# --- .npz files --------------------------------------------------------------------------------


def test_empty_truncated_and_garbage_npz_are_data_errors(tmp_path):
    x, y = _images()
    np.savez(tmp_path / "ok.npz", x_train=x, y_train=y)
    good = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "half.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "tail.npz").write_bytes(good[:-10])
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    for name, match in [
        ("empty.npz", "is empty"),
        ("half.npz", "not a valid .npz"),
        ("tail.npz", "not a valid .npz"),
        ("junk.npz", "not a valid .npz"),
    ]:
        with pytest.raises(DataError, match=match) as e:
            load_images(tmp_path / name, "train")
        assert name in str(e.value)
        with pytest.raises(DataError, match=name):
            load_npz(tmp_path / name)


def test_npz_truncated_inside_a_member_is_a_data_error(tmp_path):
    # the zip directory is intact but the member's bytes end early (a torn write)
    x, y = _images(n=40)
    np.savez(tmp_path / "ok.npz", x_train=x, y_train=y)
    raw = bytearray((tmp_path / "ok.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "ok.npz") as zf:
        info = zf.getinfo("x_train.npy")
    start = info.header_offset + 1000
    cut = raw[:start] + raw[start + 5000 :]  # drop 5000 bytes mid-member; directory now off
    (tmp_path / "cut.npz").write_bytes(bytes(cut))
    with pytest.raises(DataError, match="cut.npz"):
        s = load_images(tmp_path / "cut.npz", "train")
        list(s.images.chunks(8))


@pytest.mark.parametrize("compress", [False, True])
def test_a_flipped_image_byte_fails_the_crc(tmp_path, compress):
    x, y = _images(n=10)
    x[3] = 77  # a recognisable run of bytes to flip inside
    save = np.savez_compressed if compress else np.savez
    save(tmp_path / "d.npz", x_train=x, y_train=y)
    if compress:  # flip a byte of the deflate stream instead: corrupt data or a CRC mismatch
        raw = bytearray((tmp_path / "d.npz").read_bytes())
        with zipfile.ZipFile(tmp_path / "d.npz") as zf:
            info = zf.getinfo("x_train.npy")
        raw[info.header_offset + 30 + len("x_train.npy") + 200] ^= 0x10
        (tmp_path / "d.npz").write_bytes(bytes(raw))
    else:
        _flip_data_byte(tmp_path / "d.npz", bytes([77]) * 64)
    with pytest.raises(DataError, match=r"d\.npz:x_train.*(CRC|corrupt)"):
        s = load_images(tmp_path / "d.npz", "train", P32)
        for _ in s.images.chunks(4):
            pass


def test_an_intact_npz_streams_in_every_chunk_size(tmp_path):
    x, y = _images(n=9)
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "d.npz", x_train=x, y_train=y, class_names=np.array(["a", "b", "c"]))
        s = load_images(tmp_path / "d.npz", "train")
        assert s.class_names == ["a", "b", "c"] and s.labels.dtype == np.int64
        for size in (1, 4, 9, 50):
            got = np.concatenate([c.copy() for _, c in s.images.chunks(size)])
            np.testing.assert_array_equal(got, x)


def test_a_header_claiming_2_to_the_40_labels_is_a_size_check_not_8_tib(tmp_path):
    x, _ = _images(n=4)
    xbytes = _npy_bytes("|u1", (4, 32, 32, 3), x.tobytes())
    ybytes = _npy_bytes("<i8", (2**40,), np.arange(4, dtype=np.int64).tobytes())
    for compress in (False, True):
        p = _lying_npz(
            tmp_path / f"l{compress}.npz", {"x_train": xbytes, "y_train": ybytes}, compress
        )
        with pytest.raises(DataError, match=r"y_train.*claims int64 \(1099511627776,\)"):
            load_images(p, "train")
        with pytest.raises(DataError, match="claims"):
            load_npz(p)
    # the images' header lying too
    p = _lying_npz(tmp_path / "x.npz", {"x_train": _npy_bytes("|u1", (2**40, 32, 32, 3), b"")})
    with pytest.raises(DataError, match=r"x_train.*claims uint8"):
        load_images(p, "train")


def test_bad_headers_are_data_errors(tmp_path):
    x, y = _images(n=4)
    cases = {
        "nomagic": b"just some bytes, no npy magic here",
        "object": _npy_bytes("|O", (4,), b"\x00" * 32),
        "badver": b"\x93NUMPY\x09\x00" + b"\x00" * 30,
        "short": b"\x93NUMPY\x01",
    }
    for name, data in cases.items():
        p = _lying_npz(tmp_path / f"{name}.npz", {"x_train": data})
        with pytest.raises(DataError, match=f"{name}.npz:x_train"):
            load_images(p, "train")
    # images of the wrong dtype or rank
    np.savez(tmp_path / "f.npz", x_train=x.astype(np.float32), y_train=y)
    with pytest.raises(DataError, match=r"f\.npz:x_train must be uint8"):
        load_images(tmp_path / "f.npz", "train", P32)


def test_huge_class_names_are_refused_at_once(tmp_path):
    x, y = _images(n=3)
    xb = _npy_bytes("|u1", (3, 32, 32, 3), x.tobytes())
    yb = _npy_bytes("<i8", (3,), y.astype(np.int64).tobytes())
    for shape, descr, data, match in [
        ((4_000_000_000, 0), "<U1", b"", "1-D array of strings"),  # 0 bytes, 4e9 rows
        ((4_000_000_000,), "<U0", b"", "1-D array of strings"),  # 0 bytes, 4e9 names
        ((4_000_000_000,), "<U1", b"abcd", "claims"),  # 16 GB claimed, 4 bytes held
        ((200_000,), "<U1", b"a\0\0\0" * 200_000, "more than 100000 classes"),
        ((3,), "<i8", np.zeros(3, np.int64).tobytes(), "1-D array of strings"),
    ]:
        p = _lying_npz(
            tmp_path / "n.npz",
            {"x_train": xb, "y_train": yb, "class_names": _npy_bytes(descr, shape, data)},
        )
        t0 = time.perf_counter()
        with pytest.raises(DataError, match=match):
            load_images(p, "train")
        assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize(
    "labels,match",
    [
        (np.array([0.0, 1.0, 2.0, 0.5]), "must be an integer array"),
        (np.array([0.0, 1.0, 2.0, 1.0]), "must be an integer array"),  # integral floats too
        (np.array([True, False, True, False]), "must be an integer array"),
        (np.array(["a", "b", "c", "d"]), "must be an integer array"),
        (np.array([0, 1, -1, 2]), "negative label"),
        (np.array([0, 1, 2]), r"must have shape \(4,\)"),
        (np.zeros((4, 1), np.int64), r"must have shape \(4,\)"),
    ],
)
def test_labels_must_be_one_integer_per_image(tmp_path, labels, match):
    x, _ = _images(n=4)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=labels)
    with pytest.raises(DataError, match=rf"d\.npz:y_train {match}|d\.npz:y_train.*{match}"):
        load_images(tmp_path / "d.npz", "train")


def test_labels_beyond_class_names_are_refused(tmp_path):
    x, _ = _images(n=4)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=[0, 1, 2, 3], class_names=["a", "b", "c"])
    with pytest.raises(DataError, match=r"holds label 3 but class_names has 3"):
        load_images(tmp_path / "d.npz", "train")
    # uint8 labels are integers: accepted, widened to int64
    np.savez(tmp_path / "u.npz", x_train=x, y_train=np.array([0, 1, 2, 1], np.uint8))
    assert load_images(tmp_path / "u.npz", "train").labels.dtype == np.int64


def test_the_npz_helpers_check_crc_and_sizes(tmp_path):
    a = np.arange(300, dtype=np.float32)
    save_npz(tmp_path / "a.npz", {"a": a})
    np.testing.assert_array_equal(load_npz(tmp_path / "a.npz")["a"], a)
    _flip_data_byte(tmp_path / "a.npz", a[100:110].tobytes())
    with pytest.raises(DataError, match="CRC"):
        load_npz(tmp_path / "a.npz")
    out = np.empty_like(a)
    with pytest.raises(DataError, match="CRC"):
        read_npz_into(tmp_path / "a.npz", {"a": out})
    save_npz(tmp_path / "a.npz", {"a": a})
    with pytest.raises(DataError, match=r"is float32\(300,\), expected float64"):
        read_npz_into(tmp_path / "a.npz", {"a": np.empty(300, np.float64)})
    with pytest.raises(KeyError):
        npy_member(tmp_path / "a.npz", "nope")


# --- image folders -----------------------------------------------------------------------------


def _folder(root, n=2):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def _decode_all(root, prep=P32):
    s = load_images(root, "train", prep)
    for _ in s.images.chunks(4):
        pass


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", r"cannot read image .*bad\.png"),
        (b"not an image at all", r"cannot read image .*bad\.png"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", r"cannot read image .*bad\.png"),
        ("truncated", r"cannot read image .*bad\.png"),
        ("gif-as-png", None),  # a real image under the wrong suffix is fine: PIL sniffs it
    ],
)
def test_corrupt_truncated_or_non_image_png_is_a_data_error(tmp_path, content, match):
    root = _folder(tmp_path / "f")
    good = (root / "a" / "0.png").read_bytes()
    if content == "truncated":
        big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(big).save(tmp_path / "big.png")
        data = (tmp_path / "big.png").read_bytes()
        content = data[: len(data) // 2]
    elif content == "gif-as-png":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "g.gif")
        content = (tmp_path / "g.gif").read_bytes()
    assert good
    (root / "b" / "bad.png").write_bytes(content)
    if match is None:
        _decode_all(root)
        return
    with pytest.raises(DataError, match=match):
        _decode_all(root)
    with pytest.raises(DataError, match=match):
        _decode_all(root, prep=None)


def test_a_directory_or_fifo_named_like_an_image_is_refused(tmp_path):
    root = _folder(tmp_path / "f")
    (root / "a" / "x.png").mkdir()
    with pytest.raises(DataError, match=r"x\.png has an image suffix but is not a regular file"):
        load_images(root, "train", P32)
    (root / "a" / "x.png").rmdir()
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "a" / "pipe.png")
        with pytest.raises(DataError, match=r"pipe\.png .*not a regular file"):
            load_images(root, "train", P32)
        # read directly: refused without blocking on the pipe
        with pytest.raises(DataError, match="not a regular file"):
            read_image_file(root / "a" / "pipe.png", P32)
    # a directory given as the single image file
    with pytest.raises(DataError, match="directory"):
        read_image_file(root / "a", P32)


def test_symbolic_links_in_a_folder_are_refused_without_opening_them(tmp_path):
    root = _folder(tmp_path / "f")
    (root / "a" / "passwd.png").symlink_to("/etc/passwd")
    with pytest.raises(DataError, match=r"passwd\.png is a symbolic link"):
        load_images(root, "train", P32)
    (root / "a" / "passwd.png").unlink()
    # a link to a valid image outside the folder: refused too
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "outside.png")
    (root / "a" / "out.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(DataError, match=r"out\.png is a symbolic link"):
        load_images(root, "train", P32)
    (root / "a" / "out.png").unlink()
    # a linked class folder
    other = _folder(tmp_path / "other")
    (root / "c").symlink_to(other / "a", target_is_directory=True)
    with pytest.raises(DataError, match=r"f/c is a symbolic link"):
        load_images(root, "train", P32)
    (root / "c").unlink()
    # a link swapped in after listing: the decoder refuses it too (O_NOFOLLOW)
    s = load_images(root, "train", P32)
    victim = s.images.paths[0]
    os.unlink(victim)
    os.symlink(tmp_path / "outside.png", victim)
    with pytest.raises(DataError, match="symbolic link"):
        list(s.images.chunks(4))
    # a single image file named on the command line may be a link (the user chose it)
    assert load_images(victim, "train", P32).images.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("size", [(20_000, 20_000), (12_000, 8_000)])
def test_huge_images_are_refused_from_their_header(tmp_path, size):
    assert size[0] * size[1] > MAX_IMAGE_PIXELS
    root = _folder(tmp_path / "f")
    (root / "b" / "huge.png").write_bytes(_png_header(*size))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"huge\.png is too large: .*pixels"):
        _decode_all(root)
    assert time.perf_counter() - t0 < 2  # refused from the header, not decoded
    with pytest.raises(DataError, match="pixels"):
        read_image_file(root / "b" / "huge.png", None)


def test_npz_images_of_more_than_the_pixel_limit_are_refused(tmp_path):
    p = _lying_npz(tmp_path / "x.npz", {"x_train": _npy_bytes("|u1", (0, 10_000, 10_000, 3))})
    with pytest.raises(DataError, match="more than 50000000 pixels"):
        load_images(p, "train", P32)


def test_host_image_folder_reader_follows_the_same_rules(tmp_path):
    from entropi.host.data.base import DataError as HostDataError
    from entropi.host.data.images import read_image_folder

    root = tmp_path / "ds"
    _folder(root / "train")
    (root / "train" / "a" / "passwd.png").symlink_to("/etc/passwd")
    with pytest.raises(HostDataError, match=r"passwd\.png is a symbolic link"):
        read_image_folder(root, "train", cache_dir=tmp_path / "cache", prep=P32)
    (root / "train" / "a" / "passwd.png").unlink()
    (root / "train" / "a" / "d.png").mkdir()
    with pytest.raises(HostDataError, match="not a regular file"):
        read_image_folder(root, "train", cache_dir=tmp_path / "cache", prep=P32)
    (root / "train" / "a" / "d.png").rmdir()
    (root / "train" / "a" / "huge.png").write_bytes(_png_header(12_000, 8_000))
    with pytest.raises(HostDataError, match="huge.png is too large: 12000x8000 pixels"):
        read_image_folder(root, "train", cache_dir=tmp_path / "cache", prep=P32)
    (root / "train" / "a" / "huge.png").unlink()
    ds = read_image_folder(root, "train", cache_dir=tmp_path / "cache", prep=P32)
    assert ds.x.shape == (4, 32, 32, 3)


def test_pacs_index_paths_may_not_leave_the_folder(tmp_path):
    from entropi.host.data.base import DataError as HostDataError
    from entropi.host.data.images import read_pacs

    root = tmp_path / "pacs"
    (root / "photo" / "dog").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "secret.png")
    (root / "index.csv").write_text("path,class,domain,split\n../secret.png,dog,photo,train\n")
    with pytest.raises(HostDataError, match="leads outside"):
        read_pacs(root, "train", cache_dir=tmp_path / "cache")
    (root / "photo" / "dog" / "l.png").symlink_to(tmp_path / "secret.png")
    (root / "index.csv").write_text("path,class,domain,split\nphoto/dog/l.png,dog,photo,train\n")
    with pytest.raises(HostDataError, match="symbolic link"):
        read_pacs(root, "train", cache_dir=tmp_path / "cache2")


# --- head files --------------------------------------------------------------------------------


def _head_file(path, **arrays):
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "head.npz", **arrays)
    return path


W, B = np.ones((4, 3), np.float32), np.zeros(3, np.float32)


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"bias": B}, "has no weights member"),
        ({"weights": W}, "has no bias member"),
        ({"weights": W[None], "bias": B}, r"weights must be a float array .*\(1, 4, 3\)"),
        ({"weights": W.astype(np.int64), "bias": B}, "weights must be a float array"),
        ({"weights": W, "bias": np.zeros(2, np.float32)}, "do not make a head"),
        ({"weights": W, "bias": B[None]}, "bias must be a float array"),
        ({"weights": W, "bias": B, "class_names": ["a", "b"]}, "class_names must be 3 strings"),
        ({"weights": W, "bias": B, "class_names": [1, 2, 3]}, "class_names must be 3 strings"),
        ({"weights": np.full_like(W, np.nan), "bias": B}, "weights holds NaN or inf"),
        ({"weights": W, "bias": np.array([0, np.inf, 0], np.float32)}, "bias holds NaN or inf"),
        ({"weights": np.zeros((0, 3)), "bias": B}, "do not make a head"),
    ],
)
def test_broken_heads_are_data_errors(tmp_path, arrays, match):
    d = _head_file(tmp_path / "h", **arrays)
    with pytest.raises(DataError, match=match) as e:
        load_head(d)
    assert "head.npz" in str(e.value)


def test_truncated_or_corrupt_head_file(tmp_path):
    d = tmp_path / "h"
    d.mkdir()
    save_head(d, Head(W.copy(), B.copy(), ["a", "b", "c"]))
    good = (d / "head.npz").read_bytes()
    assert load_head(d).class_names == ["a", "b", "c"]
    (d / "head.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"head\.npz"):
        load_head(d)
    (d / "head.npz").write_bytes(good)
    _flip_data_byte(d / "head.npz", W.tobytes()[:16])
    with pytest.raises(DataError, match="CRC"):
        load_head(d)


# --- resume ------------------------------------------------------------------------------------


def _features():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    return (rng.standard_normal((3, 8))[y] + rng.standard_normal((120, 8))).astype(np.float32), y


def test_truncated_or_corrupt_checkpoint_is_a_resume_error(tmp_path):
    x, y = _features()
    cfg = TrainConfig(epochs=2, checkpoint_every=3, batch_size=16)
    train_head(x, y, cfg, workdir=tmp_path)
    ck = tmp_path / "checkpoint.npz"
    good = ck.read_bytes()
    for data in (good[: len(good) // 2], good[:-30], b"", good[:100]):
        ck.write_bytes(data)
        with pytest.raises(ResumeError, match="checkpoint .* is unreadable"):
            train_head(x, y, cfg, workdir=tmp_path, resume=True)
    # one flipped weight byte: the CRC check catches it (the fingerprint still matches)
    ck.write_bytes(good)
    with np.load(ck) as data:
        w = data[sorted(k for k in data.files if data[k].ndim == 2)[0]]
    _flip_data_byte(ck, w.tobytes()[:32])
    with pytest.raises(ResumeError, match="CRC"):
        train_head(x, y, cfg, workdir=tmp_path, resume=True)
    # a state field of the wrong kind
    ck.write_bytes(good)
    with np.load(ck) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["step"] = np.array(["x"])
    np.savez(ck, **arrays)
    with pytest.raises(ResumeError, match="step must be a scalar"):
        train_head(x, y, cfg, workdir=tmp_path, resume=True)


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"weight_decay": float("inf")}, r"weight_decay must be in \[0, 1\]"),
        ({"weight_decay": 1e30}, r"weight_decay must be in \[0, 1\]"),
        ({"weight_decay": float("nan")}, r"weight_decay must be in \[0, 1\]"),
        ({"weight_decay": -1e-3}, r"weight_decay must be in \[0, 1\]"),
        ({"lr": float("inf")}, r"lr must be in \(0, 100\]"),
        ({"lr": float("nan")}, r"lr must be in \(0, 100\]"),
        ({"lr": 1e3}, r"lr must be in \(0, 100\]"),
        ({"momentum": float("nan")}, r"momentum must be in \[0, 1\)"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"gamma": float("inf")}, r"gamma must be in \(0, 1\]"),
        ({"val_fraction": float("nan")}, r"val_fraction must be in \[0, 0.5\]"),
        ({"budget": "abc"}, "invalid size 'abc'"),
        ({"budget": "1e3KB"}, "invalid size"),
        ({"budget": "inf"}, "invalid size"),
    ],
)
def test_train_config_refuses_non_finite_and_insane_values(kw, match):
    with pytest.raises(TrainConfigError, match=match):
        TrainConfig(**kw)


def test_budget_in_gb_is_accepted():
    assert TrainConfig(budget="10GB").budget_bytes == 10 * 1024**3
    assert TrainConfig(budget="1.5gb").budget_bytes == 3 * 1024**3 // 2
    assert TrainConfig(lr=100.0, weight_decay=1.0).lr == 100.0


def test_every_error_here_is_an_entropi_error():
    # the CLIs print any EntropiError as one line and exit 2
    for cls in (DataError, ResumeError, TrainConfigError):
        assert issubclass(cls, EntropiError) and issubclass(cls, ValueError)


# --- the CLI on a bundle: test split, heads, JSON ----------------------------------------------


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    from test_device_bundle import smallnet_bundle

    d = tmp_path_factory.mktemp("hostile")
    return d, smallnet_bundle(d, class_names=["r", "g", "b"])[0]


def _train(bundle, data, out, capsys):
    from entropi.device.cli import main

    argv = ["train", "--bundle", str(bundle), "--data", str(data), "--out", str(out)]
    rc = main([*argv, "--epochs", "2", "--budget", "1MB"])
    return rc, capsys.readouterr()


@pytest.mark.parametrize(
    "test_arrays,match",
    [
        (
            {"x_test": np.zeros((5, 32, 32, 3), np.float32), "y_test": np.zeros(5, np.int64)},
            "x_test must be uint8",
        ),
        (
            {"x_test": np.zeros((5, 32, 32, 3), np.uint8), "y_test": np.array([0, 1, 2, 500, 0])},
            r"test split: labels must lie in \[0, 3\)",
        ),
        (
            {"x_test": np.zeros((5, 32, 32, 3), np.uint8), "y_test": np.array([0, 1, 2, -1, 0])},
            "y_test holds a negative label",
        ),
        (
            {"x_test": np.zeros((5, 32, 32, 3), np.uint8), "y_test": np.zeros(5, np.float64)},
            "y_test must be an integer array",
        ),
        (
            {"x_test": np.zeros((5, 32, 32, 3), np.uint8), "y_test": np.zeros(4, np.int64)},
            r"y_test must have shape \(5,\)",
        ),
        (
            {"x_test": np.zeros((5, 32, 32), np.int16), "y_test": np.zeros(5, np.int64)},
            "x_test must be uint8",
        ),
    ],
)
def test_a_bad_test_split_is_refused_before_training(
    cli_setup, tmp_path, capsys, test_arrays, match
):
    d, bundle = cli_setup
    x, y = _images(n=12)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, **test_arrays)
    out = tmp_path / "head"
    rc, cap = _train(bundle, tmp_path / "d.npz", out, capsys)
    assert rc == 2, cap.out
    assert len(cap.err.strip().splitlines()) == 1 and "Traceback" not in cap.err
    assert re.search(match, cap.err), cap.err
    assert not (out / ".cache" / "train.npy").exists()  # refused before any feature is made
    assert not (out / "head.npz").exists()


def test_a_folder_with_an_unusable_test_split_is_refused(cli_setup, tmp_path, capsys):
    d, bundle = cli_setup
    root = tmp_path / "data"
    _folder(root / "train", n=3)
    (root / "test" / "a").mkdir(parents=True)
    (root / "test" / "a" / "notes.txt").write_text("no images")
    rc, cap = _train(bundle, root, tmp_path / "head", capsys)
    assert rc == 2 and "holds no images" in cap.err and "test" in cap.err


def test_no_test_split_reports_held_out_accuracy(cli_setup, tmp_path, capsys):
    d, bundle = cli_setup
    x, y = _images(n=30)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    rc, cap = _train(bundle, tmp_path / "d.npz", tmp_path / "head", capsys)
    assert rc == 0, cap.err
    rep = json.loads((tmp_path / "head" / "train.json").read_text())
    assert rep["accuracy_split"] == "held-out" and "test_accuracy" not in rep


def _eval(bundle, head, data, capsys, cmd="eval", *extra):
    from entropi.device.cli import main

    rc = main([cmd, "--bundle", str(bundle), "--head", str(head), "--data", str(data), *extra])
    return rc, capsys.readouterr()


def test_eval_and_predict_refuse_broken_heads_and_print_valid_json(cli_setup, tmp_path, capsys):
    d, bundle = cli_setup
    x, y = _images(n=6)
    np.savez(tmp_path / "d.npz", x_test=x, y_test=y)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 3)).astype(np.float32)
    cases = {
        "nan": {"weights": np.full_like(w, np.nan), "bias": B},
        "dim": {"weights": W, "bias": B},
        "w3d": {"weights": w[None], "bias": B},
        "nobias": {"weights": w},
    }
    for name, arrays in cases.items():
        head = _head_file(tmp_path / name, **arrays)
        for cmd in ("eval", "predict"):
            rc, cap = _eval(bundle, head, tmp_path / "d.npz", capsys, cmd)
            assert rc == 2, (name, cmd, cap.out)
            assert "Traceback" not in cap.err and len(cap.err.strip().splitlines()) == 1
    # a head of fewer classes than the labels: refused, not an IndexError
    head = _head_file(tmp_path / "two", weights=w[:, :2].copy(), bias=B[:2].copy())
    rc, cap = _eval(bundle, head, tmp_path / "d.npz", capsys)
    assert rc == 2 and "labels must lie in [0, 2)" in cap.err
    # huge (finite) weights overflow the logits: the printed JSON is still valid (no NaN)
    head = _head_file(tmp_path / "huge", weights=np.full_like(w, 3e38), bias=B)
    rc, cap = _eval(bundle, head, tmp_path / "d.npz", capsys)
    assert rc == 0, cap.err

    def no_constant(c):
        raise AssertionError(f"non-JSON constant {c} printed")

    res = json.loads(cap.out, parse_constant=no_constant)
    assert res["samples"] == 6
    rc, cap = _eval(bundle, head, tmp_path / "d.npz", capsys, "predict")
    assert rc == 0, cap.err
    assert len(json.loads(cap.out, parse_constant=no_constant)) == 6
    # --top 0 is refused, not an IndexError
    head = _head_file(tmp_path / "ok", weights=w, bias=B)
    rc, cap = _eval(bundle, head, tmp_path / "d.npz", capsys, "predict", "--top", "0")
    assert rc == 2 and "top must be >= 1" in cap.err
    rc, cap = _eval(bundle, head, tmp_path / "d.npz", capsys, "predict", "--top", "2")
    assert rc == 0 and len(json.loads(cap.out)) == 6


def test_weight_decay_inf_is_refused_by_the_cli(cli_setup, tmp_path, capsys):
    from entropi.device.cli import main

    d, bundle = cli_setup
    x, y = _images(n=12)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    base = ["train", "--bundle", str(bundle), "--data", str(tmp_path / "d.npz")]
    for flag, value in (("--weight-decay", "inf"), ("--weight-decay", "1e30"), ("--lr", "nan")):
        assert main([*base, "--out", str(tmp_path / "h"), flag, value]) == 2
        err = capsys.readouterr().err
        assert "must be in" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h" / "head.npz").exists()
