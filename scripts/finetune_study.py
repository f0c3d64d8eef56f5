"""What head-only training gives up, at CPU scale: head vs Layer FT vs SCL FT vs full fine-tuning
on the quickstart ladder (dense and selected rungs) and its CIFAR-100 target, head and full on a
PACS domain, NC1 before / after, and the layer-by-layer CKA (issue 14; paper 001 Sec. 4, paper
003).

Writes ``finetune_cpu.json``, ``finetune_cpu.md`` and ``finetune_cka.png`` into ``--results``
(default benchmarks/results); the fine-tuned models and per-experiment files go to ``--work``
(default runs/finetune-study, git-ignored).

    nice -n 10 .venv/bin/python scripts/finetune_study.py runs/quickstart
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from entropi.common.files import atomic_write, atomic_write_json, atomic_write_text
from entropi.host.analysis.commands import mode_table, run_cka, run_finetune
from entropi.host.analysis.finetune import FinetuneConfig
from entropi.host.ladder.rungs import resolve_rung

PAPER_TABLE3 = {  # paper 001 Table 3: ResNet18 ImageNet -> CIFAR-10, test accuracy %
    "head": 81.64,
    "layer": 92.12,
    "scl": 93.11,
    "full": 92.11,
}
KIND_LABEL = {
    "head": "linear probe (head)",
    "layer": "Layer FT",
    "scl": "SCL FT",
    "full": "full FT",
}


def _kind(mode: str) -> str:
    return mode.split(":")[0]


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder (runs/quickstart)")
    ap.add_argument("--block", default="8-11", help="block of layer/scl FT (smallnet stage 3)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    ap.add_argument("--encoder-lr", type=float, default=FinetuneConfig.encoder_lr)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument(
        "--pacs",
        default="pacs:sketch",
        help="PACS target spec for head vs full ('' to skip)",
    )
    ap.add_argument(
        "--pacs-set",
        action="append",
        default=None,
        help="config overrides for the PACS target (default: 100 train per class, all test)",
    )
    ap.add_argument("--cka-images", type=int, default=1000)
    ap.add_argument("--cka-batch", type=int, default=250)
    ap.add_argument("--work", type=Path, default=Path("runs/finetune-study"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--reuse", action="store_true", help="reuse finished experiments found in --work"
    )
    return ap.parse_args(argv)


def _cka_figure(cka: dict[str, dict], path: Path) -> None:
    """Linear CKA of each layer with the same layer of the other model, one line per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kernel in zip(axes, ("linear", "rbf"), strict=True):
        for label, res in cka.items():
            diag = res["diagonal"][kernel]
            ax.plot(list(diag), list(diag.values()), marker="o", label=label)
        ax.set_title(f"{kernel} CKA, same layer of both models", fontsize=9)
        ax.set_xlabel("smallnet block (encoder children) -> features")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CKA (minibatch, debiased)")
    axes[0].set_ylim(0, 1.05)
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle("Which layers change: pre-trained vs fine-tuned, dense vs pruned", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def _markdown(study: dict) -> str:
    lines = [
        "# Head-only vs Layer FT vs SCL FT vs full fine-tuning (CPU scale)",
        "",
        f"Command: `{study['command']}` ({study['seconds']:.0f} s on {study['hardware']['cpu']}, "
        f"{study['hardware']['cores']} cores shared, {study['threads']} torch threads).",
        "",
        f"Settings: `{json.dumps(study['settings'])}`",
        "",
    ]
    for name, exp in study["experiments"].items():
        src = exp["source"]
        lines += [
            f"## {name}: rung {src['rung']} (alpha {src['alpha']:.4g}) -> {exp['target']}, "
            f"{exp['n_train']} train / {exp['n_test']} test",
            "",
            *mode_table(exp),
            "",
        ]
    lines += [
        "## Paper 001 Table 3 analog (test accuracy %)",
        "",
        "| mode | paper 001 (ResNet18 ImageNet -> CIFAR-10) | "
        + " | ".join(study["experiments"])
        + " |",
        "|---|---|" + "---|" * len(study["experiments"]),
    ]
    for kind, paper in PAPER_TABLE3.items():
        row = [KIND_LABEL[kind], f"{paper:.2f}"]
        for exp in study["experiments"].values():
            vals = [e for m, e in exp["modes"].items() if _kind(m) == kind]
            row.append(
                f"{100 * vals[0]['test_accuracy']:.2f} +- {100 * vals[0]['test_accuracy_std']:.2f}"
                if vals
                else "-"
            )
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "## CKA per layer (linear / RBF, minibatch debiased; same layer of A and B)",
        "",
        "| A vs B | " + " | ".join(next(iter(study["cka"].values()))["layers_a"]) + " |",
        "|---|" + "---|" * len(next(iter(study["cka"].values()))["layers_a"]),
    ]
    for label, res in study["cka"].items():
        lin, rbf = res["diagonal"]["linear"], res["diagonal"]["rbf"]
        cells = [f"{lin[k]:.3f} / {rbf[k]:.3f}" for k in lin]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Figure: `finetune_cka.png`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    a = _parse(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    seeds = [int(s) for s in a.seeds.split(",")]
    cfg = FinetuneConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, encoder_lr=a.encoder_lr)
    selected = resolve_rung(a.run, "selected")
    modes = ["head", f"layer:{a.block}", f"scl:{a.block}", "full"]
    plan = [("cifar100 rung 0 (dense)", 0, None, modes, [])]
    if selected != 0:
        plan.append((f"cifar100 rung {selected} (selected)", selected, None, modes, []))
    pacs_sets = (
        a.pacs_set
        if a.pacs_set is not None
        else [
            "data.target_train_per_class=100",
            "data.target_test_per_class=0",
        ]
    )
    if a.pacs:
        plan.append((f"{a.pacs} rung 0 (dense)", 0, a.pacs, ["head", "full"], pacs_sets))
    experiments, dirs = {}, {}
    for name, rung, target, exp_modes, sets in plan:
        out = a.work / name.replace(" ", "_").replace(":", "-").replace("(", "").replace(")", "")
        print(f"== {name}", flush=True)
        if a.reuse and (out / "finetune.json").is_file():
            experiments[name] = json.loads((out / "finetune.json").read_text())
            dirs[name] = (out, rung, target, sets)
            continue
        experiments[name] = run_finetune(
            a.run,
            modes=exp_modes,
            out_dir=out,
            rung=rung,
            target=target,
            overrides=sets,
            seeds=seeds,
            cfg=cfg,
            device="cpu",
        )
        dirs[name] = (out, rung, target, sets)
    # CKA: pre-trained vs fine-tuned (full, Layer FT), dense vs pruned, and cross-domain
    dense = plan[0][0]
    out0 = dirs[dense][0]
    pairs = [
        (
            f"rung 0 vs full FT ({plan[0][0].split()[0]})",
            f"{a.run}:0",
            out0 / "models/full-s0",
            None,
            [],
        ),
        (
            f"rung 0 vs Layer FT {a.block}",
            f"{a.run}:0",
            out0 / f"models/layer-{a.block}-s0",
            None,
            [],
        ),
        (f"rung 0 vs SCL FT {a.block}", f"{a.run}:0", out0 / f"models/scl-{a.block}-s0", None, []),
    ]
    if selected != 0:
        pairs.append(
            (
                f"rung 0 vs rung {selected} (dense vs pruned)",
                f"{a.run}:0",
                f"{a.run}:{selected}",
                None,
                [],
            )
        )
    if a.pacs:
        pout, _, ptarget, psets = dirs[plan[-1][0]]
        pairs.append(
            (
                f"rung 0 vs full FT ({ptarget})",
                f"{a.run}:0",
                pout / "models/full-s0",
                ptarget,
                psets,
            )
        )
    cka = {}
    for label, ma, mb, target, sets in pairs:
        print(f"== CKA {label}", flush=True)
        slug = label.replace(" ", "_").replace(":", "-").replace("(", "").replace(")", "")
        cka_out = Path(str(a.work).replace("finetune", "cka")) / slug
        if a.reuse and (cka_out / "cka.json").is_file():
            cka[label] = json.loads((cka_out / "cka.json").read_text())
            continue
        cka[label] = run_cka(
            str(ma),
            str(mb),
            out_dir=cka_out,
            target=target,
            overrides=sets,
            images=a.cka_images,
            batch_size=a.cka_batch,
            device="cpu",
        )
    first = next(iter(experiments.values()))
    study = {
        "command": "python scripts/finetune_study.py "
        + " ".join(map(shlex.quote, argv or sys.argv[1:])),
        "run": str(a.run),
        "settings": {
            "finetune": first["config"],
            "seeds": seeds,
            "block": a.block,
            "pacs_overrides": pacs_sets if a.pacs else None,
            "cka_images": a.cka_images,
            "cka_batch": a.cka_batch,
        },
        "paper_001_table3": PAPER_TABLE3,
        "threads": a.threads,
        "hardware": first["hardware"],
        "versions": first["versions"],
        "experiments": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("command", "hardware", "versions")}
            for k, v in experiments.items()
        },
        "cka": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("command", "hardware", "versions")}
            for k, v in cka.items()
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    a.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.results / "finetune_cpu.json", study)
    atomic_write_text(a.results / "finetune_cpu.md", _markdown(study))
    _cka_figure(cka, a.results / "finetune_cka.png")
    print(_markdown(study))
    return study


if __name__ == "__main__":
    main()
    sys.exit(0)
