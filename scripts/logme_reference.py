"""Record the authors' LogME scores on seeded inputs, the fixture of ``tests/test_criteria.py``.

    python scripts/logme_reference.py PATH/TO/thuml-LogME [--out tests/data/logme_reference.json]

``PATH`` is a checkout of https://github.com/thuml/LogME; its ``LogME.py`` (which needs numba) is
imported from there and never copied into entropi. The inputs come from :func:`make_inputs`
(numpy only, so the test regenerates them from the recorded seeds and shapes); the JSON records
the seeds, shapes, scores and the commit of the checkout (``--commit`` when it is not a work
tree, e.g. a bare mirror exported with ``git archive``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["CASES", "make_inputs", "reference_scores"]

CASES = [
    {"seed": 0, "n": 400, "d": 16, "classes": 4, "spread": 3.0},
    {"seed": 1, "n": 1000, "d": 32, "classes": 10, "spread": 1.0},
    {"seed": 2, "n": 300, "d": 64, "classes": 3, "spread": 0.3},
    {"seed": 3, "n": 50, "d": 80, "classes": 5, "spread": 2.0},  # n < d: the thin-SVD branch
    {"seed": 4, "n": 600, "d": 24, "classes": 6, "spread": 0.0},  # no class structure
    # dead units (all-zero columns, as a pruned encoder's features have): rank-deficient F
    {"seed": 5, "n": 500, "d": 48, "classes": 8, "spread": 1.0, "dead": 20},
    {"seed": 6, "n": 40, "d": 64, "classes": 4, "spread": 2.0, "dead": 30},  # n < d, dead
]
"""Seeded inputs: n samples x d units, ``classes`` clusters whose centres are ``spread`` apart."""


def make_inputs(seed: int, n: int, d: int, classes: int, spread: float, dead: int = 0):
    """Features (n x d float64: class centre x spread + N(0, 1) noise, the last ``dead`` columns
    zero) and labels (every class present), from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(classes), rng.integers(0, classes, n - classes)])
    labels = labels[rng.permutation(n)]
    centres = rng.standard_normal((classes, d)) * spread
    features = centres[labels] + rng.standard_normal((n, d))
    if dead:
        features[:, d - dead :] = 0.0
    return features, labels.astype(np.int64)


def _load_logme(checkout: Path):
    spec = importlib.util.spec_from_file_location("thuml_logme", checkout / "LogME.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LogME


def reference_scores(checkout: Path) -> list[dict]:
    """Each case of :data:`CASES` with the authors' score (``LogME(regression=False).fit``)."""
    logme_cls = _load_logme(checkout)
    out = []
    for case in CASES:
        features, labels = make_inputs(**case)
        score = float(logme_cls(regression=False).fit(features, labels))
        out.append({**case, "score": score})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="directory holding thuml/LogME's LogME.py")
    parser.add_argument("--out", type=Path, default=Path("tests/data/logme_reference.json"))
    parser.add_argument("--commit", help="commit of the checkout (default: git rev-parse HEAD)")
    args = parser.parse_args(argv)
    commit = (
        args.commit
        or subprocess.run(
            ["git", "-C", str(args.checkout), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    import numba  # the reference needs it; record its version

    record = {
        "source": "https://github.com/thuml/LogME LogME.py, LogME(regression=False).fit",
        "commit": commit,
        "generator": "scripts/logme_reference.py make_inputs(seed, n, d, classes, spread)",
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
        },
        "cases": reference_scores(args.checkout),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["cases"]), file=sys.stderr)


if __name__ == "__main__":
    main()
