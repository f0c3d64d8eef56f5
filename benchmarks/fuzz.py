"""Property-based fuzzers for the parsers of untrusted input, each run for a bounded time.

    python -m entropi.benchmarks.fuzz --seconds 300            # every target, 300 s each
    python -m entropi.benchmarks.fuzz --target npz --seconds 60 --out fuzz.json

Targets (:data:`TARGETS`), each a valid input the fuzzer mutates with hypothesis strategies:

- ``manifest``: a bundle's ``manifest.json`` (a value anywhere in it replaced by arbitrary JSON, a
  key deleted, or its text's bytes flipped or cut), then :func:`~entropi.device.load_bundle` and
  every manifest-derived property of the bundle.
- ``npz``: an ``.npz`` of images and labels (bytes flipped, cut or inserted, or a member's
  ``.npy`` header replaced by one claiming any shape and dtype), then
  :func:`~entropi.device.data.load_images`, its labels and every chunk of its images.
- ``image``: a PNG or JPEG inside an image folder (bytes flipped, cut, or arbitrary bytes), then
  the folder read and converted as the device reads it.
- ``config``: the quickstart run config (a value anywhere replaced by arbitrary TOML-able data,
  or a key added), then :func:`~entropi.host.run.config.config_from_dict`; and its TOML text with
  bytes flipped, then :func:`~entropi.host.run.config.load_config`.
- ``rundir``: a scored run folder (:func:`scored_run`) with one file mutated: a score file or
  run.json or timings.json (a JSON value replaced, or bytes), a feature array or the labels (a
  ``.npy`` header claiming any shape and dtype, or bytes), a rung record (an info value or a
  tensor replaced, or bytes), config.toml (bytes); then the folder reopened as ``--resume``
  does, selected and reported as ``entropi select`` does, and the rung rebuilt.

The property is the same for all: the input is accepted, or refused with an
:class:`~entropi.common.errors.EntropiError` (what both CLIs print as one line), within the
per-input deadline (``--deadline-ms``). Any other exception, or a slow input, is a crash: the
fuzzer stops that target and reports hypothesis's shrunk example and the traceback. Runs are
seeded (``--seed``; each round of ``--examples`` inputs takes the next seed), so a crash
reproduces. hypothesis is a development dependency (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from entropi.common.errors import EntropiError

__all__ = ["TARGETS", "fuzz", "main", "scored_run"]


def _strategies():
    # lazy: a dev dependency: only the fuzzers use it
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=12)
    )
    json_values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
    return st, json_values


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a JSON-like value, the root included."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _replace(obj: Any, path: tuple, value: Any, *, delete: bool = False) -> Any:
    if not path:
        return value
    obj = obj.copy()
    head, rest = path[0], path[1:]
    if delete and not rest:
        del obj[head]
        return obj
    obj[head] = _replace(obj[head], rest, value, delete=delete)
    return obj


def _mutate_bytes(data, raw: bytes) -> bytes:
    """Flip, cut or insert bytes of ``raw`` (drawn from hypothesis ``data``)."""
    st, _ = _strategies()
    how = data.draw(st.sampled_from(["flip", "cut", "insert", "random"]))
    if how == "random":
        return data.draw(st.binary(max_size=512))
    if how == "cut":
        return raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(b) - 1))
        if how == "flip":
            b[i] = data.draw(st.integers(0, 255))
        else:
            b[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    return bytes(b)


def _mutate_json(data, obj: Any, json_values) -> Any:
    st, _ = _strategies()
    path = data.draw(st.sampled_from(_paths(obj)))
    if path and data.draw(st.booleans()):
        return _replace(obj, path, None, delete=True)
    return _replace(obj, path, data.draw(json_values))


class _Target:
    """One fuzz target: ``setup(folder)`` makes the valid input once, ``case(data)`` runs one
    mutated input (hypothesis ``data``) through the parser."""

    def setup(self, folder: Path) -> None:
        self.folder = folder

    def case(self, data) -> None:
        raise NotImplementedError


def _tiny_onnx(path: Path) -> None:
    """An encoder (N, 3, 8, 8) -> (N, 3): the spatial mean (ReduceMean, an operator entropi's
    exports write, so the device accepts it), written with onnx.helper."""
    # lazy: optional: the export extra (onnx)
    import onnx

    # lazy: optional: the export extra (onnx)
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("ReduceMean", ["input"], ["features"], axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(nodes, "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


class ManifestTarget(_Target):
    def setup(self, folder: Path) -> None:
        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.device.bundle import MANIFEST, write_bundle

        super().setup(folder)
        _tiny_onnx(folder / "enc.onnx")
        self.base = write_bundle(
            folder / "bundle",
            encoder_files={"encoder.onnx": folder / "enc.onnx"},
            input_shape=[3, 8, 8],
            normalization={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            feature_dim=3,
            class_names=["a", "b"],
        )
        self.manifest_path = self.base / MANIFEST
        self.text = self.manifest_path.read_bytes()
        self.manifest = json.loads(self.text)

    def case(self, data) -> None:
        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.device import load_bundle

        st, json_values = _strategies()
        if data.draw(st.booleans()):
            raw = json.dumps(_mutate_json(data, self.manifest, json_values)).encode()
        else:
            raw = _mutate_bytes(data, self.text)
        self.manifest_path.write_bytes(raw)
        try:
            b = load_bundle(self.base)
            for prop in ("input_shape", "mean", "std", "preprocess", "feature_dim"):
                getattr(b, prop)
            b.class_names  # noqa: B018
        finally:
            self.manifest_path.write_bytes(self.text)


def _npy_header(shape, descr: str, fortran: bool) -> bytes:
    header = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    header = header.encode("latin1")
    pad = 64 - (10 + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


class NpzTarget(_Target):
    def setup(self, folder: Path) -> None:
        super().setup(folder)
        rng = np.random.default_rng(0)
        self.arrays = {
            "x_train": rng.integers(0, 255, (6, 8, 8, 3)).astype(np.uint8),
            "y_train": np.array([0, 1, 0, 1, 1, 0]),
            "class_names": np.array(["a", "b"]),
        }
        buf = io.BytesIO()
        np.savez(buf, **self.arrays)
        self.raw = buf.getvalue()
        self.path = folder / "data.npz"

    def _lying_header(self, data) -> bytes:
        """An uncompressed npz whose one member's header claims a drawn shape and dtype."""
        # lazy: a fuzz target imports only the parser it fuzzes
        import zipfile

        st, _ = _strategies()
        name = data.draw(st.sampled_from(sorted(self.arrays)))
        shape = data.draw(st.lists(st.integers(0, 2**42), max_size=5))
        descr = data.draw(st.sampled_from(["|u1", "<i8", "<f4", "<U1", "|O", "|b1", "<c16"]))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for k, a in self.arrays.items():
                body = a.tobytes()
                head = (
                    _npy_header(shape, descr, data.draw(st.booleans()))
                    if k == name
                    else _npy_header(a.shape, a.dtype.str, False)
                )
                z.writestr(f"{k}.npy", head + body)
        return buf.getvalue()

    def case(self, data) -> None:
        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.device.data import load_images

        st, _ = _strategies()
        raw = self._lying_header(data) if data.draw(st.booleans()) else self.raw
        self.path.write_bytes(_mutate_bytes(data, raw) if data.draw(st.booleans()) else raw)
        s = load_images(self.path, "train")
        for _ in s.images.chunks(4):
            pass


class ImageTarget(_Target):
    def setup(self, folder: Path) -> None:
        # lazy: optional: Pillow, only for image folders
        from PIL import Image

        super().setup(folder)
        self.raw = {}
        for fmt in ("PNG", "JPEG"):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format=fmt)
            self.raw[fmt] = buf.getvalue()
        self.root = folder / "images"
        for c in ("a", "b"):
            (self.root / c).mkdir(parents=True)
            (self.root / c / "ok.png").write_bytes(self.raw["PNG"])

    def case(self, data) -> None:
        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.device.data import load_images

        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.device.imageprep import Preprocess

        st, _ = _strategies()
        fmt = data.draw(st.sampled_from(sorted(self.raw)))
        target = self.root / "a" / ("x.png" if fmt == "PNG" else "x.jpg")
        target.write_bytes(_mutate_bytes(data, self.raw[fmt]))
        try:
            s = load_images(self.root, "train", Preprocess(size=(8, 8)))
            for _ in s.images.chunks(2):
                pass
        finally:
            target.unlink()


class ConfigTarget(_Target):
    def setup(self, folder: Path) -> None:
        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.host.run.config import config_to_toml, load_config

        super().setup(folder)
        cfg = load_config("quickstart")
        self.base = json.loads(json.dumps(cfg.to_dict()))
        self.text = config_to_toml(cfg).encode()
        self.path = folder / "c.toml"

    def case(self, data) -> None:
        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.host.run.config import config_from_dict, load_config

        st, json_values = _strategies()
        if data.draw(st.booleans()):
            config_from_dict(_mutate_json(data, self.base, json_values))
        else:
            self.path.write_bytes(_mutate_bytes(data, self.text))
            load_config(self.path)


def scored_run(root: Path, n_rungs: int = 3, *, n: int = 24, dim: int = 8, seed: int = 0, **cfg):
    """A scored run folder made without training, as the stages write it: ``n_rungs`` rung
    records (one untrained smallnet, dense masks), random features of ``n`` samples x ``dim``
    per rung scored by :func:`~entropi.host.selection.rules.score_rung`, made-up probe accuracies.
    ``cfg``: config sections to set. Returns ``(cfg, run)``, the folder's lock released."""
    # lazy: a fuzz target imports only the parser it fuzzes
    import torch

    # lazy: a fuzz target imports only the parser it fuzzes
    from entropi.export.rung import Rung, RungInfo, save_rung

    # lazy: a fuzz target imports only the parser it fuzzes
    from entropi.host.ladder.models import build_model

    # lazy: a fuzz target imports only the parser it fuzzes
    from entropi.host.ladder.prune import dense_masks

    # lazy: a fuzz target imports only the parser it fuzzes
    from entropi.host.run.config import config_from_dict

    # lazy: a fuzz target imports only the parser it fuzzes
    from entropi.host.run.rundir import open_run

    # lazy: a fuzz target imports only the parser it fuzzes
    from entropi.host.selection.criteria import CRITERIA_VERSION

    # lazy: a fuzz target imports only the parser it fuzzes
    from entropi.host.selection.rules import score_rung

    raw = {
        "name": "fake",
        "device": "cpu",
        "seed": seed,
        "data": {"source": "npz:/no/src.npz", "target": "npz:/no/tgt.npz"},
        "pretrain": {"arch": "smallnet"},
        "prune": {"keep_per_round": 0.5, "alpha_min": 0.5 ** (n_rungs - 1)},
        "select": {"resamples": 4},
        **cfg,
    }
    config, run = open_run(config_from_dict(raw), root, argv=["entropi", "run"])
    run.lock.release()
    torch.manual_seed(seed)
    model = build_model("smallnet", 2)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    run.write_array(run.feature_labels, labels.astype(np.int64))
    for i in range(n_rungs):
        info = RungInfo(
            arch="smallnet", feature_dim=256, input_shape=(3, 32, 32),
            normalization={"mean": [0.5] * 3, "std": [0.25] * 3}, alpha=0.5**i, nnz=100 >> i,
            n_prunable=100, source_classes=["a", "b"], num_source_classes=2,
            source_accuracy=0.5,
        )  # fmt: skip
        state = (model.encoder.state_dict(), model.head.state_dict(), dense_masks(model.encoder))
        save_rung(run.rung(i), Rung(info, *state))
        feats = (rng.normal(size=(n, dim)) + labels[:, None] * (i + 1)).astype(np.float32)
        run.write_array(run.features(i), feats)
        score = {"index": i, "alpha": 0.5**i, "nnz": 100 >> i, "source_accuracy": 0.5}
        score |= score_rung(feats, labels, config)
        acc = [0.6, 0.8, 0.7, 0.5, 0.4][i % 5]
        score |= {
            "probe_accuracy": acc,
            "probe_accuracy_std": 0.01,
            "criteria_version": CRITERIA_VERSION,
        }
        run.write_json(run.score(i), score)
    run.write_json(run.timings, {"score": 1.0})
    return config, run


class RunFolderTarget(_Target):
    """A file of a scored run folder mutated (a score file, a feature array, the labels, a rung
    record, run.json, config.toml, timings.json), then the folder reopened (``--resume``'s
    checks), selected and reported as ``entropi select`` does (no plot), and the rung rebuilt."""

    def setup(self, folder: Path) -> None:
        super().setup(folder)
        self.cfg, self.run = scored_run(folder / "run", 2, select={"resamples": 2})
        r = self.run
        self.files = [
            r.score(1), r.features(1), r.feature_labels, r.rung(1), r.info, r.config, r.timings
        ]  # fmt: skip
        self.saved = {p: p.read_bytes() for p in self.files}

    def _mutated(self, data, path: Path) -> bytes:
        st, json_values = _strategies()
        raw = self.saved[path]
        how = data.draw(st.sampled_from(["bytes", "value"]))
        if how == "bytes":
            return _mutate_bytes(data, raw)
        if path.suffix == ".json":
            return json.dumps(_mutate_json(data, json.loads(raw), json_values)).encode()
        if path.suffix == ".npy":
            shape = data.draw(st.lists(st.integers(0, 2**40), max_size=3))
            descr = data.draw(st.sampled_from(["<f4", "<f8", "<i8", "|u1", "<U1", "|O", "|b1"]))
            body = raw[128:] if data.draw(st.booleans()) else data.draw(st.binary(max_size=256))
            return _npy_header(shape, descr, data.draw(st.booleans())) + body
        if path.suffix == ".pt":
            return self._mutated_rung(data, json_values)
        return _mutate_bytes(data, raw)

    def _mutated_rung(self, data, json_values) -> bytes:
        # lazy: a fuzz target imports only the parser it fuzzes
        import torch

        st, _ = _strategies()
        payload = torch.load(io.BytesIO(self.saved[self.run.rung(1)]), weights_only=True)
        keys = sorted(payload)
        key = data.draw(st.sampled_from(keys))
        if key in ("encoder", "head", "masks") and data.draw(st.booleans()):
            state = dict(payload[key])
            name = data.draw(st.sampled_from(sorted(state)))
            shape = data.draw(st.lists(st.integers(0, 4), max_size=3))
            dtype = data.draw(st.sampled_from([torch.float32, torch.bool, torch.int64]))
            state[name] = torch.zeros(shape, dtype=dtype)
            if data.draw(st.booleans()) and dtype == torch.float32 and state[name].numel():
                state[name].view(-1)[0] = float("nan")
            payload[key] = state
        else:
            value = data.draw(json_values)
            payload[key] = (
                tuple(value) if isinstance(value, list) and data.draw(st.booleans()) else value
            )
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    def case(self, data) -> None:
        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.export.rung import load_rung_file

        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.host.ladder.rungs import classifier_from_rung

        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.host.run.report import render_report

        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.host.run.rundir import open_run

        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.host.run.stages import select

        st, _ = _strategies()
        path = data.draw(st.sampled_from(self.files))
        path.write_bytes(self._mutated(data, path))
        try:  # the reader of that file (each is also read by the others)
            if path in (self.run.config, self.run.info):
                _, run = open_run(None, self.run.root, resume=True, argv=["fuzz"])
                run.lock.release()
            elif path == self.run.rung(1):
                classifier_from_rung(load_rung_file(path, 1))
            else:
                render_report(self.cfg, self.run, select(self.cfg, self.run, plot=False))
        finally:
            path.write_bytes(self.saved[path])


TARGETS: dict[str, Callable[[], _Target]] = {
    "manifest": ManifestTarget,
    "npz": NpzTarget,
    "image": ImageTarget,
    "config": ConfigTarget,
    "rundir": RunFolderTarget,
}


def fuzz(
    target: _Target | str,
    seconds: float,
    *,
    seed: int = 0,
    examples: int = 100,
    deadline_ms: int = 5000,
    folder: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run ``target`` for about ``seconds``; ``{"target", "inputs", "seconds", "crashes"}``,
    each crash with its seed, exception and traceback (hypothesis's shrunk example)."""
    # lazy: a dev dependency: only the fuzzers use it
    from hypothesis import HealthCheck, Phase, given, settings

    # lazy: a dev dependency: only the fuzzers use it
    from hypothesis import seed as hseed

    # lazy: a dev dependency: only the fuzzers use it
    from hypothesis import strategies as st

    name = target if isinstance(target, str) else type(target).__name__
    t = TARGETS[target]() if isinstance(target, str) else target
    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix=f"entropi-fuzz-{name}-")
        folder = tmp.name
    t.setup(Path(folder))
    tried = 0

    def one(data) -> None:
        nonlocal tried
        tried += 1
        try:
            t.case(data)
        except EntropiError:
            pass  # a clear refusal: what the property allows

    t0 = time.monotonic()
    crashes, round_seed = [], seed
    try:
        while time.monotonic() - t0 < seconds and not crashes:
            test = settings(
                max_examples=examples,
                deadline=deadline_ms,
                database=None,
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            )(hseed(round_seed)(given(st.data())(one)))
            try:
                test()
            except Exception as e:  # noqa: BLE001 - any escape is the finding
                crashes.append(
                    {
                        "seed": round_seed,
                        "exception": f"{type(e).__name__}: {e}"[:2000],
                        "traceback": traceback.format_exc()[-6000:],
                    }
                )
            round_seed += 1
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "target": name,
        "inputs": tried,
        "seconds": round(time.monotonic() - t0, 1),
        "seed": seed,
        "crashes": crashes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", action="append", choices=sorted(TARGETS), help="(repeat)")
    ap.add_argument("--seconds", type=float, default=60.0, help="per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples", type=int, default=100, help="inputs per seeded round")
    ap.add_argument("--deadline-ms", type=int, default=5000, help="slower than this: a crash")
    ap.add_argument("--out", help="write the results as JSON")
    a = ap.parse_args(argv)
    results = []
    for name in a.target or list(TARGETS):
        r = fuzz(name, a.seconds, seed=a.seed, examples=a.examples, deadline_ms=a.deadline_ms)
        results.append(r)
        print(
            f"{name}: {r['inputs']} inputs in {r['seconds']:.0f}s, {len(r['crashes'])} crashes",
            flush=True,
        )
        for c in r["crashes"]:
            print(c["traceback"])
    if a.out:
        # lazy: a fuzz target imports only the parser it fuzzes
        import platform

        # lazy: a fuzz target imports only the parser it fuzzes
        from entropi.common.files import atomic_write_json

        atomic_write_json(
            a.out,
            {
                "results": results,
                "machine": {
                    "host": platform.node(),
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                },
            },
        )
    return 1 if any(r["crashes"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
