"""``entropi bench``: FLOPs and memory of head-only vs full fine-tuning, as JSON, Markdown and PNG.

One row per architecture x classes x mode:

- ``full``: full fine-tuning in PyTorch (SGD with momentum 0.9, float32, BN in train mode).
  FLOPs from :mod:`.flops`; memory measured by :func:`.memory.measure_step` (saved tensors,
  gradients, optimizer state, batch) next to :func:`.memory.analytic_step`.
- ``head``: head-only training on the device: the numpy runtime of ``entropi.device`` (mini-batch
  SGD with momentum 0.9 on features, unblocked, float32). Memory measured is its tracemalloc
  peak; the analytic count is its own buffer plan; the breakdown maps its buffers onto the same
  categories. The PyTorch head-only step is measured too (``memory_torch``) for comparison.

Dense FLOPs are at alpha = 1; sparse FLOPs at ``alpha``: global magnitude masks (the ENTROPI
pruning rule, eq. 7) computed on the randomly initialised encoder (seeded), which places the
non-zeros as a magnitude criterion on untrained weights does; a trained ladder's rung would
distribute them differently. ``entropi bench --run RUNDIR [--rung N]`` measures that rung instead:
its architecture, input shape, its own non-zeros (sparse FLOPs) and its target's classes.

A head-only step is the head alone when the features are computed once and cached (the device's
feature store); without a cache every step also runs the frozen encoder forward. Each row says
both: ``flops_dense`` / ``flops_sparse`` the step, ``flops_encoder_forward_*`` the frozen
encoder's forward (0 for full fine-tuning, whose step holds it) and ``flops_with_encoder_*`` the
sum, bench.md's "step + encoder fwd" columns.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from entropi.common.errors import EntropiError
from entropi.common.files import atomic_write, atomic_write_json, atomic_write_text
from entropi.common.provenance import hardware, library_versions
from entropi.host.analysis.flops import CONVENTIONS as FLOP_CONVENTIONS
from entropi.host.analysis.flops import count_step_flops
from entropi.host.analysis.memory import (
    analytic_step,
    conventions_lines,
    head_device_memory,
    measure_step,
)
from entropi.host.ladder.models import ARCHITECTURES, Classifier, build_model
from entropi.host.ladder.prune import apply_masks, dense_masks, global_magnitude_masks
from entropi.host.ladder.rungs import load_rung
from entropi.host.run.rundir import RunDir

from .bench_defaults import DEFAULTS

__all__ = [
    "MEMORY_CONVENTIONS",
    "BenchError",
    "collect_bench",
    "plot_bench",
    "render_markdown",
    "run_bench",
]

MEMORY_CONVENTIONS = (
    "Bytes per training step, float32 values, int64 labels. full: PyTorch, SGD momentum 0.9; "
    "measured = bytes of the real tensors of one step: parameters + BN buffers + p.grad + "
    "optimizer state + distinct storages saved for backward (saved_tensors_hooks, deduplicated "
    "by storage, excluding parameters/buffers/batch) + the batch; analytic = the same categories "
    "from shapes and per-op rules; transient kernel workspace is in neither (see cuda_peak on "
    "CUDA). head: numpy device runtime, SGD momentum 0.9, unblocked; measured = tracemalloc peak "
    "of the training loop; analytic = the sum of its planned buffers; the frozen encoder and the "
    "feature store (flash / memory-mapped) are not counted."
)
_SEED = 0


class BenchError(EntropiError, ValueError):
    """Bad arguments to ``entropi bench``."""


def _check_args(archs: Sequence[str], classes: Sequence[int], batch: int, alpha: float) -> None:
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown or not archs:
        raise BenchError(
            f"unknown architecture(s) {unknown or list(archs)}; known: {', '.join(ARCHITECTURES)}"
        )
    bad = [c for c in classes if not isinstance(c, int) or isinstance(c, bool) or c < 2]
    if bad or not classes:
        raise BenchError(f"classes must be integers >= 2, got {list(classes)}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 2:
        raise BenchError(f"batch must be an integer >= 2 (BN needs 2 samples), got {batch!r}")
    if not 0.0 < alpha <= 1.0:
        raise BenchError(f"alpha must be in (0, 1] (the kept fraction of weights), got {alpha!r}")


def _rows_for(arch: str, classes: int, batch: int, alpha: float, device: torch.device) -> list:
    """The head and full rows of ``arch`` (seeded random init), sparse at ``alpha`` by global
    magnitude masks."""
    torch.manual_seed(_SEED)
    model = build_model(arch, classes)
    sparse = copy.deepcopy(model)
    masks = global_magnitude_masks(sparse.encoder, dense_masks(sparse.encoder), alpha)
    apply_masks(sparse.encoder, masks)
    return _model_rows({"arch": arch, "classes": classes}, model, sparse, batch, device)


def _rung_rows(run, rung, classes: Sequence[int] | None, batch: int, device) -> tuple[list, dict]:
    """The head and full rows of rung ``rung`` of run folder ``run`` (its own weights: sparse
    FLOPs from its non-zeros) for each of ``classes`` (default: the run's target classes), and
    what the rows measure."""

    rundir = RunDir(run)
    encoder, info = load_rung(rundir, rung)
    if not classes:
        try:
            names = rundir.read_json(rundir.target_classes)
        except ValueError:
            names = None
        n = len(names) if isinstance(names, list) and len(names) >= 2 else info.num_source_classes
        classes = [n]
    _check_args([info.arch], list(classes), batch, 1.0)
    shape = tuple(info.input_shape)
    rows = []
    for c in classes:
        torch.manual_seed(_SEED)  # the new head's init
        model = Classifier(copy.deepcopy(encoder), encoder.feature_dim, c)
        label = {"arch": info.arch, "classes": c, "rung": info.index}
        rows += _model_rows(label, model, model, batch, device, shape)
    about = {"run": str(rundir.root), "rung": info.index, "arch": info.arch, "alpha": info.alpha}
    return rows, {**about, "input_shape": list(shape)}


def _model_rows(
    label: dict,
    model: Classifier,
    sparse: Classifier,
    batch: int,
    device: torch.device,
    input_shape: tuple[int, int, int] = (3, 32, 32),
) -> list:
    """The head and full rows of ``model`` (dense counts) and ``sparse`` (its non-zeros)."""
    classes = label["classes"]
    rows = []
    for mode in ("head", "full"):
        dense_f = count_step_flops(model, mode, batch, input_shape)
        sparse_f = count_step_flops(sparse, mode, batch, input_shape)
        step = {
            "flops_dense": dense_f.step(matmul=True),
            "flops_sparse": sparse_f.step(sparse=True, matmul=True),
            "flops_encoder_forward_dense": dense_f.frozen_forward(matmul=True),
            "flops_encoder_forward_sparse": sparse_f.frozen_forward(sparse=True, matmul=True),
        }
        row: dict = {
            **label,
            "batch": batch,
            "mode": mode,
            **step,
            "flops_with_encoder_dense": step["flops_dense"] + step["flops_encoder_forward_dense"],
            "flops_with_encoder_sparse": (
                step["flops_sparse"] + step["flops_encoder_forward_sparse"]
            ),
            "flops_backward_dense": dense_f.backward(matmul=True),
            "flops_backward_sparse": sparse_f.backward(sparse=True, matmul=True),
            "flops_breakdown": {
                "dense": dense_f.as_dict(),
                "sparse": {k: v for k, v in sparse_f.as_dict().items() if "sparse" in k},
            },
        }
        torch_meas = measure_step(model.to(device), mode, batch, input_shape=input_shape)
        torch_an = analytic_step(model, mode, batch, input_shape=input_shape)
        model.to("cpu")
        torch_mem = {
            "measured": torch_meas.breakdown.total,
            "analytic": torch_an.total,
            "breakdown": torch_meas.breakdown.as_dict(),
            "saved_tensors": torch_meas.saved_tensors,
            "cuda_peak": torch_meas.cuda_max_allocated,
        }
        if mode == "full":
            row |= {
                "memory_bytes": torch_mem["measured"],
                "memory_bytes_analytic": torch_mem["analytic"],
                "memory_breakdown": torch_mem["breakdown"],
                "memory_breakdown_analytic": torch_an.as_dict(),
                "memory_source": f"pytorch ({device.type}) saved tensors + grads + SGD momentum",
                "cuda_peak_bytes": torch_mem["cuda_peak"],
            }
        else:
            dev = head_device_memory(model.feature_dim, classes, batch)
            row |= {
                "memory_bytes": dev["measured"],
                "memory_bytes_analytic": dev["analytic"],
                "memory_breakdown": dev["breakdown"],
                "memory_source": "numpy device runtime (tracemalloc peak; SGD momentum)",
                "device_plan": {k: dev[k] for k in ("buffers", "batch_size", "block_rows")},
                "memory_torch": torch_mem,
            }
        rows.append(row)
    return rows


def _fmt_flops(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def _fmt_mb(n: int) -> str:
    return f"{n / 1e6:,.3f}"


def rows_markdown(rows: list[dict]) -> list[str]:
    """Markdown table lines of bench rows (MFLOPs per step, MB = 1e6 bytes)."""
    lines = [
        "| arch | classes | mode | step MFLOPs dense | step MFLOPs sparse | step + encoder fwd "
        "MFLOPs dense | step + encoder fwd MFLOPs sparse | backward MFLOPs dense | MB measured "
        "| MB analytic | weights | grads | optimizer | activations | batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["memory_breakdown"]
        with_enc = [r.get(f"flops_with_encoder_{k}", r[f"flops_{k}"]) for k in ("dense", "sparse")]
        lines.append(
            f"| {r['arch']} | {r['classes']} | {r['mode']} | {_fmt_flops(r['flops_dense'])} "
            f"| {_fmt_flops(r['flops_sparse'])} | {_fmt_flops(with_enc[0])} "
            f"| {_fmt_flops(with_enc[1])} | {_fmt_flops(r['flops_backward_dense'])} "
            f"| {_fmt_mb(r['memory_bytes'])} | {_fmt_mb(r['memory_bytes_analytic'])} "
            f"| {_fmt_mb(b['weights'])} | {_fmt_mb(b['gradients'])} "
            f"| {_fmt_mb(b['optimizer_state'])} | {_fmt_mb(b['activations'])} "
            f"| {_fmt_mb(b['batch'])} |"
        )
    lines += [
        "",
        "head: the step is the head alone, for features computed once and cached (the device's "
        "feature store); without a cache each step also runs the frozen encoder forward, which "
        '"step + encoder fwd" adds. full: the step holds the encoder forward already.',
    ]
    return lines


def render_markdown(result: dict) -> str:
    """The ``bench.md`` table: one line per row, then hardware, versions and conventions."""
    about = result.get("run")
    sparse = (
        f"sparse FLOPs: rung {about['rung']} of `{about['run']}` ({about['arch']}, alpha "
        f"{about['alpha']:.4g}, input {' x '.join(map(str, about['input_shape']))}: its own "
        "non-zeros)"
        if about
        else f"sparse FLOPs at alpha = {result['alpha']} (global magnitude masks on the seeded "
        "random init)"
    )
    lines = [
        "# entropi bench: head-only vs full fine-tuning, per training step",
        "",
        f"Batch {result['batch']}; {sparse}. MFLOPs = 1e6 FLOPs, MB = 1e6 bytes.",
        "",
        *rows_markdown(result["rows"]),
    ]
    hw, lib = result["hardware"], result["versions"]
    lines += [
        "",
        f"Hardware: {hw['cpu']}, {hw['cores']} cores"
        + (f", GPU {hw['gpu']}" if "gpu" in hw else "")
        + f"; {hw['platform']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in lib.items()) + ".",
        "",
        *conventions_lines(result),
    ]
    return "\n".join(lines)


def plot_bench(result: dict, path: Path) -> None:
    """Bar chart (log scale) of head-only vs full FLOPs and memory per (arch, classes)."""
    # lazy: matplotlib loads only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib loads only when a plot is drawn
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = sorted({(r["arch"], r["classes"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    for ax, key, unit, scale in (
        (axes[0], "flops_dense", "MFLOPs per step", 1e6),
        (axes[1], "memory_bytes", "memory per step (MB)", 1e6),
    ):
        for i, mode in enumerate(("head", "full")):
            vals = [
                next(r[key] for r in rows if (r["arch"], r["classes"]) == lab and r["mode"] == mode)
                / scale
                for lab in labels
            ]
            xs = [j + (i - 0.5) * width for j in range(len(labels))]
            bars = ax.bar(xs, vals, width, label=f"{mode}-only" if mode == "head" else "full FT")
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), [f"{a}\n{c} cl." for a, c in labels], fontsize=8)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    fig.suptitle(f"Head-only vs full fine-tuning, batch {result['batch']} (log scale)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def collect_bench(
    *,
    archs: Sequence[str] = ("resnet18", "mobilenetv3_small"),
    classes: Sequence[int] | None = (5, 100),
    batch: int = 32,
    alpha: float = 0.01,
    device: str | None = None,
    run: str | os.PathLike | None = None,
    rung: str | int = "selected",
) -> dict:
    """The ``bench.json`` content (rows and provenance) without writing anything; with ``run``,
    the rows of that run folder's rung ``rung`` (``classes`` None: its target's classes), not
    of ``archs`` at ``alpha``."""
    if classes is None and run is None:
        raise BenchError("classes=None (the run's target classes) needs a run")
    classes = list(classes or [])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    about = None
    if run is not None:
        rows, about = _rung_rows(run, rung, classes, batch, dev)
        archs, alpha = [about["arch"]], about["alpha"]
        classes = sorted({r["classes"] for r in rows})
    else:
        archs = list(archs)
        _check_args(archs, classes, batch, alpha)
        rows = [row for a in archs for c in classes for row in _rows_for(a, c, batch, alpha, dev)]
    return {
        "rows": rows,
        "batch": batch,
        "alpha": alpha,
        "archs": archs,
        "classes": classes,
        **({"run": about} if about else {}),
        "seed": _SEED,
        "hardware": hardware(),
        "versions": library_versions(),
        "conventions": {"flops": FLOP_CONVENTIONS, "memory": MEMORY_CONVENTIONS},
        "command": sys.argv,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def run_bench(
    *,
    archs: Sequence[str] = DEFAULTS["archs"],
    classes: Sequence[int] | None = DEFAULTS["classes"],
    batch: int = DEFAULTS["batch"],
    alpha: float = DEFAULTS["alpha"],
    out_dir: str | os.PathLike,
    device: str | None = None,
    run: str | os.PathLike | None = None,
    rung: str | int = "selected",
) -> dict:
    """Benchmark FLOPs and memory of head-only vs full fine-tuning; write bench.{json,md,png}.

    ``alpha`` is the kept fraction for the effective-sparse FLOPs (dense counts are alpha = 1).
    ``device``: where the full fine-tuning step is measured (default: CUDA when available, else
    CPU); on CUDA the rows also carry ``cuda_peak_bytes``. ``run`` / ``rung``: benchmark that
    rung of a run folder instead (its architecture, weights and input shape; ``classes`` None:
    its target's classes). Returns the ``bench.json`` content.
    """
    result = collect_bench(
        archs=archs, classes=classes, batch=batch, alpha=alpha, device=device, run=run, rung=rung
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench.json", result)
    atomic_write_text(out / "bench.md", render_markdown(result))
    plot_bench(result, out / "bench.png")
    return result
