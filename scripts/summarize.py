"""Turn a pytest-benchmark JSON file into ``benchmarks/RESULTS.md``.

``python scripts/summarize.py benchmarks/results/pytest_benchmark.json
[--out benchmarks/RESULTS.md] [--note TEXT]``

The Markdown holds the machine (CPU model, cores, load average when the suite started, library
versions: what ``benchmarks/conftest.py`` adds to the JSON, else ``/proc/cpuinfo`` now) and, per
test module, one line per benchmark: median, interquartile range, standard deviation, min, max,
rounds, and the throughput a benchmark recorded in ``extra_info``; then links to the experiment
reports in ``results/*.md`` next to the output file.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

from entropi.common.files import atomic_write_text
from entropi.common.provenance import cpu_model

__all__ = ["format_seconds", "render_results", "summarize"]


class BenchmarkJSONError(ValueError):
    """The file is not a pytest-benchmark JSON report."""


def format_seconds(t: float) -> str:
    """``0.00123`` -> ``"1.23 ms"``: three significant digits in s, ms or us."""
    if t >= 1.0:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} us"


def _machine(data: dict) -> list[str]:
    info = data.get("machine_info", {})
    ours = info.get("entropi", {})
    cpu = ours.get("cpu_model") or (info.get("cpu") or {}).get("brand_raw") or cpu_model()
    cores = ours.get("logical_cores") or os.cpu_count()
    lines = [
        f"- CPU: {cpu}, {cores} logical cores; {info.get('system', '')} "
        f"{info.get('release', '')}, {info.get('python_implementation', 'Python')} "
        f"{info.get('python_version', '')}",
        f"- Threads: torch {ours.get('bench_threads', '?')} "
        f"(OMP_NUM_THREADS={ours.get('omp_num_threads')})",
    ]
    load = ours.get("load_average_at_start")
    if load:
        busy = load[0] > 0.5 * cores
        lines.append(
            f"- Load average when the suite started: {', '.join(f'{x:.2f}' for x in load)}"
            + (
                " (the machine was shared and busy: timings are noisy, rerun on a quiet one)"
                if busy
                else ""
            )
        )
    versions = ours.get("versions") or {}
    if versions:
        lines.append(
            "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None)
        )
    when = data.get("datetime")
    if when:
        lines.append(f"- Run: {when} (pytest-benchmark {data.get('version', '?')})")
    commit = data.get("commit_info") or {}
    if commit.get("id"):
        lines.append(
            f"- Commit: {commit['id'][:12]}" + (" (dirty tree)" if commit.get("dirty") else "")
        )
    return lines


def _extra(extra: dict) -> str:
    parts = []
    for k, v in extra.items():
        if isinstance(v, float):
            parts.append(f"{k} = {v:,.4g}")
        elif isinstance(v, int | str):
            parts.append(f"{k} = {v}")
    return "; ".join(parts)


def render_results(
    data: dict, *, note: str | None = None, related: list[str] | tuple[str, ...] = ()
) -> str:
    """The RESULTS.md text for a loaded pytest-benchmark report; ``related``: links to list."""
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise BenchmarkJSONError(
            "not a pytest-benchmark report (no 'benchmarks' key); write one with "
            "`pytest benchmarks --benchmark-json FILE`"
        )
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        module = b.get("fullname", b["name"]).split("::")[0]
        groups[b.get("group") or module].append(b)
    lines = [
        "# Benchmark results",
        "",
        "Timings of the pytest-benchmark suite in `benchmarks/` (one call = one round; medians "
        "and spread over rounds). Reproduce:",
        "",
        "```",
        "OMP_NUM_THREADS=1 .venv/bin/python -m pytest benchmarks "
        "--benchmark-json benchmarks/results/pytest_benchmark.json",
        ".venv/bin/python scripts/summarize.py benchmarks/results/pytest_benchmark.json",
        "```",
        "",
        "## Machine",
        "",
        *_machine(data),
        "",
    ]
    if note:
        lines += [note, ""]
    if related:
        lines += [
            "Experiment reports next to this suite (each states its own machine and conventions):",
            "",
            *(f"- [{link}]({link})" for link in related),
            "",
        ]
    if not data["benchmarks"]:
        lines += ["No benchmark ran (was the suite run with --benchmark-disable?).", ""]
    for group in sorted(groups):
        lines += [
            f"## {group}",
            "",
            "| benchmark | median | IQR | stddev | min | max | rounds | notes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for b in sorted(groups[group], key=lambda b: b["name"]):
            s = b["stats"]
            rounds = (
                s["rounds"]
                if s.get("iterations", 1) == 1
                else (f"{s['rounds']} x {s['iterations']}")
            )
            lines.append(
                f"| `{b['name']}` | {format_seconds(s['median'])} | {format_seconds(s['iqr'])} "
                f"| {format_seconds(s['stddev'])} | {format_seconds(s['min'])} "
                f"| {format_seconds(s['max'])} | {rounds} | {_extra(b.get('extra_info', {}))} |"
            )
        lines.append("")
    return "\n".join(lines)


def summarize(
    json_path: str | os.PathLike,
    out: str | os.PathLike = "benchmarks/RESULTS.md",
    *,
    note: str | None = None,
) -> Path:
    """Read ``json_path`` (pytest-benchmark JSON) and write the Markdown summary to ``out``."""
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no benchmark report at {path}; run `pytest benchmarks --benchmark-json {path}` first"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchmarkJSONError(f"{path} is not valid JSON ({e})") from e
    out = Path(out)
    results = out.parent / "results"
    related = sorted(
        str(p.relative_to(out.parent)) for p in results.glob("*.md") if results.is_dir()
    )
    return atomic_write_text(out, render_results(data, note=note, related=related))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pytest-benchmark JSON -> RESULTS.md")
    parser.add_argument("json", help="the --benchmark-json file")
    parser.add_argument("--out", default="benchmarks/RESULTS.md")
    parser.add_argument("--note", default=None, help="a paragraph to put under the machine")
    args = parser.parse_args(argv)
    print(summarize(args.json, args.out, note=args.note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
