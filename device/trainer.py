"""Train the softmax-regression head with mini-batch SGD inside a measured memory budget.

The loop allocates every buffer once (sizes from :func:`.budget.plan_memory`), then each step
runs a fixed sequence of numpy calls that write into those buffers (``out=`` everywhere):

1. rows of the batch: ``(a*k + c) mod n_train`` for this epoch's affine order (no permutation
   array), gathered from the feature store (a memmap: "flash") into the batch buffer;
2. logits ``z = x @ W + b``; the softmax is computed in place in ``z`` (exp, row sums by a
   matrix-vector product; the max shift is applied only when a row sum leaves [1e-30, 1e30]),
   pre-scaled by ``lr / batch`` so that after subtracting the one-hot labels ``z`` holds
   ``lr * dL/dz``;
3. without momentum, when numpy's BLAS exposes cblas gemm (:mod:`._blas`), the weights are
   updated by one gemm, ``W = (1 - lr*wd) W - x.T @ z``, with no gradient buffer; otherwise in
   blocks of rows: ``g = x[:, blk].T @ z`` then ``W[blk] -= g`` (with decay, momentum), so a
   full gradient matrix is never materialized when the budget is tight; unblocked when it fits.

A feature store that is a memory-mapped ``.npy`` file is read with ``os.preadv`` into the batch
buffer (no page of it stays mapped, so the process RSS does not grow with the store).

Semantics equal ``torch.optim.SGD(lr, momentum, weight_decay, dampening=0)`` on the mean
cross-entropy of each batch (weight decay applies to the bias too, as in torch), with the
learning rate set per step by :func:`.schedule.learning_rate`. The last incomplete batch of an
epoch is dropped (each epoch's order differs, so every sample is still visited).

The held-out split is the tail of the feature store (the store is shuffled once when written):
rows ``[n_train, n)``. Early stopping watches the held-out loss; the best head is kept on flash
(``best_head.npz`` in the work folder) and read back into the weights at the end.
"""

from __future__ import annotations

import json
import math
import os
import time
import tracemalloc
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._blas import NO_TRANS, ROW_MAJOR, TRANS, find_gemm
from ._npz import read_npz_into, save_npz, warm_up
from ._pages import mapping_of, release_pages
from .budget import UFUNC_BUFSIZE, MemoryPlan, plan_memory
from .errors import DataError, ResumeError
from .errors import DataError as _DataError
from .schedule import SCHEDULES, epoch_order, learning_rate

__all__ = ["TrainConfig", "TrainResult", "train_head", "validate_training_data"]

_CHECK_ROWS = 1024
CHECKPOINT_NAME = "checkpoint.npz"
BEST_NAME = "best_head.npz"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of head training; validated on construction."""

    epochs: int = 30
    """Maximum number of passes over the training rows."""
    lr: float = 0.1
    """Peak learning rate (per step, for the batch-mean loss)."""
    momentum: float = 0.0
    """SGD momentum in [0, 1); > 0 adds a weight-sized buffer to the budget."""
    weight_decay: float = 0.0
    """L2 penalty coefficient (torch SGD ``weight_decay``), >= 0."""
    schedule: str = "cosine"
    """Learning-rate schedule: cosine (to 0 over all steps), step, or constant."""
    step_epochs: int = 30
    """For ``schedule='step'``: epochs between decays."""
    gamma: float = 0.1
    """For ``schedule='step'``: the decay factor."""
    batch_size: int = 32
    """Maximum samples per step; the planner may choose fewer to fit the budget."""
    val_fraction: float = 0.1
    """Fraction of rows held out (the tail of the store) for early stopping, in [0, 0.5]."""
    patience: int = 5
    """Stop after this many epochs without a lower held-out loss; 0 disables early stopping."""
    seed: int = 0
    """Seeds the data order of every epoch."""
    budget_bytes: int | None = None
    """RAM budget of the training loop in bytes; None means no limit (unblocked)."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every this many steps; 0 writes none."""
    dtype: str = "float32"
    """float32 (default) or float64 (for reference comparisons)."""

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "> 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("step_epochs", self.step_epochs >= 1, ">= 1"),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("val_fraction", 0 <= self.val_fraction <= 0.5, "in [0, 0.5]"),
            ("patience", self.patience >= 0, ">= 0"),
            ("budget_bytes", self.budget_bytes is None or self.budget_bytes > 0, "> 0"),
            ("checkpoint_every", self.checkpoint_every >= 0, ">= 0"),
            ("dtype", self.dtype in ("float32", "float64"), "float32 or float64"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise ValueError(f"{name} must be {valid}, got {getattr(self, name)!r}")

    def fingerprint(self) -> str:
        """What must match for a checkpoint to be resumed (everything but checkpoint_every)."""
        d = asdict(self)
        d.pop("checkpoint_every")
        return json.dumps(d, sort_keys=True)


@dataclass
class TrainResult:
    """The trained head and what training measured."""

    weights: np.ndarray
    """(feature_dim, num_classes)."""
    bias: np.ndarray
    """(num_classes,)."""
    plan: MemoryPlan
    steps: int
    """SGD steps run in this call (excluding steps restored from a checkpoint)."""
    samples: int
    """Training samples processed in this call (steps x batch size)."""
    seconds: float
    """Wall time of the training loop in this call (buffers, steps, eval, checkpoints)."""
    peak_bytes: int | None
    """tracemalloc peak of the loop above what was allocated before it (None if not measured)."""
    n_train: int
    n_val: int
    epochs_run: int
    stopped_early: bool
    best_epoch: int | None
    val_loss: float | None
    val_accuracy: float | None
    history: list[dict] = field(default_factory=list)
    """Per epoch: epoch, val_loss, val_accuracy (when a held-out split exists)."""

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def validate_training_data(
    features: np.ndarray, labels: np.ndarray, num_classes: int | None = None
) -> int:
    """Check shapes, finiteness (in chunks) and label range; return the number of classes."""
    if features.ndim != 2:
        raise DataError(f"features must be 2-D (samples, feature_dim), got shape {features.shape}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise DataError(
            f"labels must be 1-D with one label per feature row: got labels {labels.shape} "
            f"for features {features.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {labels.dtype}")
    mapping = mapping_of(features)
    for start in range(0, len(features), _CHECK_ROWS):
        chunk = features[start : start + _CHECK_ROWS]
        finite = bool(np.isfinite(chunk).all())
        release_pages(mapping)
        if not finite:
            bad = start + int(np.argwhere(~np.isfinite(chunk))[0, 0])
            raise DataError(
                f"features contain NaN or inf (first at row {bad}); check the encoder and the "
                "input normalization"
            )
    if len(labels) == 0:
        raise DataError("no training samples")
    lo, hi = int(labels.min()), int(labels.max())
    n_cls = num_classes if num_classes is not None else hi + 1
    if lo < 0 or hi >= n_cls:
        raise DataError(
            f"labels must lie in [0, {n_cls}), got values in [{lo}, {hi}]; "
            "pass the right number of classes"
        )
    if len(np.unique(labels)) < 2:
        raise DataError(f"labels hold a single class ({lo}); softmax training needs >= 2")
    return n_cls


def _open_store(x: np.ndarray) -> tuple[int | None, int, int]:
    """``(fd, data offset, row bytes)`` when ``x`` is a whole memory-mapped ``.npy`` store (its
    batches are then read from the file), else ``(None, 0, 0)`` (batches gathered in memory)."""
    if (
        isinstance(x, np.memmap)
        and mapping_of(x) is x.base
        and x.filename
        and x.flags.c_contiguous
        and x.dtype.isnative
    ):
        return os.open(x.filename, os.O_RDONLY), int(x.offset), x.shape[1] * x.dtype.itemsize
    return None, 0, 0


class _Loop:
    """Buffers and steps of one training run (all arrays allocated in ``__init__``)."""

    def __init__(
        self, x, y, n_train, n_classes, cfg: TrainConfig, plan: MemoryPlan, gemm=None
    ) -> None:
        ft = np.dtype(cfg.dtype)
        d, c, b, r = x.shape[1], n_classes, plan.batch_size, plan.block_rows
        self.x, self.y, self.n_train, self.cfg, self.plan = x, y, n_train, cfg, plan
        self.fd, self.offset, self.row_bytes = _open_store(x)
        self._closer = weakref.finalize(self, os.close, self.fd) if self.fd is not None else None
        self.d, self.c, self.b, self.r = d, c, b, r
        self.W = np.zeros((d, c), ft)
        self.bias = np.zeros(c, ft)
        self.V = np.zeros((d, c), ft) if cfg.momentum else None
        self.vb = np.zeros(c, ft) if cfg.momentum else None
        self.xb = np.empty((b, d), ft)
        self.xbT = self.xb.T
        self.z = np.empty((b, c), ft)
        self.zf = self.z.reshape(-1)
        self.rs = np.empty(b, ft)
        self.rs2 = self.rs[:, None]
        self.ll = np.empty(b, ft)
        self.ones_b = np.ones(b, ft)
        self.ones_c = np.ones(c, ft)
        self.gemm = gemm if plan.fused_update else None
        self.g = np.empty((0 if self.gemm else r, c), ft)
        self.gb = np.empty(c, ft)
        self.base = np.empty(b, np.intp)
        self.idx = np.empty(b, np.intp)
        self.yb = np.empty(b, np.intp)
        self.flat = np.empty(b, np.intp)
        self.rowoff = np.arange(0, b * c, c, dtype=np.intp)
        self.blocks = [(0, d)] if r >= d else None
        self.xb_bytes = memoryview(self.xb).cast("B") if self.fd is not None else None

    def close(self) -> None:
        """Close the feature store file (when batches are read from a file); idempotent."""
        if self._closer is not None:
            self._closer()

    def read_rows(self, idx: np.ndarray, m: int) -> None:
        """Rows ``idx[:m]`` of the store file into ``xb[:m]`` with ``os.preadv`` (page cache, not
        process memory: no page of the store stays mapped)."""
        fd, off, rb, mv = self.fd, self.offset, self.row_bytes, self.xb_bytes
        pos = 0
        for r in idx[:m].tolist():
            if os.preadv(fd, [mv[pos : pos + rb]], off + r * rb) != rb:
                raise _DataError(f"feature store {self.x.filename} is truncated at row {r}")
            pos += rb

    def read_range(self, r0: int, m: int) -> None:
        """Consecutive rows ``[r0, r0 + m)`` of the store file into ``xb[:m]`` (one read)."""
        rb = self.row_bytes
        if os.preadv(self.fd, [self.xb_bytes[: m * rb]], self.offset + r0 * rb) != m * rb:
            raise _DataError(f"feature store {self.x.filename} is truncated at row {r0}")

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"weights": self.W, "bias": self.bias}
        if self.V is not None:
            out |= {"momentum_weights": self.V, "momentum_bias": self.vb}
        return out

    def run_epoch_steps(
        self, epoch: int, k0: int, k1: int, step0: int, lr_at: Callable[[int], float], after
    ) -> None:
        """Steps ``k0..k1-1`` of ``epoch``; ``after(global_step)`` runs after each step."""
        np_take, np_matmul, np_add, np_sub = np.take, np.matmul, np.add, np.subtract
        np_mul, np_div, np_exp, np_rem, np_put = (
            np.multiply,
            np.divide,
            np.exp,
            np.remainder,
            np.put,
        )
        maxred, minred = np.maximum.reduce, np.minimum.reduce
        x, y, W, bias, V, vb = self.x, self.y, self.W, self.bias, self.V, self.vb
        xb, xbT, z, zf, rs, rs2, ll = self.xb, self.xbT, self.z, self.zf, self.rs, self.rs2, self.ll
        ones_b, ones_c, g, gb = self.ones_b, self.ones_c, self.g, self.gb
        base, idx, yb, flat, rowoff = self.base, self.idx, self.yb, self.flat, self.rowoff
        b, n, d, r = self.b, self.n_train, self.d, self.r
        mu, wd = self.cfg.momentum, self.cfg.weight_decay
        a, c0 = epoch_order(self.cfg.seed, epoch, n)
        np.floor_divide(rowoff, self.c, base)
        np_mul(base, a, base)
        inv_b = 1.0 / b
        reader = self.read_rows if self.fd is not None else None
        gemm = self.gemm
        px, pz, pw = self.xb.ctypes.data, self.z.ctypes.data, W.ctypes.data
        for k in range(k0, k1):
            step = step0 + (k - k0)
            lr = lr_at(step)
            np_add(base, (a * k * b + c0) % n, idx)
            np_rem(idx, n, idx)
            if reader is None:
                np_take(x, idx, 0, xb, "clip")
            else:
                reader(idx, b)
            np_take(y, idx, 0, yb, "clip")
            # logits, softmax in place, scaled: z = s * (softmax(z) - onehot), s = lr/b or 1/b
            np_matmul(xb, W, z)
            np_add(z, bias, z)
            # exp without the max shift when every row sum stays in [1e-30, 1e30] (no overflow,
            # no denormal loss: softmax is shift-invariant); else recompute with the shift
            np_exp(z, z)
            np_matmul(z, ones_c, rs)
            if not (minred(rs) >= 1e-30 and maxred(rs) <= 1e30):
                np_matmul(xb, W, z)
                np_add(z, bias, z)
                maxred(z, 1, None, rs)
                np_sub(z, rs2, z)
                np_exp(z, z)
                np_matmul(z, ones_c, rs)
            s = inv_b if mu else lr * inv_b
            np_div(s, rs, rs)
            np_mul(z, rs2, z)
            np_add(rowoff, yb, flat)
            np_take(zf, flat, 0, ll, "clip")
            np_sub(ll, s, ll)
            np_put(zf, flat, ll)
            # bias and weights (blocks of rows of W)
            np_matmul(ones_b, z, gb)
            if mu:
                self._momentum_update(bias, vb, gb, lr, mu, wd)
            else:
                if wd:
                    np_mul(bias, 1.0 - lr * wd, bias)
                np_sub(bias, gb, bias)
            if gemm is not None:  # W = (1 - lr*wd) W - x^T z in one BLAS call
                gemm(ROW_MAJOR, TRANS, NO_TRANS, d, self.c, b, -1.0, px, d, pz, self.c,
                     1.0 - lr * wd, pw, self.c)  # fmt: skip
                after(step)
                continue
            blocks = self.blocks or ((r0, min(d, r0 + r)) for r0 in range(0, d, r))
            for r0, r1 in blocks:
                if r1 - r0 == d:
                    gv, wv, xv = g, W, xbT
                else:
                    gv, wv, xv = g[: r1 - r0], W[r0:r1], xbT[r0:r1]
                np_matmul(xv, z, gv)
                if mu:
                    self._momentum_update(wv, V[r0:r1], gv, lr, mu, wd)
                else:
                    if wd:
                        np_mul(wv, 1.0 - lr * wd, wv)
                    np_sub(wv, gv, wv)
            after(step)

    @staticmethod
    def _momentum_update(p, v, grad, lr, mu, wd) -> None:
        """torch SGD: v = mu*v + (grad + wd*p); p -= lr*v. ``grad`` is reused as scratch."""
        np.multiply(v, mu, v)
        np.add(v, grad, v)
        if wd:
            np.multiply(p, wd, grad)
            np.add(v, grad, v)
        np.multiply(v, lr, grad)
        np.subtract(p, grad, p)

    def evaluate(self, start: int, stop: int) -> tuple[float, float]:
        """Mean loss and accuracy of rows ``[start, stop)`` using the batch buffers."""
        loss_sum, correct = 0.0, 0
        for r0 in range(start, stop, self.b):
            m = min(self.b, stop - r0)
            xb, z, zf, rs, ll = (
                self.xb[:m],
                self.z[:m],
                self.zf[: m * self.c],
                self.rs[:m],
                self.ll[:m],
            )
            idx, yb, flat, rowoff = self.idx[:m], self.yb[:m], self.flat[:m], self.rowoff[:m]
            np.floor_divide(rowoff, self.c, idx)
            np.add(idx, r0, idx)
            if self.fd is not None:
                self.read_range(r0, m)
            else:
                np.take(self.x, idx, 0, xb, "clip")
            np.take(self.y, idx, 0, yb, "clip")
            np.matmul(xb, self.W, z)
            np.add(z, self.bias, z)
            np.add(rowoff, yb, flat)
            np.take(zf, flat, 0, ll, "clip")
            np.maximum.reduce(z, 1, None, rs)
            np.subtract(ll, rs, ll)
            np.subtract(z, rs[:, None], z)
            np.exp(z, z)
            np.matmul(z, self.ones_c[:, None], rs[:, None])
            np.log(rs, rs)
            np.subtract(rs, ll, rs)
            loss_sum += float(np.add.reduce(rs))
            np.argmax(z, 1, flat)
            np.equal(flat, yb, flat)
            correct += int(np.add.reduce(flat))
        n = max(stop - start, 1)
        return loss_sum / n, correct / n


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    *,
    num_classes: int | None = None,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    measure_memory: bool = True,
    hook: Callable[[int], None] | None = None,
    blas: bool = True,
) -> TrainResult:
    """Train a head on ``features`` (N, D) and ``labels`` (N,) within ``config.budget_bytes``.

    ``features`` is the feature store: an array or (preferably) a read-only ``np.memmap`` whose
    rows are already in random order (:func:`.features.extract_features` writes them shuffled);
    rows ``[n_train, N)`` are the held-out split. ``workdir`` holds checkpoints and the best head
    (needed for ``checkpoint_every``, ``resume`` and early stopping). ``hook(step)`` is called
    after every step (tests use it to interrupt a run). The budget is planned before anything is
    allocated; :class:`.errors.BudgetError` states the minimum when it cannot fit.

    ``blas``: without momentum, update the weights with one BLAS gemm per step (no gradient
    buffer; :mod:`._blas`) when numpy's BLAS exposes it; False forces the numpy path.
    """
    ft = np.dtype(config.dtype)
    if features.dtype != ft:
        features = np.asarray(features, dtype=ft)
    labels = np.asarray(labels)
    n_cls = validate_training_data(features, labels, num_classes)
    if labels.dtype != np.intp:
        labels = labels.astype(np.intp)
    n = len(features)
    n_val = round(config.val_fraction * n) if config.val_fraction > 0 else 0
    n_train = n - n_val
    if n_train < 2 or (config.val_fraction > 0 and n_val < 1):
        raise DataError(
            f"{n} samples are too few for val_fraction={config.val_fraction}: need >= 2 training "
            "rows and >= 1 held-out row"
        )
    if len(np.unique(labels[:n_train])) < 2:
        raise DataError("the training split holds a single class; softmax training needs >= 2")
    d = features.shape[1]
    gemm = find_gemm(ft) if blas and config.momentum == 0 else None
    plan = plan_memory(
        d,
        n_cls,
        config.budget_bytes,
        max_batch_size=min(config.batch_size, n_train),
        momentum=config.momentum > 0,
        dtype=ft,
        epochs=config.epochs,
        fused_update=gemm is not None,
    )
    workdir = Path(workdir) if workdir is not None else None
    if workdir is None and (config.checkpoint_every or resume):
        raise ValueError("checkpoint_every and resume need a workdir")
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    if workdir is not None:
        warm_up()
    old_bufsize = np.setbufsize(UFUNC_BUFSIZE)
    old_err = np.seterr(over="ignore")  # an overflowing unshifted exp is detected and redone
    _warm_up(features, labels, n_train, n_cls, config, plan, gemm)
    tracing = tracemalloc.is_tracing()
    if measure_memory:
        if not tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        base_bytes = tracemalloc.get_traced_memory()[0]
    try:
        return _train(
            features,
            labels,
            config,
            plan,
            n_cls,
            n_train,
            workdir,
            resume,
            hook,
            measure_memory,
            base_bytes if measure_memory else 0,
            gemm,
        )
    finally:
        np.setbufsize(old_bufsize)
        np.seterr(**old_err)
        if measure_memory and not tracing:
            tracemalloc.stop()


def _train(
    features, labels, config, plan, n_cls, n_train, workdir, resume, hook, measure, base_bytes, gemm
):
    n, d = features.shape
    n_val = n - n_train
    keep_best = config.patience > 0 and n_val > 0 and workdir is not None
    spe = n_train // plan.batch_size
    total_steps = config.epochs * spe
    fingerprint = json.dumps(
        {
            "config": config.fingerprint(),
            "plan": [plan.batch_size, plan.block_rows],
            "shape": [n, d, n_cls],
        }
    )

    def lr_at(step: int) -> float:
        return learning_rate(
            config.schedule,
            config.lr,
            step,
            total_steps,
            steps_per_epoch=spe,
            step_epochs=config.step_epochs,
            gamma=config.gamma,
        )

    t0 = time.perf_counter()
    loop = _Loop(features, labels, n_train, n_cls, config, plan, gemm)
    state = {"step": 0, "best": math.inf, "best_epoch": -1, "bad": 0, "stopped": False}
    hist = np.full((2, config.epochs), np.nan)  # held-out loss, accuracy per epoch
    ckpt = workdir / CHECKPOINT_NAME if workdir is not None else None
    if resume and ckpt is not None and ckpt.exists():
        _restore(ckpt, {**loop.arrays(), "history": hist}, state, fingerprint)
    start_step = state["step"]

    def save_checkpoint() -> None:
        meta = {k: np.asarray(v) for k, v in state.items()}
        save_npz(
            ckpt,
            {
                **loop.arrays(),
                "history": hist,
                **meta,
                "fingerprint": np.frombuffer(fingerprint.encode(), np.uint8),
            },
        )

    def after(step: int) -> None:
        state["step"] = step + 1
        if (step + 1) % spe == 0:
            epoch = step // spe
            if n_val:
                vl, va = loop.evaluate(n_train, n)
                hist[0, epoch], hist[1, epoch] = vl, va
                if vl < state["best"]:
                    state.update(best=vl, best_epoch=epoch, bad=0)
                    if keep_best:
                        save_npz(workdir / BEST_NAME, {"weights": loop.W, "bias": loop.bias})
                else:
                    state["bad"] += 1
                    if config.patience and state["bad"] >= config.patience:
                        state["stopped"] = True
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            save_checkpoint()
        if hook is not None:
            hook(step)

    step = state["step"]
    while step < total_steps and not state["stopped"]:
        epoch, k = divmod(step, spe)
        loop.run_epoch_steps(epoch, k, spe, step, lr_at, after)
        step = state["step"]
    if keep_best and state["best_epoch"] >= 0 and (workdir / BEST_NAME).exists():
        read_npz_into(workdir / BEST_NAME, {"weights": loop.W, "bias": loop.bias})
    val_loss = val_acc = None
    if n_val:
        val_loss, val_acc = loop.evaluate(n_train, n)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base_bytes if measure else None
    if config.checkpoint_every:
        save_checkpoint()
    steps = state["step"] - start_step
    loop.close()
    return TrainResult(
        weights=loop.W,
        bias=loop.bias,
        plan=plan,
        steps=steps,
        samples=steps * plan.batch_size,
        seconds=seconds,
        peak_bytes=peak,
        n_train=n_train,
        n_val=n_val,
        epochs_run=math.ceil(state["step"] / spe),
        stopped_early=bool(state["stopped"]),
        best_epoch=state["best_epoch"] if state["best_epoch"] >= 0 else None,
        val_loss=val_loss,
        val_accuracy=val_acc,
        history=[
            {"epoch": e, "val_loss": float(hist[0, e]), "val_accuracy": float(hist[1, e])}
            for e in range(config.epochs)
            if not np.isnan(hist[0, e])
        ],
    )


def _warm_up(x, y, n_train, n_cls, config: TrainConfig, plan: MemoryPlan, gemm=None) -> None:
    """Run two steps and a short evaluation with throw-away buffers, outside the measured window.

    numpy fills per-ufunc dispatch caches and Python its lazy imports on first use; doing that
    here, with the real shapes and plan, keeps one-time allocations out of the measured peak.
    """
    loop = _Loop(x, y, n_train, n_cls, config, plan, gemm)
    loop.run_epoch_steps(0, 0, min(2, n_train // plan.batch_size), 0, lambda s: 0.0, _no_hook)
    loop.evaluate(0, min(len(x), plan.batch_size + 1))
    loop.close()
    epoch_order(config.seed, 0, n_train)


def _no_hook(step: int) -> None:
    pass


def _restore(path: Path, arrays: dict, state: dict, fingerprint: str) -> None:
    """Load a checkpoint into the loop's buffers and ``state``; reject a foreign one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            saved = data["fingerprint"].tobytes().decode()
            meta = {k: data[k].item() for k in state}
    except (OSError, ValueError, KeyError) as e:
        raise ResumeError(f"checkpoint {path} is unreadable ({e}); delete it to start over") from e
    if saved != fingerprint:
        raise ResumeError(
            f"checkpoint {path} was written with a different configuration or data "
            f"({saved}); now {fingerprint}. Use the same settings or delete the checkpoint."
        )
    read_npz_into(path, arrays)
    state.update(meta)
