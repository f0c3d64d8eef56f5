"""The paper's Table 2 (cost of one backward pass, head-only vs full fine-tuning), reproduced.

``python scripts/table2.py [--out benchmarks/results]`` runs
:func:`entropi.benchmarks.bench.collect_bench` for ResNet18 and MobileNetV3 (ours:
``mobilenetv3_small``) at 5 and 100 classes, batch 32, and writes ``table2.json``, ``table2.md``
and ``table2.png``: our measured and analytic numbers, the paper's numbers next to them, and
*readings* of the paper's numbers: candidate formulas, each computed here from real models
(including the ImageNet-style networks of :mod:`entropi.benchmarks.paper_models`), with the
relative error to the paper's value. A reading "fits" when it rounds to the paper's printed
digits.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from entropi.benchmarks.bench import collect_bench, conventions_lines, rows_markdown
from entropi.benchmarks.paper_models import build_paper_model
from entropi.common.files import atomic_write, atomic_write_json, atomic_write_text
from entropi.host.analysis.flops import count_step_flops
from entropi.host.analysis.memory import analytic_step
from entropi.host.analysis.trace import trace_forward
from entropi.host.ladder.models import build_model
from entropi.host.ladder.prune import apply_masks, dense_masks, global_magnitude_masks

__all__ = ["PAPER", "paper_readings", "render_table2", "run_table2"]

#: Table 2 of the paper (VLCS, 5 classes): MFLOPs and MB of one backward pass.
PAPER = {
    ("resnet18", "head"): (0.16, 0.03),
    ("resnet18", "full"): (30.03, 131.49),
    ("mobilenetv3", "head"): (0.41, 0.08),
    ("mobilenetv3", "full"): (229.05, 48.23),
}
OURS = {"resnet18": "resnet18", "mobilenetv3": "mobilenetv3_small"}
#: The batch size the readings assume for the paper (0.16 MFLOPs = 2 x 32 x 512 x 5).
PAPER_BATCH = 32
_MIB = 2**20


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_counts(model: torch.nn.Module, resolution: int) -> tuple[int, int]:
    """(conv/linear MACs, elements produced by every other op) of one image's forward pass."""
    model.eval()
    x = torch.zeros(1, 3, resolution, resolution)
    with torch.no_grad(), trace_forward(model) as tr:
        model(x)
    report = count_step_flops(model, "head", 1, input_shape=(3, resolution, resolution))
    macs = (report.frozen_forward(matmul=True) + report.forward(matmul=True)) // 2
    elems = sum(r.output.numel for r in tr.records if r.op not in ("conv2d", "linear") and r.output)
    return macs, elems


def _reading(target: str, paper: float, reading: str, value: float) -> dict:
    digits = 2
    return {
        "target": target,
        "paper": paper,
        "reading": reading,
        "value": value,
        "rel_error": (value - paper) / paper,
        "fits": round(value, digits) == paper,
    }


def paper_readings(batch: int = 32, classes: int = 5) -> list[dict]:
    """Candidate formulas for each Table 2 entry, computed from real models (see module doc)."""
    b, c = batch, classes
    out: list[dict] = []
    # head-only FLOPs: one GEMM of the head (its weight gradient) is 2 * B * F * C
    for arch, feats in (("resnet18", [512]), ("mobilenetv3", [1024, 1280])):
        paper = PAPER[(arch, "head")][0]
        for f in feats:
            out.append(
                _reading(
                    f"{arch} head MFLOPs",
                    paper,
                    f"2 x B x {f} x C: one head GEMM (weight gradient), {f} features",
                    2 * b * f * c / 1e6,
                )
            )
        f = feats[0]
        out.append(
            _reading(
                f"{arch} head MFLOPs",
                paper,
                f"4 x B x {f} x C: head forward + weight gradient",
                4 * b * f * c / 1e6,
            )
        )
    # head-only memory: copies of the head's parameters, float32
    for arch, f in (("resnet18", 512), ("mobilenetv3", 1024), ("mobilenetv3", 1280)):
        paper = PAPER[(arch, "head")][1]
        head = (f * c + c) * 4
        for copies, what in (
            (2, "weights + grads"),
            (3, "weights + grads + momentum"),
            (4, "+ Adam (m, v)"),
        ):
            out.append(
                _reading(
                    f"{arch} head MB",
                    paper,
                    f"{copies} x ({f} x C + C) x 4 B ({what}), MB = 1e6 B",
                    copies * head / 1e6,
                )
            )
        out.append(
            _reading(
                f"{arch} head MB",
                paper,
                f"3 copies of the {f}-feature head + one batch of features (B x {f} x 4 B)",
                (3 * head + b * f * 4) / 1e6,
            )
        )
    # full fine-tuning memory: 3 float32 copies of every parameter (weights, grads, momentum)
    models = {
        "resnet18": [
            ("CIFAR ResNet18 (ours)", build_model("resnet18", c)),
            ("ImageNet ResNet18", build_paper_model("resnet18_imagenet", c)),
        ],
        "mobilenetv3": [
            ("MobileNetV3-small (ours, 32x32)", build_model("mobilenetv3_small", c)),
            ("MobileNetV3-large", build_paper_model("mobilenetv3_large", c)),
        ],
    }
    for arch, cands in models.items():
        paper = PAPER[(arch, "full")][1]
        for name, model in cands:
            p = _params(model)
            out.append(
                _reading(
                    f"{arch} full MB", paper, f"3 x {p:,} params x 4 B, {name}, MB", 12 * p / 1e6
                )
            )
            out.append(
                _reading(
                    f"{arch} full MB", paper, f"3 x {p:,} params x 4 B, {name}, MiB", 12 * p / _MIB
                )
            )
    # ... plus the activations autograd saves for a batch of B 32x32 images (measured rules)
    for arch, cands in models.items():
        paper = PAPER[(arch, "full")][1]
        name, model = cands[1]
        p = _params(model)
        act = analytic_step(model, "full", b).activations
        out.append(
            _reading(
                f"{arch} full MB",
                paper,
                f"3 x params x 4 B + activations saved for {b} 32x32 images ({act / 1e6:.1f} MB), "
                f"{name}, MB",
                (12 * p + act) / 1e6,
            )
        )
    # full fine-tuning FLOPs: forward MACs of one image at a few input sizes
    for arch, cands in models.items():
        paper = PAPER[(arch, "full")][0]
        for name, model in cands:
            sizes = [32] if "ours" in name else [32, 224]
            for res in sizes:
                macs, elems = forward_counts(model, res)
                out.append(
                    _reading(
                        f"{arch} full MFLOPs",
                        paper,
                        f"{name}: forward MACs of one {res}x{res} image (conv/linear)",
                        macs / 1e6,
                    )
                )
                out.append(
                    _reading(
                        f"{arch} full MFLOPs",
                        paper,
                        f"{name}: forward MACs of one {res}x{res} image + 1 op per element of "
                        "BN/activation/pool/add",
                        (macs + elems) / 1e6,
                    )
                )
    # ... or of the pruned rung the paper selected on VLCS (masks from the seeded random init)
    for arch, ours, alpha in (
        ("resnet18", "resnet18", 0.0186),
        ("mobilenetv3", "mobilenetv3_small", 0.0158),
    ):
        torch.manual_seed(0)
        model = build_model(ours, c)
        masks = global_magnitude_masks(model.encoder, dense_masks(model.encoder), alpha)
        apply_masks(model.encoder, masks)
        report = count_step_flops(model, "full", 1)
        out.append(
            _reading(
                f"{arch} full MFLOPs",
                PAPER[(arch, "full")][0],
                f"{ours} (ours) pruned to alpha = {alpha} (the paper's VLCS rung; random-init "
                "masks): effective-sparse forward MACs of one 32x32 image",
                report.forward(sparse=True, matmul=True) / 2 / 1e6,
            )
        )
    return out


def _row(result: dict, arch: str, classes: int, mode: str) -> dict:
    return next(
        r
        for r in result["rows"]
        if r["arch"] == arch and r["classes"] == classes and r["mode"] == mode
    )


def _best(readings: list[dict], target: str) -> dict:
    return min((r for r in readings if r["target"] == target), key=lambda r: abs(r["rel_error"]))


def render_table2(result: dict) -> str:
    """Markdown: ours vs the paper, our full table, the readings, and what explains each gap."""
    b = result["batch"]
    lines = [
        "# Table 2 analog: cost of one training step, head-only vs full fine-tuning",
        "",
        f"Batch {b}, float32, 32x32 inputs, SGD with momentum. MFLOPs = 1e6 FLOPs "
        "(FLOPs = 2 x MACs), MB = 1e6 bytes. Ours: CIFAR ResNet18 and MobileNetV3-small adapted "
        "to 32x32 (host/ladder/models.py). Head-only memory is the numpy device runtime's measured "
        "tracemalloc peak; full fine-tuning memory is measured in PyTorch (saved tensors + "
        "weights + grads + momentum + batch).",
        "",
        "## Side by side with the paper (5 classes)",
        "",
        "| model | mode | paper MFLOPs | ours: backward MFLOPs | ours: step MFLOPs "
        "(fwd + bwd) | paper MB | ours: MB measured | ours: MB analytic |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (arch, mode), (pf, pm) in PAPER.items():
        r = _row(result, OURS[arch], 5, mode)
        lines.append(
            f"| {arch} (ours: {OURS[arch]}) | {mode} | {pf} "
            f"| {r['flops_backward_dense'] / 1e6:,.2f} "
            f"| {r['flops_dense'] / 1e6:,.2f} | {pm} | {r['memory_bytes'] / 1e6:,.3f} "
            f"| {r['memory_bytes_analytic'] / 1e6:,.3f} |"
        )
    lines += [
        "",
        "## All rows",
        "",
        f"Sparse: alpha = {result['alpha']} (global magnitude masks on the seeded random init).",
        "",
        *rows_markdown(result["rows"]),
    ]
    lines += [
        "",
        "## Readings of the paper's numbers",
        "",
        "Each candidate formula is computed from real models; 'fits' = rounds to the paper's "
        "printed digits.",
        "",
        "| entry | paper | reading | value | rel. error | fits |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["readings"]:
        lines.append(
            f"| {r['target']} | {r['paper']} | {r['reading']} | {r['value']:,.4g} "
            f"| {r['rel_error']:+.1%} | {'yes' if r['fits'] else 'no'} |"
        )
    lines += ["", "## What explains each difference", "", *_explanations(result), ""]
    hw, lib = result["hardware"], result["versions"]
    lines += [
        f"Hardware: {hw['cpu']}, {hw['cores']} cores. Versions: "
        + ", ".join(f"{k} {v}" for k, v in lib.items())
        + ". Regenerate: `python scripts/table2.py --out benchmarks/results`.",
        "",
        *conventions_lines(result),
    ]
    return "\n".join(lines)


def _explanations(result: dict) -> list[str]:
    rd = result["readings"]
    r18h, r18f = _row(result, "resnet18", 5, "head"), _row(result, "resnet18", 5, "full")
    mbh, mbf = (
        _row(result, "mobilenetv3_small", 5, "head"),
        _row(result, "mobilenetv3_small", 5, "full"),
    )
    mem_r18, mem_mb = _best(rd, "resnet18 full MB"), _best(rd, "mobilenetv3 full MB")
    fl_r18, fl_mb = _best(rd, "resnet18 full MFLOPs"), _best(rd, "mobilenetv3 full MFLOPs")
    act = r18f["memory_breakdown"]["activations"] / 1e6
    return [
        f"- **Head-only FLOPs.** The paper's 0.16 MFLOPs (ResNet18) is exactly one GEMM of the "
        f"head, 2 x 32 x 512 x 5 = 163,840 FLOPs: the weight gradient, which is our backward "
        f"count ({r18h['flops_backward_dense'] / 1e6:.3f}); a training step also runs the head "
        f"forward, so our step is twice that ({r18h['flops_dense'] / 1e6:.3f}). The paper's 0.41 "
        "MFLOPs for MobileNet-v3 is 2 x 32 x 1280 x 5 = 409,600: the 1280 features of "
        "MobileNetV3-*large*. Our MobileNetV3-small has 1024 features, hence "
        f"{mbh['flops_backward_dense'] / 1e6:.3f}.",
        "- **Head-only memory.** 0.03 MB and 0.08 MB are three float32 copies of the head "
        "(weights + gradients + one optimizer buffer: 3 x 2,565 x 4 B = 0.031 MB for 512 "
        "features, 3 x 6,405 x 4 B = 0.077 MB for 1280), the only reading that fits both models "
        "with the 1280 features the FLOPs imply: two copies (0.02 / 0.05) or Adam's four "
        "(0.04 / 0.10) do not round to the printed values (four copies of a 1024-feature head, "
        "0.082, would fit MobileNet alone but not ResNet18), and neither does anything that "
        f"includes a batch of features (32 x 512 x 4 B = 0.066 MB alone). Our device runtime "
        f"measures {r18h['memory_bytes'] / 1e6:.3f} MB (analytic "
        f"{r18h['memory_bytes_analytic'] / 1e6:.3f}) for ResNet18 and "
        f"{mbh['memory_bytes'] / 1e6:.3f} MB for MobileNetV3-small because it also holds the "
        "batch of features, the logits and index arrays, and the measured peak includes "
        "interpreter objects (the device runtime's fixed reserve); the paper counted parameters "
        "only.",
        f"- **Full fine-tuning memory.** No activations: saving activations for a batch of 32 "
        f"CIFAR images costs {act:.1f} MB in our ResNet18 alone, and even ImageNet-style "
        f"networks at 32x32 land {_act_gap(rd)} off the paper's values once their activations "
        "are added. The closest reading is again "
        f"parameter copies: {mem_r18['reading']} = {mem_r18['value']:.2f} "
        f"({mem_r18['rel_error']:+.1%} from 131.49) and {mem_mb['reading']} = "
        f"{mem_mb['value']:.2f} ({mem_mb['rel_error']:+.1%} from 48.23); the MobileNet number "
        "fits MobileNetV3-large (4.2 M parameters with a 5-class head) in MiB, consistent with "
        "its 1280-feature head above, while ResNet18's is 2-3% off in either unit, so the paper's "
        "ResNet18 probably differs slightly from the standard one. Ours measures "
        f"{r18f['memory_bytes'] / 1e6:.1f} MB (ResNet18) and {mbf['memory_bytes'] / 1e6:.1f} MB "
        "(MobileNetV3-small, whose 32x32 adaptation keeps large feature maps, so activations "
        "dominate).",
        f"- **Full fine-tuning FLOPs.** These are far below any per-batch count: our ResNet18 "
        f"backward pass for 32 images is {r18f['flops_backward_dense'] / 1e9:,.1f} GFLOPs. "
        f"MobileNet's 229.05 is within a few percent of a per-image forward count of "
        "MobileNetV3-large at 224x224: "
        f"{fl_mb['reading']} = {fl_mb['value']:.2f} ({fl_mb['rel_error']:+.1%}), i.e. a "
        "thop/ptflops-style MAC count of one ImageNet-size forward pass, not a backward pass of "
        f"32 images. ResNet18's 30.03 fits no dense reading; the closest is {fl_r18['reading']} "
        f"= {fl_r18['value']:.2f} ({fl_r18['rel_error']:+.1%}). A ResNet18 at 224x224 would be "
        "1.8 GMACs, so the two entries were not counted at the same input size; a pruned "
        "(effective-sparse) count of the selected rung would also land in this range, but "
        "depends on the trained weights. Our counts follow the conventions below and are "
        "checked against torch's FlopCounterMode.",
    ]


def _act_gap(readings: list[dict]) -> str:
    """'13% (resnet18) and 68% (mobilenetv3)': how far params + activations overshoot."""
    with_act = [r for r in readings if "activations saved" in r["reading"]]
    return " and ".join(f"{r['rel_error']:+.0%} ({r['target'].split()[0]})" for r in with_act)


def plot_table2(result: dict, path: Path) -> None:
    """Paper vs ours at 5 classes (log scale): backward MFLOPs and memory MB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(PAPER)
    labels = [f"{a}\n{m}" for a, m in keys]
    ours = [_row(result, OURS[a], 5, m) for a, m in keys]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    panels = (
        (axes[0], 0, "flops_backward_dense", "MFLOPs (backward pass)"),
        (axes[1], 1, "memory_bytes", "memory (MB)"),
    )
    for ax, idx, key, unit in panels:
        paper = [PAPER[k][idx] for k in keys]
        mine = [r[key] / 1e6 for r in ours]
        for i, (vals, name) in enumerate(
            ((paper, "paper"), (mine, f"entropi, batch {result['batch']}"))
        ):
            xs = [j + (i - 0.5) * width for j in range(len(keys))]
            bars = ax.bar(xs, vals, width, label=name)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(range(len(keys)), labels, fontsize=8)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    fig.suptitle("Table 2: head-only vs full fine-tuning, 5 classes (log scale)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def run_table2(
    out_dir: str | Path = "benchmarks/results",
    *,
    classes: Sequence[int] = (5, 100),
    batch: int = 32,
    alpha: float = 0.01,
) -> dict:
    """Measure, compare with the paper, and write ``table2.{json,md,png}`` into ``out_dir``."""
    result = collect_bench(
        archs=("resnet18", "mobilenetv3_small"), classes=classes, batch=batch, alpha=alpha
    )
    result["paper"] = [
        {"arch": a, "mode": m, "mflops": f, "mb": mb} for (a, m), (f, mb) in PAPER.items()
    ]
    result["readings"] = paper_readings(PAPER_BATCH, 5)
    result["paper_batch"] = PAPER_BATCH
    out = Path(out_dir)
    atomic_write_json(out / "table2.json", _finite(result))
    atomic_write_text(out / "table2.md", render_table2(result))
    plot_table2(result, out / "table2.png")
    return result


def _finite(obj):
    """JSON-safe copy (no NaN/inf)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.01, help="kept fraction (sparse FLOPs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = run_table2(args.out, batch=args.batch, alpha=args.alpha)
    print(render_table2(result).split("## All rows")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
