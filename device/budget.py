"""The memory budget of the head-training loop: sizes, analytic accounting, and the plan.

What the budget covers: the RAM the training loop holds while it runs, i.e. the head's weights
and bias, the optimizer state (momentum buffers), one batch of features, its logits/probabilities,
the per-batch index arrays, the gradient block, and the interpreter overhead of the loop (a fixed
reserve, :data:`RESERVE_BYTES`). What it does not cover: the feature store, which lives in a
memory-mapped file ("flash") and is read one batch at a time, and the Python interpreter and
libraries loaded before training (the process RSS, reported separately by the benchmark).

:func:`loop_buffers` is the one list of those buffers: the planner sums it and the loop
allocates from it, so the accounting cannot drift from what the loop holds.

Sizes: ``KB`` = 1024 bytes, ``MB`` = 1024**2 and ``GB`` = 1024**3 bytes (``KiB``/``MiB``/``GiB``
are accepted too).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

from .errors import BudgetError, TrainConfigError

__all__ = [
    "MIN_BLOCK_ROWS",
    "RESERVE_BYTES",
    "UFUNC_BUFSIZE",
    "BufferSpec",
    "MemoryPlan",
    "buffer_bytes",
    "format_size",
    "history_spec",
    "loop_buffers",
    "parse_size",
    "plan_memory",
]

#: Bytes reserved for what the loop allocates besides its buffers: array headers and views,
#: Python floats/ints, the zip writer of checkpoints (~9 KB) and first-call interpreter warm-up
#: (~8 KB in a fresh process), with margin. Measured with tracemalloc (the tests
#: check that measured peak <= analytic + reserve).
RESERVE_BYTES = 24 * 1024

#: numpy's ufunc buffer size (elements) while the loop runs: broadcasting ufuncs allocate a
#: temporary of min(bufsize, size) elements per call, 8192 by default (32 KB in float32).
UFUNC_BUFSIZE = 256

#: The planner prefers weight-update blocks of at least this many rows (fewer, larger GEMMs) and
#: only goes below it when nothing else fits.
MIN_BLOCK_ROWS = 16

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2}
_UNITS |= {"mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*$")

#: Largest size :func:`parse_size` accepts (1 TB): anything larger is a typo, not a budget.
MAX_SIZE = 1024**4


def parse_size(text: str | int) -> int:
    """``"256KB"`` -> 262144. Units B, KB, MB, GB (KB = 1024 B, MB = 1024 KB, GB = 1024 MB;
    KiB, MiB, GiB too); a bare number is B and must be whole (``"1.5"`` is refused, not 1 B).
    Fractions of a larger unit are exact (``"1.5KB"`` = 1536 B, rounded down to whole bytes).
    :class:`.errors.TrainConfigError` for anything else, a size <= 0 bytes or one above
    :data:`MAX_SIZE`."""
    if isinstance(text, int | np.integer) and not isinstance(text, bool):
        value, unit = Fraction(int(text)), ""
    else:
        m = _SIZE_RE.match(text) if isinstance(text, str) else None
        if not m and isinstance(text, str) and _SIZE_RE.match(text.strip().lstrip("-")):
            raise TrainConfigError(f"invalid size {text!r}: must be > 0 bytes")
        if not m or m.group(2).lower() not in _UNITS:
            raise TrainConfigError(
                f"invalid size {text!r}: use a number followed by B, KB, MB or GB "
                "(KB = 1024 B, MB = 1024 KB, GB = 1024 MB), e.g. 256KB"
            )
        value, unit = Fraction(m.group(1)), m.group(2).lower()
        if _UNITS[unit] == 1 and value.denominator != 1:
            raise TrainConfigError(
                f"invalid size {text!r}: bytes must be a whole number (or give a unit: KB, MB, GB)"
            )
    size = math.floor(value * _UNITS[unit])
    if size <= 0:
        raise TrainConfigError(f"invalid size {text!r}: must be > 0 bytes")
    if size > MAX_SIZE:
        raise TrainConfigError(f"invalid size {text!r}: more than 1024 GB")
    return size


def format_size(n: int) -> str:
    """``262144`` -> ``"256.0 KB"`` (KB = 1024 B)."""
    if n >= 1024**2:
        return f"{n / 1024**2:.2f} MB"
    if n >= 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n} B"


@dataclass(frozen=True)
class BufferSpec:
    """One buffer of the training loop: what the planner counts and the loop allocates."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    init: str = "empty"
    """How the loop fills it when allocating: ``empty``, ``zeros``, ``ones`` or ``nan``."""
    held_by: str = "loop"
    """Who allocates it: ``loop`` (:class:`.trainer.StepLoop`), ``run`` (the per-epoch history,
    :func:`.trainer.train_head`) or ``numpy`` (the ufunc buffer numpy allocates per call)."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def allocate(self) -> np.ndarray:
        """A new array of this shape and dtype, filled as :attr:`init` says."""
        if self.init == "empty":
            return np.empty(self.shape, self.dtype)
        fill = {"zeros": 0, "ones": 1, "nan": np.nan}[self.init]
        return np.full(self.shape, fill, self.dtype)


def loop_buffers(
    feature_dim: int,
    num_classes: int,
    batch_size: int,
    block_rows: int,
    *,
    momentum: bool,
    dtype: np.dtype | type = np.float32,
    epochs: int = 0,
    fused_update: bool = False,
) -> list[BufferSpec]:
    """Every buffer the training loop holds, in allocation order: the one list that both the
    planner (:func:`buffer_bytes`, :func:`plan_memory`) and the loop (:class:`.trainer.StepLoop`)
    use.

    ``block_rows`` sizes the gradient block (0 rows with ``fused_update``: the BLAS update needs
    none); ``epochs`` sizes the per-epoch history (held-out loss and accuracy, float64).
    """
    f, i = np.dtype(dtype), np.dtype(np.intp)
    d, c, b = feature_dim, num_classes, batch_size
    r = 0 if fused_update else block_rows
    specs = [BufferSpec("weights", (d, c), f, "zeros"), BufferSpec("bias", (c,), f, "zeros")]
    if momentum:
        specs += [
            BufferSpec("momentum_weights", (d, c), f, "zeros"),
            BufferSpec("momentum_bias", (c,), f, "zeros"),
        ]
    specs += [
        BufferSpec("features_batch", (b, d), f),
        BufferSpec("logits_batch", (b, c), f),
        BufferSpec("row_stat", (b,), f),
        BufferSpec("label_logit", (b,), f),
        BufferSpec("ones_batch", (b,), f, "ones"),
        BufferSpec("ones_classes", (c,), f, "ones"),
        BufferSpec("grad_block", (r, c), f),
        BufferSpec("grad_bias", (c,), f),
        BufferSpec("ufunc_buffer", (min(UFUNC_BUFSIZE, b * c),), f, held_by="numpy"),
        BufferSpec("index_base", (b,), i),
        BufferSpec("index_batch", (b,), i),
        BufferSpec("labels_batch", (b,), i),
        BufferSpec("flat_index", (b,), i),
        BufferSpec("row_offsets", (b,), i),
        history_spec(epochs),
    ]
    return specs


def history_spec(epochs: int) -> BufferSpec:
    """The per-epoch history of a run: held-out loss and accuracy (float64), NaN until known."""
    return BufferSpec("history", (2, epochs), np.dtype(np.float64), "nan", held_by="run")


def buffer_bytes(
    feature_dim: int,
    num_classes: int,
    batch_size: int,
    block_rows: int,
    *,
    momentum: bool,
    dtype: np.dtype | type = np.float32,
    epochs: int = 0,
    fused_update: bool = False,
) -> dict[str, int]:
    """Name -> bytes of every non-empty buffer of :func:`loop_buffers` (the analytic accounting)."""
    specs = loop_buffers(
        feature_dim,
        num_classes,
        batch_size,
        block_rows,
        momentum=momentum,
        dtype=dtype,
        epochs=epochs,
        fused_update=fused_update,
    )
    return {s.name: s.nbytes for s in specs if s.nbytes}


@dataclass(frozen=True)
class MemoryPlan:
    """How the loop will run inside the budget."""

    batch_size: int
    """Samples per SGD step (at most the requested batch size)."""
    block_rows: int
    """Rows of the weight matrix updated per GEMM; ``feature_dim`` means unblocked."""
    budget_bytes: int
    """The budget the plan was made for (0: no limit)."""
    analytic_bytes: int
    """Sum of :attr:`buffers` (the floor the measured peak cannot go below)."""
    reserve_bytes: int
    """Allowance for interpreter objects on top of the buffers."""
    buffers: dict[str, int]
    """Buffer name -> bytes (:func:`buffer_bytes`)."""
    fused_update: bool = False
    """The weight update is one BLAS gemm into the weights (no gradient block, unblocked)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _total(d, c, b, r, momentum, dtype, epochs) -> int:
    bufs = buffer_bytes(d, c, b, r, momentum=momentum, dtype=dtype, epochs=epochs)
    return sum(bufs.values()) + RESERVE_BYTES


def plan_memory(
    feature_dim: int,
    num_classes: int,
    budget_bytes: int | None,
    *,
    max_batch_size: int = 32,
    momentum: bool = False,
    dtype: np.dtype | type = np.float32,
    epochs: int = 0,
    fused_update: bool = False,
) -> MemoryPlan:
    """Choose (batch size, block rows) that fit ``budget_bytes``, or raise :class:`BudgetError`.

    ``budget_bytes=None`` means no limit: the requested batch and unblocked updates.
    Otherwise the preference is: the largest batch size <= ``max_batch_size`` whose loop fits
    with weight-update blocks of at least ``min(feature_dim, MIN_BLOCK_ROWS)`` rows, then the
    largest such block (balanced so that blocks are of near-equal size). If nothing fits that
    way, batch 1 with the largest block >= 1 row. The error states the minimum budget (batch 1,
    1-row blocks). ``fused_update`` (the trainer's BLAS path, no momentum): no gradient block is
    held, so the plan is the largest batch size that fits, unblocked.
    """
    d, c = int(feature_dim), int(num_classes)
    if fused_update and momentum:
        raise ValueError("fused_update needs momentum=False (momentum keeps a gradient block)")
    if d < 1 or c < 2:
        raise ValueError(f"need feature_dim >= 1 and num_classes >= 2, got {d} and {c}")
    if max_batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {max_batch_size}")
    if fused_update:
        return _plan_fused(d, c, budget_bytes, max_batch_size, dtype, epochs)
    if budget_bytes is None:
        buffers = buffer_bytes(
            d, c, max_batch_size, d, momentum=momentum, dtype=dtype, epochs=epochs
        )
        return MemoryPlan(max_batch_size, d, 0, sum(buffers.values()), RESERVE_BYTES, buffers)
    row_bytes = c * np.dtype(dtype).itemsize
    min_rows = min(d, MIN_BLOCK_ROWS)
    for b in range(max_batch_size, 0, -1):
        free = budget_bytes - _total(d, c, b, 0, momentum, dtype, epochs)
        rows = min(d, free // row_bytes) if free > 0 else 0
        if rows >= min_rows or (b == 1 and rows >= 1):
            rows = math.ceil(d / math.ceil(d / rows))
            buffers = buffer_bytes(d, c, b, rows, momentum=momentum, dtype=dtype, epochs=epochs)
            return MemoryPlan(
                batch_size=b,
                block_rows=rows,
                budget_bytes=int(budget_bytes),
                analytic_bytes=sum(buffers.values()),
                reserve_bytes=RESERVE_BYTES,
                buffers=buffers,
            )
    minimum = _total(d, c, 1, 1, momentum, dtype, epochs)
    _raise_budget(d, c, budget_bytes, momentum, dtype, minimum, epochs)


def _plan_fused(d, c, budget_bytes, max_batch_size, dtype, epochs) -> MemoryPlan:
    """Plan for the fused update: no gradient block, so only the batch size is chosen."""
    for b in range(max_batch_size, 0, -1):
        if budget_bytes is None or _total(d, c, b, 0, False, dtype, epochs) <= budget_bytes:
            buffers = buffer_bytes(d, c, b, 0, momentum=False, dtype=dtype, epochs=epochs)
            return MemoryPlan(
                batch_size=b,
                block_rows=d,
                budget_bytes=int(budget_bytes or 0),
                analytic_bytes=sum(buffers.values()),
                reserve_bytes=RESERVE_BYTES,
                buffers=buffers,
                fused_update=True,
            )
    minimum = _total(d, c, 1, 0, False, dtype, epochs)
    _raise_budget(d, c, budget_bytes, False, dtype, minimum, epochs)


def _raise_budget(d, c, budget_bytes, momentum, dtype, minimum, epochs) -> None:
    """:class:`BudgetError` stating the minimum and only the remedies that would fit: a larger
    budget always; no momentum when the loop fits without its buffers; fewer epochs when the
    per-epoch history is what does not fit."""
    history = history_spec(epochs).nbytes
    per_epoch = history_spec(1).nbytes
    ways = [f"Raise the budget to at least {math.ceil(minimum / 1024)}KB"]
    if momentum:
        without = _total(d, c, 1, 1, False, dtype, epochs)
        if without <= budget_bytes:
            ways.append(f"train without momentum (momentum 0: minimum {format_size(without)})")
    fit_epochs = (budget_bytes - (minimum - history)) // per_epoch
    if 1 <= fit_epochs < epochs:
        ways.append(f"train at most {fit_epochs} epochs")
    raise BudgetError(
        f"memory budget {format_size(budget_bytes)} ({budget_bytes} B) cannot hold the head "
        f"training loop for {d} features x {c} classes ({np.dtype(dtype).name}, "
        f"momentum={'yes' if momentum else 'no'}, {epochs} epochs): the minimum is "
        f"{format_size(minimum)} ({minimum} B, batch 1; weights alone take "
        f"{format_size(d * c * np.dtype(dtype).itemsize)}, the per-epoch history "
        f"{format_size(history)}: {per_epoch} B an epoch). {', or '.join(ways)}.",
        minimum_bytes=minimum,
    )
