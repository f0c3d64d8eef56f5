"""Train the softmax-regression head with mini-batch SGD inside a measured memory budget.

:class:`StepLoop` allocates every buffer once (the list of :func:`.budget.loop_buffers`, sized by
the plan of :func:`.budget.plan_memory`), then each step runs a fixed sequence of numpy calls
that write into those buffers (``out=`` everywhere):

1. rows of the batch: ``(a*k + c) mod n_train`` for this epoch's affine order (no permutation
   array), gathered from the feature store (a memmap: "flash") into the batch buffer; a whole
   ``.npy`` store is read with ``os.preadv`` (:class:`.store.StoreReader`), so no page of it
   stays mapped and the process RSS does not grow with the store;
2. logits ``z = x @ W + b``; the softmax is computed in place in ``z`` (exp, row sums by a
   matrix-vector product; the max shift is applied only when a row sum leaves [1e-30, 1e30]),
   pre-scaled by ``lr / batch`` so that after subtracting the one-hot labels ``z`` holds
   ``lr * dL/dz``;
3. without momentum, when numpy's BLAS exposes cblas gemm (:mod:`.blas`), the weights are
   updated by one gemm, ``W = (1 - lr*wd) W - x.T @ z``, with no gradient buffer; otherwise in
   blocks of rows: ``g = x[:, blk].T @ z`` then ``W[blk] -= g`` (with decay, momentum), so a
   full gradient matrix is never materialized when the budget is tight; unblocked when it fits.

Semantics equal ``torch.optim.SGD(lr, momentum, weight_decay, dampening=0)`` on the mean
cross-entropy of each batch (weight decay applies to the bias too, as in torch), with the
learning rate set per step by :func:`.schedule.learning_rate`. The last incomplete batch of an
epoch is dropped (each epoch's order differs, so every sample is still visited).

The held-out split is the tail of the feature store (the store is shuffled once when written):
rows ``[n_train, n)``. Early stopping watches the held-out loss; the best head is kept on flash
(``best_head.npz`` in the work folder) and read back into the weights at the end. Checkpoints
are :mod:`.checkpoint`'s.
"""

from __future__ import annotations

import math
import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from entropi.common.files import ensure_real_dir

from ._npz import read_npz_into, save_npz, warm_up
from .blas import NO_TRANS, ROW_MAJOR, TRANS, find_gemm
from .budget import UFUNC_BUFSIZE, MemoryPlan, history_spec, loop_buffers, plan_memory
from .checkpoint import CHECKPOINT_NAME, Checkpoint, TrainState, data_digest, run_fingerprint
from .config import TrainConfig, TrainResult
from .errors import DataError, DeviceError
from .schedule import epoch_order, learning_rate
from .store import StoreReader, validate_training_data

__all__ = ["BEST_NAME", "StepLoop", "train_head"]

BEST_NAME = "best_head.npz"


class StepLoop:
    """The buffers and the steps of one training run: every array is allocated in ``__init__``
    from :func:`.budget.loop_buffers` (the list the planner counted), none in a step.

    ``x`` (N, D) in ``cfg.dtype`` and ``y`` (N,) intp are the feature store and its labels (rows
    ``[0, n_train)`` are trained on); ``plan`` must be :func:`.budget.plan_memory`'s for these
    shapes and ``cfg``. ``gemm`` (:func:`.blas.find_gemm`) runs the fused weight update of a
    ``plan.fused_update`` plan (found here when not given). :meth:`run_epoch_steps` runs steps,
    :meth:`evaluate` scores rows; :meth:`close` closes the store file.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        n_train: int,
        n_classes: int,
        cfg: TrainConfig,
        plan: MemoryPlan,
        gemm: Callable | None = None,
    ) -> None:
        ft = np.dtype(cfg.dtype)
        d, c, b, r = x.shape[1], n_classes, plan.batch_size, plan.block_rows
        if plan.fused_update and gemm is None:
            gemm = find_gemm(ft)
            if gemm is None:
                raise ValueError("the plan has a fused update but numpy's BLAS has no gemm")
        specs = loop_buffers(
            d, c, b, r, momentum=cfg.momentum > 0, dtype=ft, fused_update=plan.fused_update
        )
        if any(plan.buffers.get(s.name, 0) != s.nbytes for s in specs if s.held_by == "loop"):
            raise ValueError(f"the plan was not made for {d} features x {c} classes and cfg")
        buf = {s.name: s.allocate() for s in specs if s.held_by == "loop"}
        self.x, self.y, self.n_train, self.cfg, self.plan = x, y, n_train, cfg, plan
        self.d, self.c, self.b, self.r = d, c, b, r
        self.W, self.bias = buf["weights"], buf["bias"]
        self.V, self.vb = buf.get("momentum_weights"), buf.get("momentum_bias")
        self.xb = buf["features_batch"]
        self.xbT = self.xb.T
        self.z = buf["logits_batch"]
        self.zf = self.z.reshape(-1)
        self.rs, self.ll = buf["row_stat"], buf["label_logit"]
        self.rs2 = self.rs[:, None]
        self.ones_b, self.ones_c = buf["ones_batch"], buf["ones_classes"]
        self.g, self.gb = buf["grad_block"], buf["grad_bias"]
        self.base, self.idx = buf["index_base"], buf["index_batch"]
        self.yb, self.flat = buf["labels_batch"], buf["flat_index"]
        self.rowoff = buf["row_offsets"]
        np.multiply(np.arange(b, dtype=np.intp), c, self.rowoff)
        self.gemm = gemm if plan.fused_update else None
        self.blocks = [(0, d)] if r >= d else None
        self.store = StoreReader.open(x, self.xb)

    def close(self) -> None:
        """Close the feature store file (when batches are read from a file); idempotent."""
        if self.store is not None:
            self.store.close()

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a checkpoint holds: weights and bias (and the momentum buffers)."""
        out = {"weights": self.W, "bias": self.bias}
        if self.V is not None:
            out |= {"momentum_weights": self.V, "momentum_bias": self.vb}
        return out

    def run_epoch_steps(
        self, epoch: int, k0: int, k1: int, step0: int, lr_at: Callable[[int], float], after
    ) -> None:
        """Steps ``k0..k1-1`` of ``epoch`` (global steps ``step0...``) at learning rate
        ``lr_at(global_step)``; ``after(global_step)`` runs after each step."""
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
        reader = self.store.read_rows if self.store is not None else None
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
            if self.store is not None:
                self.store.read_range(r0, m)
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
    """Train a head on ``features`` (N, D) and ``labels`` (N,) within ``config.budget``.

    ``features`` is the feature store: an array or (preferably) a read-only ``np.memmap`` whose
    rows are already in random order (:func:`.features.extract_features` writes them shuffled);
    rows ``[n_train, N)`` are the held-out split. ``workdir`` holds checkpoints and the best head
    (needed for ``checkpoint_every``, ``resume`` and early stopping). ``hook(step)`` is called
    after every step (tests use it to interrupt a run). The budget is planned before anything is
    allocated; :class:`.errors.BudgetError` states the minimum when it cannot fit.

    ``blas``: without momentum, update the weights with one BLAS gemm per step (no gradient
    buffer; :mod:`.blas`) when numpy's BLAS exposes it; False forces the numpy path.
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
    gemm = find_gemm(ft) if blas and config.momentum == 0 else None
    plan = plan_memory(
        features.shape[1],
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
        ensure_real_dir(workdir)  # checkpoints never go through a planted link
        warm_up()
    old_bufsize = np.setbufsize(UFUNC_BUFSIZE)
    old_err = np.seterr(over="ignore")  # an overflowing unshifted exp is detected and redone
    _warm_up(features, labels, n_train, n_cls, config, plan, gemm)
    # hashed outside the measured window (a resume must find the same features and labels)
    digest = data_digest(features, labels) if workdir is not None else ""
    tracing = tracemalloc.is_tracing()
    base_bytes = 0
    if measure_memory:
        if not tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        base_bytes = tracemalloc.get_traced_memory()[0]
    try:
        run = _Run(features, labels, config, plan, n_cls, n_train, workdir, hook, gemm, digest)
        return run.train(resume, base_bytes if measure_memory else None)
    finally:
        np.setbufsize(old_bufsize)
        np.seterr(**old_err)
        if measure_memory and not tracing:
            tracemalloc.stop()


class _Run:
    """One call of :func:`train_head` inside the measured window: the loop, the state, the
    per-epoch history, and what happens at the end of each step (:meth:`after`)."""

    def __init__(self, features, labels, config, plan, n_cls, n_train, workdir, hook, gemm, digest):
        n, d = features.shape
        self.config, self.plan, self.hook, self.workdir = config, plan, hook, workdir
        self.n, self.n_train, self.n_val = n, n_train, n - n_train
        self.keep_best = config.patience > 0 and self.n_val > 0 and workdir is not None
        self.spe = n_train // plan.batch_size
        self.total_steps = config.epochs * self.spe
        self.t0 = time.perf_counter()
        self.loop = StepLoop(features, labels, n_train, n_cls, config, plan, gemm)
        self.state = TrainState()
        self.hist = history_spec(config.epochs).allocate()  # held-out loss, accuracy per epoch
        self.ckpt = None
        if workdir is not None:
            arrays = {**self.loop.arrays(), "history": self.hist}
            fingerprint = run_fingerprint(config, plan, (n, d, n_cls), digest)
            self.ckpt = Checkpoint(workdir / CHECKPOINT_NAME, arrays, fingerprint)

    def lr_at(self, step: int) -> float:
        c = self.config
        return learning_rate(
            c.schedule,
            c.lr,
            step,
            self.total_steps,
            steps_per_epoch=self.spe,
            step_epochs=c.step_epochs,
            gamma=c.gamma,
        )

    def after(self, step: int) -> None:
        """After global step ``step``: held-out evaluation and early stopping at the end of an
        epoch, checkpoints, the hook."""
        state, config = self.state, self.config
        state.step = step + 1
        if (step + 1) % self.spe == 0:
            epoch = step // self.spe
            if self.n_val:
                vl, va = self.loop.evaluate(self.n_train, self.n)
                self.hist[0, epoch], self.hist[1, epoch] = vl, va
                if vl < state.best:
                    state.best, state.best_epoch, state.bad = vl, epoch, 0
                    if self.keep_best:
                        save_npz(self.workdir / BEST_NAME, self._head())
                else:
                    state.bad += 1
                    if config.patience and state.bad >= config.patience:
                        state.stopped = True
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            self.ckpt.save(state)
        if self.hook is not None:
            self.hook(step)

    def _head(self) -> dict[str, np.ndarray]:
        return {"weights": self.loop.W, "bias": self.loop.bias}

    def train(self, resume: bool, base_bytes: int | None) -> TrainResult:
        """Run (or resume) to the end; ``base_bytes``: tracemalloc's count before the run (None:
        memory not measured)."""
        state, loop, spe, config = self.state, self.loop, self.spe, self.config
        if resume and self.ckpt is not None and self.ckpt.exists():
            self.ckpt.restore(state)
        start_step = step = state.step
        while step < self.total_steps and not state.stopped:
            epoch, k = divmod(step, spe)
            loop.run_epoch_steps(epoch, k, spe, step, self.lr_at, self.after)
            step = state.step
        best = self.workdir / BEST_NAME if self.keep_best else None
        if best is not None and state.best_epoch >= 0 and best.exists():
            read_npz_into(best, self._head())
        val_loss = val_acc = None
        if self.n_val:
            val_loss, val_acc = loop.evaluate(self.n_train, self.n)
            val_loss = _finite(val_loss)
        seconds = time.perf_counter() - self.t0
        peak = tracemalloc.get_traced_memory()[1] - base_bytes if base_bytes is not None else None
        _check_finite(loop.W, loop.bias, config)  # after the peak: its test allocates
        if config.checkpoint_every:
            self.ckpt.save(state)
        steps = state.step - start_step
        loop.close()
        hist = self.hist
        return TrainResult(
            weights=loop.W,
            bias=loop.bias,
            plan=self.plan,
            steps=steps,
            samples=steps * self.plan.batch_size,
            seconds=seconds,
            peak_bytes=peak,
            n_train=self.n_train,
            n_val=self.n_val,
            epochs_run=math.ceil(state.step / spe),
            stopped_early=bool(state.stopped),
            best_epoch=state.best_epoch if state.best_epoch >= 0 else None,
            val_loss=val_loss,
            val_accuracy=val_acc,
            history=[
                {"epoch": e, "val_loss": _finite(hist[0, e]), "val_accuracy": float(hist[1, e])}
                for e in range(config.epochs)
                if not np.isnan(hist[0, e])
            ],
        )


def _finite(x) -> float | None:
    """``x`` as a float, None when it is NaN or inf (JSON has no such numbers)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _check_finite(weights: np.ndarray, bias: np.ndarray, config: TrainConfig) -> None:
    """:class:`.errors.DeviceError` when training ended with NaN or inf in the head (diverged):
    such a head must never be written."""
    if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
        raise DeviceError(
            f"training diverged: the head holds NaN or inf after {config.epochs} epochs at lr "
            f"{config.lr:g}; lower the learning rate (--lr) or check the features"
        )


def _warm_up(x, y, n_train, n_cls, config: TrainConfig, plan: MemoryPlan, gemm=None) -> None:
    """Run two steps and a short evaluation with throw-away buffers, outside the measured window.

    numpy fills per-ufunc dispatch caches and Python its lazy imports on first use; doing that
    here, with the real shapes and plan, keeps one-time allocations out of the measured peak.
    """
    loop = StepLoop(x, y, n_train, n_cls, config, plan, gemm)
    loop.run_epoch_steps(0, 0, min(2, n_train // plan.batch_size), 0, _zero_lr, _no_hook)
    loop.evaluate(0, min(len(x), plan.batch_size + 1))
    loop.close()
    epoch_order(config.seed, 0, n_train)


def _zero_lr(step: int) -> float:
    return 0.0


def _no_hook(step: int) -> None:
    pass
