"""The C head trainer (device/c/head_trainer.c, written by device/mcu_trainer.py) on the host.

Compiled with the system C compiler (warnings as errors, freestanding, no libc linked) and called
through ctypes, it must match the numpy runtime's trainer (``train_head``) step for step on the
same batches: weights within a float32 tolerance (:data:`WEIGHT_RTOL` of the largest weight after
every run here, tens of steps; both compute in float32 with different summation orders), and the
same predictions. A sanitizer build (address, undefined) runs the same steps from a C driver and
must give the same head bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from entropi.benchmarks.mcu_emulator import HostTrainer, McuBuildError, build_host, numpy_batches
from entropi.common.errors import OverwriteError
from entropi.device.config import TrainConfig
from entropi.device.errors import BudgetError, DataError, TrainConfigError
from entropi.device.mcu_trainer import (
    EXP_MAX_REL_ERROR,
    PLAN_FILE,
    c_source,
    mcu_plan,
    write_mcu_trainer,
)
from entropi.device.schedule import learning_rate
from entropi.device.trainer import train_head

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler"
)

WEIGHT_RTOL = 1e-5
"""Largest |C - numpy| weight difference allowed, relative to the largest |numpy weight|."""

D, C, N, N_TEST = 48, 7, 260, 140


def _data(seed=0, d=D, c=C, n=N + N_TEST):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.normal(scale=1.5, size=(n, d))).astype(np.float32)
    return x, y


CONFIGS = {
    "momentum": TrainConfig(epochs=3, val_fraction=0.0, patience=0, budget=34000, batch_size=20),
    "sgd": TrainConfig(
        epochs=3, momentum=0.0, weight_decay=1e-3, val_fraction=0.0, patience=0, budget="64KB"
    ),
    "step": TrainConfig(
        epochs=3,
        schedule="step",
        step_epochs=1,
        gamma=0.5,
        weight_decay=0.0,
        val_fraction=0.0,
        patience=0,
        budget="64KB",
    ),  # fmt: skip
}


class Built:
    def __init__(self, root, name, cfg):
        self.cfg = cfg
        self.dir = write_mcu_trainer(root / name, cfg, feature_dim=D, num_classes=C, n_train=N)
        self.plan = mcu_plan(D, C, cfg, n_train=N)
        self.lib = build_host(self.dir, root / f"{name}.so", extra=_SO_FLAGS)
        self.host = HostTrainer(self.plan, self.lib)
        self.b = self.plan.plan.batch_size
        self.spe = N // self.b


_SO_FLAGS = ("-fPIC", "-shared", "-nostdlib", "-Wl,--no-undefined")
"""No libc and no undefined symbol: a call to memcpy, expf or anything else fails the link."""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcu")
    return {name: Built(root, name, cfg) for name, cfg in CONFIGS.items()}


def _train_c(bt: Built, x, y, steps=None):
    h = bt.host
    assert h.init(bt.cfg.epochs * bt.spe, bt.spe) == 0
    for i, (xb, yb) in enumerate(numpy_batches(x, y, N, bt.b, bt.cfg.seed, bt.cfg.epochs)):
        if steps is not None and i == steps:
            break
        assert h.train_step(xb, yb) == 0
    return h.head()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_c_trainer_matches_numpy_step_for_step(built, name):
    bt = built[name]
    x, y = _data()
    res = train_head(x[:N], y[:N], bt.cfg, num_classes=C, measure_memory=False)
    assert res.plan == bt.plan.plan  # the numpy runtime ran the plan the C trainer is sized by
    w, b = _train_c(bt, x[:N], y[:N])
    scale = float(np.abs(res.weights).max())
    assert scale > 0.05  # it trained
    np.testing.assert_allclose(w, res.weights, rtol=0, atol=WEIGHT_RTOL * scale)
    np.testing.assert_allclose(b, res.bias, rtol=0, atol=WEIGHT_RTOL * scale)
    ref = (x[N:] @ res.weights + res.bias).argmax(1)
    pred = bt.host.predict(x[N:])
    assert np.array_equal(pred, ref)
    assert (pred == y[N:]).mean() > 0.8


def test_get_and_set_state_resume_exactly(built):
    bt = built["momentum"]
    x, y = _data(1)
    full = _train_c(bt, x[:N], y[:N])
    k = bt.spe + 3
    _train_c(bt, x[:N], y[:N], steps=k)
    state = bt.host.head(), bt.host.momentum(), k
    assert bt.host.init(bt.cfg.epochs * bt.spe, bt.spe) == 0  # zeroes everything
    assert not bt.host.head()[0].any()
    bt.host.set_state(*state)
    batches = list(numpy_batches(x[:N], y[:N], N, bt.b, bt.cfg.seed, bt.cfg.epochs))
    for xb, yb in batches[k:]:
        assert bt.host.train_step(xb, yb) == 0
    w, b = bt.host.head()
    assert np.array_equal(w, full[0]) and np.array_equal(b, full[1])


def test_a_label_out_of_range_changes_nothing(built):
    bt = built["sgd"]
    x, y = _data()
    bt.host.init(10, 10)
    bt.host.train_step(x[: bt.b], y[: bt.b])
    before = bt.host.head()
    for bad in (C, -1):
        yb = y[: bt.b].copy()
        yb[-1] = bad
        assert bt.host.train_step(x[: bt.b], yb) == -1
    after = bt.host.head()
    assert np.array_equal(before[0], after[0]) and bt.host.lib.eh_get_step() == 1
    assert bt.host.init(0, 1) == -1 and bt.host.init(1, 0) == -1  # no schedule of 0 steps


@pytest.mark.parametrize("name", list(CONFIGS))
def test_learning_rate_schedule_matches_numpy(built, name):
    bt = built[name]
    cfg, total = bt.cfg, bt.cfg.epochs * bt.spe
    bt.host.init(total, bt.spe)
    for step in (0, 1, bt.spe - 1, bt.spe, total // 2, total - 1, total):
        ref = learning_rate(cfg.schedule, cfg.lr, step, total, steps_per_epoch=bt.spe,
                            step_epochs=cfg.step_epochs, gamma=cfg.gamma)  # fmt: skip
        got = bt.host.lib.eh_learning_rate(step)
        assert abs(got - ref) <= 1e-6 * cfg.lr, (step, got, ref)


def test_exp_without_libm_within_its_stated_error(built):
    h = built["sgd"].host
    # every float32 of a fine grid over the range used (a logit's e^x before the sum overflows
    # or underflows), plus the softmax's usual range densely
    xs = np.concatenate([np.linspace(-87.3, 88.7, 60001), np.linspace(-20, 20, 20001)])
    xs = xs.astype(np.float32)
    got = h.expf(xs).astype(np.float64)
    ref = np.exp(xs.astype(np.float64))
    rel = np.abs(got - ref) / ref
    assert rel.max() <= EXP_MAX_REL_ERROR, (rel.max(), xs[rel.argmax()])
    assert rel.max() > EXP_MAX_REL_ERROR / 20  # the bound is not loose by orders of magnitude
    edge = h.expf(np.array([89.0, -104.0, -100.0, 0.0, np.nan], np.float32))
    assert edge[0] == np.inf and edge[1] == 0.0 and edge[3] == 1.0 and np.isnan(edge[4])
    assert 0 < edge[2] < np.finfo(np.float32).tiny  # a denormal, as numpy's
    denormal_step = float(np.nextafter(np.float32(0), np.float32(1)))
    assert abs(float(edge[2]) - np.exp(-100.0)) <= 2 * denormal_step  # as exact as a denormal is


def test_softmax_overflow_takes_the_shifted_path_as_numpy(built):
    """Features so large that an unshifted e^z overflows: both redo the batch with the shift."""
    bt = built["sgd"]
    x, y = _data()
    x = x * 400.0
    res = train_head(x[:N], y[:N], bt.cfg, num_classes=C, measure_memory=False)
    w, b = _train_c(bt, x[:N], y[:N])
    assert np.isfinite(w).all()
    scale = float(np.abs(res.weights).max())
    np.testing.assert_allclose(w, res.weights, rtol=0, atol=WEIGHT_RTOL * scale)


_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "head_trainer.h"
/* usage: driver IN OUT STEPS: IN holds STEPS batches (features then labels), OUT gets the head */
int main(int argc, char **argv) {
    static float x[EH_BATCH * EH_FEATURES], w[EH_FEATURES * EH_CLASSES], b[EH_CLASSES];
    static int32_t y[EH_BATCH], cls[2 * EH_BATCH + 1];
    long steps = strtol(argv[3], NULL, 10), s;
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (argc != 4 || !in || !out || eh_init((uint32_t)steps, 1u) != 0) return 2;
    for (s = 0; s < steps; ++s) {
        if (fread(x, sizeof x, 1, in) != 1 || fread(y, sizeof y, 1, in) != 1) return 3;
        if (s % 2) { /* through the trainer's own buffer as well as by copy */
            float *fb = eh_features_buffer(); int i;
            for (i = 0; i < EH_BATCH * EH_FEATURES; ++i) fb[i] = x[i];
            if (eh_train_step(fb, y) != 0) return 4;
        } else if (eh_train_step(x, y) != 0) return 4;
    }
    eh_predict(x, EH_BATCH, cls);  /* and a ragged predict over the batch's end */
    eh_get_head(w, b);
    fwrite(w, sizeof w, 1, out); fwrite(b, sizeof b, 1, out);
    fclose(in); fclose(out);
    return 0;
}
"""


@pytest.mark.parametrize("name", ["momentum", "sgd"])
def test_sanitizer_build_gives_the_same_head(built, name, tmp_path):
    bt = built[name]
    driver = tmp_path / "driver.c"
    driver.write_text(_DRIVER)
    flags = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
    try:
        exe = build_host(bt.dir, tmp_path / "driver", extra=flags, sources=(driver,))
    except McuBuildError as e:
        if "asan" in str(e).lower() or "sanitizer" in str(e).lower():
            pytest.skip(f"the compiler has no sanitizer runtime: {e}")
        raise
    x, y = _data(2)
    steps = 2 * bt.spe
    batches = list(numpy_batches(x[:N], y[:N], N, bt.b, 0, 2))[:steps]
    blob = b"".join(
        xb.astype(np.float32).tobytes() + yb.astype(np.int32).tobytes() for xb, yb in batches
    )
    (tmp_path / "in.bin").write_bytes(blob)
    argv = [str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), str(steps)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "runtime error" not in proc.stderr
    out = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.float32)
    bt.host.init(steps, 1)
    for xb, yb in batches:
        assert bt.host.train_step(xb, yb) == 0
    w, b = bt.host.head()
    assert np.array_equal(out, np.concatenate([w.ravel(), b]))


def test_the_sources_build_warning_free_without_libc(built):
    # build_host compiles with -Wall -Wextra -Werror -pedantic; the fixture's libraries linked
    # with -nostdlib -Wl,--no-undefined, so the trainer calls nothing outside itself
    for bt in built.values():
        assert bt.lib.stat().st_size > 0
    text = c_source("head_trainer.c")
    assert "malloc" not in text and "#include <math.h>" not in text and "<string.h>" not in text


def test_a_budget_too_small_is_refused_naming_the_minimum(tmp_path):
    cfg = TrainConfig(budget="200KB")  # the quickstart head with momentum needs more
    with pytest.raises(BudgetError) as e:
        write_mcu_trainer(tmp_path / "mcu", cfg, feature_dim=256, num_classes=100)
    assert "the minimum is" in str(e.value) and e.value.minimum_bytes > 200 * 1024
    assert not (tmp_path / "mcu").exists()
    ok = TrainConfig(budget=e.value.minimum_bytes, batch_size=1)
    out = write_mcu_trainer(tmp_path / "mcu", ok, feature_dim=256, num_classes=100)
    plan = json.loads((out / PLAN_FILE).read_text())["plan"]
    assert plan["batch_size"] == 1 and plan["block_rows"] == 1


@pytest.mark.parametrize(
    "cfg, message",
    [
        (TrainConfig(budget="unlimited"), "needs a memory budget"),
        (TrainConfig(dtype="float64"), "float32"),
    ],
)
def test_settings_c_cannot_take_are_refused(tmp_path, cfg, message):
    with pytest.raises(TrainConfigError, match=message):
        write_mcu_trainer(tmp_path / "mcu", cfg, feature_dim=8, num_classes=3)


def test_the_plan_header_and_folder(tmp_path):
    out = write_mcu_trainer(tmp_path / "mcu", TrainConfig(), feature_dim=256, num_classes=100)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["README.md", "head_plan.h", "head_trainer.c", "head_trainer.h",
                            "link.ld", PLAN_FILE])  # fmt: skip
    header = (out / "head_plan.h").read_text()
    rec = json.loads((out / PLAN_FILE).read_text())
    assert f"#define EH_BATCH {rec['plan']['batch_size']}\n" in header
    assert f"#define EH_BLOCK_ROWS {rec['plan']['block_rows']}\n" in header
    assert "#define EH_BUF_MOMENTUM_WEIGHTS_BYTES 102400" in header
    assert rec["static_bytes"] <= rec["plan"]["analytic_bytes"]
    assert "LENGTH = 262144" in (out / "link.ld").read_text()
    assert "eh_train_step" in (out / "README.md").read_text()
    with pytest.raises(OverwriteError):
        write_mcu_trainer(out, TrainConfig(), feature_dim=256, num_classes=100)
    write_mcu_trainer(out, TrainConfig(), feature_dim=256, num_classes=10, overwrite=True)
    assert "#define EH_CLASSES 10\n" in (out / "head_plan.h").read_text()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(OverwriteError):
        write_mcu_trainer(foreign, TrainConfig(), feature_dim=8, num_classes=3, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "x"
    with pytest.raises(DataError, match="num_classes"):
        write_mcu_trainer(tmp_path / "x", TrainConfig(), feature_dim=8)


def test_a_bundle_gives_the_head_shape_and_the_folder_goes_beside_it(tmp_path, monkeypatch):
    from entropi.device import mcu_trainer

    bundle = tmp_path / "run" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    manifest = {"feature_dim": 16, "class_names": ["a", "b", "c"]}
    monkeypatch.setattr(mcu_trainer, "read_manifest", lambda path: manifest)
    out = write_mcu_trainer(bundle, TrainConfig(budget="64KB"))
    assert out == (tmp_path / "run" / "mcu").resolve()
    header = (out / "head_plan.h").read_text()
    assert "#define EH_FEATURES 16\n" in header and "#define EH_CLASSES 3\n" in header
    assert [p.name for p in bundle.iterdir()] == ["manifest.json"]  # the bundle stays as it was
    manifest["class_names"] = None
    with pytest.raises(DataError, match="pass num_classes"):
        write_mcu_trainer(bundle, TrainConfig(budget="64KB"), out=tmp_path / "m2")
    out = write_mcu_trainer(bundle, TrainConfig(budget="64KB"), num_classes=5, out=tmp_path / "m2")
    assert "#define EH_CLASSES 5\n" in (out / "head_plan.h").read_text()
