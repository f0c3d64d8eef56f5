"""The CIFAR download path, against an HTTP server the test starts on 127.0.0.1.

The server serves a folder holding a tiny ``cifar-10-python.tar.gz`` in the official layout; the
published MD5 table is patched to the tiny files' MD5s. The server thread is a daemon, is shut
down after each test, and every request has a timeout, so a hang cannot outlive the test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import pickle
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from entropi.common.errors import EntropiError
from entropi.host.data import (
    CIFAR,
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    download_file,
    file_md5,
    load_dataset,
)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def _serve(handler) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def http_dir(tmp_path) -> Iterator[tuple[Path, str]]:
    """``(folder, base_url)``: files put in ``folder`` are served at ``base_url``."""
    served = tmp_path / "served"
    served.mkdir()
    with _serve(functools.partial(_QuietHandler, directory=str(served))) as url:
        yield served, url


def build_cifar10_archive(workdir: Path, out: Path, monkeypatch, n: int = 3) -> dict:
    """Write cifar-10-batches-py/ with ``n`` images per batch, tar.gz it to ``out``.

    Patches the MD5 table (files and archive); returns {split: (x, y)}.
    """
    spec = CIFAR["cifar10"]
    folder = workdir / spec.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    expected: dict[str, tuple] = {}
    md5 = {}
    for split, files in spec.splits.items():
        xs, ys = [], []
        for fname in files:
            x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            y = rng.integers(0, 10, size=n).tolist()
            data = x.transpose(0, 3, 1, 2).reshape(n, 3072)  # channel-major rows
            d = {b"data": data, b"labels": y, b"batch_label": b"b", b"filenames": [b"f"] * n}
            (folder / fname).write_bytes(pickle.dumps(d, protocol=2))
            md5[fname] = file_md5(folder / fname)
            xs.append(x)
            ys.append(y)
        expected[split] = (np.concatenate(xs), np.concatenate(ys))
    names = [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer")] * 2
    (folder / spec.meta).write_bytes(pickle.dumps({spec.names_key: names}, protocol=2))
    md5[spec.meta] = file_md5(folder / spec.meta)
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname=spec.folder)
    patched = dataclasses.replace(spec, md5=md5, archive_md5=file_md5(out))
    monkeypatch.setitem(CIFAR, "cifar10", patched)
    return expected


def test_download_extracts_verifies_and_loads(tmp_path, http_dir, monkeypatch):
    served, base = http_dir
    expected = build_cifar10_archive(
        tmp_path / "build", served / "cifar-10-python.tar.gz", monkeypatch
    )
    root = tmp_path / "data"
    url = f"{base}/cifar-10-python.tar.gz"
    ds = load_dataset(
        "cifar10", "train", root, download=True, url=url, cache_dir=tmp_path / "cache"
    )
    np.testing.assert_array_equal(ds.x, expected["train"][0])
    np.testing.assert_array_equal(ds.y, expected["train"][1])
    assert ds.info["format"] == "cifar-python" and len(ds) == 15
    assert (root / "cifar-10-python.tar.gz").is_file()
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(
        CIFAR["cifar10"].md5
    )
    # The files are now there: no second download (the server is gone for this call).
    test = load_dataset("cifar10", "test", root, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(test.x, expected["test"][0])


def test_download_with_wrong_md5_leaves_nothing(tmp_path, http_dir, monkeypatch):
    served, base = http_dir
    build_cifar10_archive(tmp_path / "build", served / "cifar-10-python.tar.gz", monkeypatch)
    bad = dataclasses.replace(CIFAR["cifar10"], archive_md5="f" * 32)
    monkeypatch.setitem(CIFAR, "cifar10", bad)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(ChecksumError, match=r"cifar-10-python\.tar\.gz: expected f{32}, got"):
        load_dataset(
            "cifar10",
            "train",
            root,
            download=True,
            url=f"{base}/cifar-10-python.tar.gz",
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    assert list(root.iterdir()) == []  # no archive, no temp file, no half-extracted folder


def test_download_of_missing_url_is_a_download_error(tmp_path, http_dir):
    _, base = http_dir
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DownloadError, match=r"could not download .*nope\.tar\.gz.*by hand"):
        download_file(f"{base}/nope.tar.gz", dest, md5=None, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_download_from_closed_port_is_a_download_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="offline"):
        download_file(f"http://127.0.0.1:{port}/x", tmp_path / "x", md5=None, timeout_s=5)
    assert not (tmp_path / "x").exists()


def test_download_file_checks_md5_and_shows_progress(tmp_path, http_dir, capsys, monkeypatch):
    monkeypatch.delenv("ENTROPI_QUIET", raising=False)
    served, base = http_dir
    payload = bytes(range(256)) * 4096  # 1 MiB
    (served / "blob.bin").write_bytes(payload)
    out = download_file(
        f"{base}/blob.bin", tmp_path / "blob.bin", md5=file_md5(served / "blob.bin")
    )
    assert out.read_bytes() == payload
    assert "blob.bin" in capsys.readouterr().err  # tqdm bar on stderr
    with pytest.raises(ValueError, match="http"):
        download_file("ftp://example.com/x", tmp_path / "y", md5=None)


def test_no_download_means_not_found(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"download=True.*cs\.toronto\.edu"):
        load_dataset("cifar10", "train", tmp_path, cache_dir=tmp_path / "cache")


def _closed_port_url() -> str:
    with socket.socket() as s:  # a port nobody listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/cifar-10-python.tar.gz"


def test_failed_dataset_download_is_a_one_line_entropi_error(tmp_path):
    with pytest.raises(DownloadError) as info:
        load_dataset(
            "cifar10",
            "train",
            tmp_path / "data",
            download=True,
            url=_closed_port_url(),
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    assert isinstance(info.value, EntropiError) and isinstance(info.value, OSError)
    message = str(info.value)
    assert "\n" not in message and "could not download" in message and "by hand" in message
    assert not (tmp_path / "data" / "cifar-10-python.tar.gz").exists()


def test_failed_download_in_the_cli_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    from entropi.host.cli import main

    spec = dataclasses.replace(CIFAR["cifar10"], url=_closed_port_url())
    monkeypatch.setitem(CIFAR, "cifar10", spec)
    monkeypatch.setenv("ENTROPI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ENTROPI_DATA", raising=False)
    config = tmp_path / "offline.toml"
    config.write_text(
        f'name = "offline"\ndevice = "cpu"\n\n[data]\nroot = "{(tmp_path / "data").as_posix()}"\n'
        'source = "cifar10"\ntarget = "cifar100"\ndownload = true\n'
    )
    rc = main(["pretrain", str(config), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc != 0
    fetching, error = err.splitlines()  # what is fetched and where, then the one-line error
    assert fetching.startswith("entropi: downloading") and str(tmp_path / "home") in fetching
    assert error.startswith("entropi: error: could not download"), err
    assert "Traceback" not in err


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``payload``; honours ``Range`` when ``ranges``; closes mid-file when ``cut``."""

    payload = b""
    ranges = True
    cut: int | None = None
    seen: list = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        type(self).seen.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if (rng and self.ranges) else 0
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: self.cut] if self.cut is not None else body)


@pytest.fixture
def range_server() -> Iterator[tuple[type, str]]:
    handler = type("H", (_RangeHandler,), {"payload": bytes(range(256)) * 1024, "seen": []})
    with _serve(handler) as url:
        yield handler, f"{url}/blob"


@pytest.mark.parametrize("ranges", [True, False])
def test_interrupted_download_then_resume(tmp_path, range_server, ranges):
    import hashlib

    handler, url = range_server
    payload = handler.payload
    md5 = hashlib.md5(payload).hexdigest()
    dest = tmp_path / "blob.bin"
    handler.cut = 100_000  # the server closes the connection mid-file
    with pytest.raises(DownloadError, match="broke off"):
        download_file(url, dest, md5=md5, progress=False, timeout_s=5)
    assert not dest.exists()  # nothing left as if complete
    part = tmp_path / "blob.bin.part"
    assert part.stat().st_size == 100_000
    handler.cut, handler.ranges = None, ranges
    assert download_file(url, dest, md5=md5, progress=False, timeout_s=5).read_bytes() == payload
    assert handler.seen[-1] == "bytes=100000-" and not part.exists()


def test_resumed_download_with_wrong_md5_leaves_nothing(tmp_path, range_server):
    handler, url = range_server
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 1000)  # not a prefix of the real file
    with pytest.raises(ChecksumError):
        download_file(url, dest, md5=file_md5(__file__), progress=False, timeout_s=5)
    assert list(tmp_path.iterdir()) == []
