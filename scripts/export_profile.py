"""Export profile: seconds and peak RSS of exporting one rung (ONNX + TFLite, float32 + int8),
per encoder form and for every form at once, before and after a change, back to back.

    .venv/bin/python scripts/export_profile.py --run runs/quickstart --rung 3 --also-rung 7 \\
        --before /work/export_before [--after DIR] [--repeats 2] [--out benchmarks/results]

writes ``export_profile.json`` and ``export_profile.md`` into ``--out``.

Cases: each encoder form alone (``sparse``, ``compact``, ``compact-dense``) and ``all`` (every
form in one export, what `entropi export --form compact --form compact-dense` writes), each with
both formats and ``quantize="int8"``: the host's ``export_rung`` (what `entropi export` calls:
the run's calibration and verification images, verification in onnxruntime, LiteRT and TFLite
Micro included).

How: every case is a fresh child process (``--child``), so the peak RSS is that export's and
nothing that an earlier case loaded is already warm. The child reports the seconds of its imports
and of ``export_rung``, and its peak RSS: ``VmHWM`` from /proc (the high-water mark since exec;
the parent's ``ru_maxrss`` of a child is not usable, Linux carries it across fork + exec). The
parent times the child's whole life (``wall_s``: what a user waits, interpreter start included).

Before / after: ``--before DIR`` (a checkout of the commit before the change, e.g. a git worktree)
runs every case in that tree too, ``--after DIR`` (default: this checkout) the other, with the same
interpreter and libraries: each tree's layers are put first on the import path through a folder
of links ``entropi/<layer> -> DIR/<layer>`` (the child checks that it imported them). The two
trees run each case back to back, the first one alternating between repeats, and the load average
is recorded around every child. ``identical`` compares the sha256 of every file both trees wrote
for a case (export.json included: its verification numbers are then the same too); when a file
differs, ``differences`` names it and, for export.json, the numbers that differ.

Where the time goes: the child wraps every step of every registered export format (whichever
the tree's ``ExportFormat`` has: ``write`` or ``convert`` / ``store``, ``quantize``, ``run``, ...)
with a timer, so ``phases`` holds the seconds and calls of each, in both trees.

``--also-rung N`` adds the ``all`` case of another rung (one whose compaction removes channels
has two graphs to convert). ``--synthetic`` exports a synthetic pruned smallnet (random
calibration and verification images) instead of a run's rung: the smoke test's mode.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from entropi.common.files import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FORMS = ("sparse", "compact", "compact-dense")
CASES = (*FORMS, "all")
LAYERS = ("common", "device", "export", "host", "benchmarks")
LIBRARIES = (
    "torch",
    "litert-torch",
    "ai-edge-litert",
    "torchao",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "tflite-micro",
    "numpy",
)


# --- the child: one export -------------------------------------------------------------------


def _vm(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _export_rung():
    """The host's ``export_rung``, from whichever layout the imported tree has (it moved from
    host/bundle.py to host/deployment/rung_export.py); chosen by file, as a failed import of
    the other layout would leave half-imported modules behind."""
    import entropi.host

    if (Path(entropi.host.__path__[0]) / "deployment" / "rung_export.py").is_file():
        from entropi.host.deployment.rung_export import export_rung
    else:
        from entropi.host.bundle import export_rung
    return export_rung


def _synthetic_export(forms: list[str], out: Path) -> dict:
    import numpy as np

    from entropi.benchmarks.synthetic_models import fake_rung_meta, synthetic_encoder
    from entropi.export import export_encoder

    encoder = synthetic_encoder("smallnet", alpha=0.05, kill=0.3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    return export_encoder(
        encoder,
        fake_rung_meta(encoder, "smallnet"),
        out,
        forms=forms,
        verify_images=images[:8],
        quantize="int8",
        calibration_images=images,
        min_cosine=-1.0,  # random weights and images: the timing is what is measured
    )


def _time_formats(phases: dict) -> None:
    """Wrap every callable of every registered format (``write`` or ``convert`` / ``store``,
    ``run``, ``quantize``, ...: whichever the tree's ExportFormat has) so that ``phases``
    collects ``"<format>.<step>" -> {"s", "calls"}``."""
    import dataclasses

    from entropi.export.formats import FORMATS

    def timed(key, fn):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                entry = phases.setdefault(key, {"s": 0.0, "calls": 0})
                entry["s"] += time.perf_counter() - t
                entry["calls"] += 1

        return call

    for name, fmt in list(FORMATS.items()):
        steps = {
            f.name: timed(f"{name}.{f.name}", getattr(fmt, f.name))
            for f in dataclasses.fields(fmt)
            if callable(getattr(fmt, f.name))
        }
        FORMATS[name] = dataclasses.replace(fmt, **steps)


def child(run: str | None, rung: int, forms: list[str], out: Path) -> None:
    """Import, export, print one JSON line: seconds of both, peak RSS, what was written, the
    seconds of each format step (``phases``)."""
    t0 = time.perf_counter()
    import entropi.export

    phases: dict = {}
    _time_formats(phases)
    export_rung = None if run is None else _export_rung()
    t1 = time.perf_counter()
    rss_imported = _vm("VmRSS")
    if run is None:
        result = _synthetic_export(forms, out)
    else:
        result = export_rung(run, rung, forms=forms, out_dir=out, quantize="int8")
    t2 = time.perf_counter()
    line = {
        "import_s": t1 - t0,
        "export_s": t2 - t1,
        "peak_rss_mb": _vm("VmHWM"),
        "rss_after_import_mb": rss_imported,
        "files": sorted(result["files"]),
        "phases": phases,
        "export_module": entropi.export.__file__,
    }
    print(json.dumps(line))


# --- the parent: cases x trees ---------------------------------------------------------------


def _tree_path(tree: Path, links: Path) -> str:
    """A folder whose ``entropi/<layer>`` link to ``tree``'s layers (for PYTHONPATH)."""
    pkg = links / "entropi"
    pkg.mkdir(parents=True, exist_ok=True)
    for layer in LAYERS:
        if (tree / layer).is_dir():
            (pkg / layer).symlink_to(tree / layer, target_is_directory=True)
    return str(links)


def _sha256s(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _run_child(case: tuple[str, int], args, env: dict, out: Path) -> dict:
    (forms_case, rung) = case
    forms = list(FORMS) if forms_case == "all" else [forms_case]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--out", str(out)]
    cmd += ["--synthetic"] if args.synthetic else ["--run", str(args.run), "--rung", str(rung)]
    for form in forms:
        cmd += ["--form", form]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"export child failed ({case}):\n{proc.stderr[-4000:]}")
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "wall_s": wall,
        **line,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }


def _differences(a: Path, b: Path) -> list[str]:
    """Files of ``a`` and ``b`` whose sha256 differs; for export.json, the values that differ."""
    ha, hb = _sha256s(a), _sha256s(b)
    diffs = [n for n in sorted(set(ha) | set(hb)) if ha.get(n) != hb.get(n)]
    if "export.json" in diffs and "export.json" in ha and "export.json" in hb:
        ja = json.loads((a / "export.json").read_text())
        jb = json.loads((b / "export.json").read_text())
        diffs.remove("export.json")
        diffs += [f"export.json {k}: {x!r} -> {y!r}" for k, x, y in _json_diff(ja, jb)]
    return diffs


def _json_diff(a, b, key: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _json_diff(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
    elif a != b:
        yield key, a, b


def _machine() -> dict:
    from entropi.common.provenance import cpu_model, versions

    try:
        uptime = Path("/proc/uptime").read_text().split()[0]
    except OSError:
        uptime = None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "versions": versions(LIBRARIES),
        "uptime_s": None if uptime is None else float(uptime),
        "load_average_start": list(os.getloadavg()),
    }


def _git(tree: Path) -> dict:
    """The tree's commit and whether its tracked files differ from it."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True)
        except OSError:
            return None
        return out.stdout if out.returncode == 0 else None

    head, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    return {
        "path": str(tree),
        "commit": head.strip() if head else None,
        "clean": None if status is None else not status.strip(),
    }


def profile(args) -> dict:
    trees = {"after": Path(args.after).resolve()}
    if args.before is not None:
        trees = {"before": Path(args.before).resolve(), **trees}
    cases = {case: (case, args.rung) for case in args.case or CASES}
    cases.update({f"all (rung {r})": ("all", r) for r in args.also_rung})
    result = {
        "command": "python scripts/export_profile.py " + " ".join(args.argv),
        "machine": _machine(),
        "trees": {k: _git(v) for k, v in trees.items()},
        "source": "synthetic smallnet"
        if args.synthetic
        else f"{args.run} rung {args.rung}"
        + "".join(f" (and rung {r}: every form)" for r in args.also_rung),
        "formats": ["onnx", "tflite"],
        "quantize": "int8",
        "repeats": args.repeats,
        "rss": "VmHWM of a fresh child process per export (peak RSS since exec)",
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="entropi-export-profile-") as tmp:
        tmp = Path(tmp)
        envs, links = {}, {}
        for name, tree in trees.items():
            links[name] = _tree_path(tree, tmp / f"links-{name}")
            path = os.pathsep.join(filter(None, [links[name], os.environ.get("PYTHONPATH")]))
            envs[name] = {**os.environ, "PYTHONPATH": path}
        for i, (case, spec) in enumerate(cases.items()):
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            outs: dict[str, Path] = {}
            for r in range(args.repeats):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    out = tmp / f"case{i}-{name}-{r}"
                    runs[name].append(_run_child(spec, args, envs[name], out))
                    if not runs[name][-1]["export_module"].startswith(links[name]):
                        raise RuntimeError(
                            f"the {name} child imported {runs[name][-1]['export_module']}, not "
                            f"the tree {trees[name]}"
                        )
                    outs.setdefault(name, out)
                    print(
                        f"{case:14s} {name:6s} repeat {r}: {runs[name][-1]['wall_s']:.1f} s wall, "
                        f"{runs[name][-1]['export_s']:.1f} s export, "
                        f"{runs[name][-1]['peak_rss_mb']:.0f} MiB peak",
                        flush=True,
                    )
            entry: dict = {"runs": runs}
            for name in trees:
                entry[name] = {
                    key: median([x[key] for x in runs[name]])
                    for key in ("wall_s", "export_s", "import_s", "peak_rss_mb")
                }
                steps = sorted({k for x in runs[name] for k in x["phases"]})
                entry[name]["phases"] = {
                    k: {
                        "s": median([x["phases"].get(k, {"s": 0.0})["s"] for x in runs[name]]),
                        "calls": runs[name][0]["phases"].get(k, {"calls": 0})["calls"],
                    }
                    for k in steps
                }
            if "before" in trees:
                diffs = _differences(outs["before"], outs["after"])
                entry["identical"] = not diffs
                entry["differences"] = diffs
                entry["files_compared"] = len(_sha256s(outs["after"]))
            result["cases"][case] = entry
    result["machine"]["load_average_end"] = list(os.getloadavg())
    return result


def _tree_label(tree: dict) -> str:
    state = {True: "clean", False: "with uncommitted changes", None: "state unknown"}
    return f"{tree['path']} at {(tree['commit'] or '?')[:10]} ({state[tree['clean']]})"


def markdown(result: dict) -> str:
    m = result["machine"]
    has_before = "before" in result["trees"]
    lines = [
        "# Export profile",
        "",
        f"`{result['command']}`",
        "",
        f"{result['source']}; formats {', '.join(result['formats'])}, float32 + "
        f"{result['quantize']}; median of {result['repeats']} run(s), each a fresh process "
        f"(peak RSS = its VmHWM). Machine: {m['cpu']}, {m['cpu_count']} CPUs, load average "
        f"{m['load_average_start'][0]:.2f} at the start, {m['load_average_end'][0]:.2f} at the "
        f"end (a shared machine). torch {m['versions'].get('torch')}, litert-torch "
        f"{m['versions'].get('litert-torch')}, onnxruntime {m['versions'].get('onnxruntime')}.",
        "",
    ]
    if has_before:
        b, a = (_tree_label(result["trees"][k]) for k in ("before", "after"))
        lines += [
            f"before: {b}; after: {a}.",
            "",
            "| forms | before s | after s | speed-up | before export s | after export s "
            "| before peak MiB | after peak MiB | outputs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for case, e in result["cases"].items():
            bw, aw = e["before"]["wall_s"], e["after"]["wall_s"]
            same = "identical" if e["identical"] else "differ: " + "; ".join(e["differences"])
            lines.append(
                f"| {case} | {bw:.1f} | {aw:.1f} | {bw / aw:.2f}x | {e['before']['export_s']:.1f} "
                f"| {e['after']['export_s']:.1f} | {e['before']['peak_rss_mb']:.0f} "
                f"| {e['after']['peak_rss_mb']:.0f} | {same} ({e['files_compared']} files) |"
            )
    else:
        lines += ["| forms | s | export s | peak MiB |", "|---|---:|---:|---:|"]
        for case, e in result["cases"].items():
            a = e["after"]
            lines.append(
                f"| {case} | {a['wall_s']:.1f} | {a['export_s']:.1f} | {a['peak_rss_mb']:.0f} |"
            )
    lines += [
        "",
        "s: the child process's whole life (interpreter start and imports included); export s: "
        "the export call alone. `all` is every form in one export.",
        "",
    ]
    case = "all" if "all" in result["cases"] else next(iter(result["cases"]))
    trees = [t for t in ("before", "after") if t in result["trees"]]
    phases = sorted({k for t in trees for k in result["cases"][case][t]["phases"]})
    lines += [
        f"Where the export time of `{case}` goes (median seconds, calls; each format's steps as "
        "its ExportFormat has them: `requires` imports the converter, `write` / `convert` "
        "traces and converts, `quantize` calibrates and converts to int8, `run*` verifies; the "
        "rest is PyTorch references, BN folding, compaction, TFLite Micro and the file "
        "writes):",
        "",
        "| step | " + " | ".join(trees) + " |",
        "|---|" + "---:|" * len(trees),
    ]
    for k in phases:
        cells = []
        for t in trees:
            p = result["cases"][case][t]["phases"].get(k)
            cells.append("" if p is None else f"{p['s']:.1f} ({p['calls']})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    rest = [
        result["cases"][case][t]["export_s"]
        - sum(p["s"] for p in result["cases"][case][t]["phases"].values())
        for t in trees
    ]
    lines += ["| rest | " + " | ".join(f"{r:.1f}" for r in rest) + " |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "quickstart", help="run folder")
    ap.add_argument("--rung", type=int, default=3, help="rung index (default 3)")
    ap.add_argument("--before", help="checkout of the code before the change (a git worktree)")
    ap.add_argument("--after", default=str(ROOT), help="checkout after it (default: this one)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per case and tree (median)")
    ap.add_argument("--case", action="append", choices=CASES, help="only these cases")
    ap.add_argument(
        "--also-rung",
        type=int,
        action="append",
        default=[],
        help="also the `all` case of this rung (e.g. one whose compaction removes channels)",
    )
    ap.add_argument("--synthetic", action="store_true", help="a synthetic smallnet, not a run")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--form", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(None if args.synthetic else str(args.run), args.rung, args.form, args.out)
        return {}
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    args.argv = argv
    result = profile(args)
    atomic_write_json(args.out / "export_profile.json", result)
    atomic_write_text(args.out / "export_profile.md", markdown(result))
    return result


if __name__ == "__main__":
    main()
