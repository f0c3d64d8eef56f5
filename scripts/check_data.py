"""Load every shipped dataset once (building the cache) and again (from it), timing both.

    python scripts/check_data.py ../shared/datasets [--cache-dir DIR] [--json OUT]

Prints one JSON line per (dataset, split, pass) with the load time, shape and label counts;
also times one augmented epoch of CIFAR-10 train through :func:`iterate_batches` on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from entropi.host.data import CIFAR10_MEAN, CIFAR10_STD, iterate_batches, load_dataset, to_device

__all__ = ["check_datasets"]

_PLAN = [
    ("cifar10", "train", None),
    ("cifar10", "test", None),
    ("cifar100", "train", None),
    ("cifar100", "test", None),
    ("pacs", "train", ["photo"]),
    ("pacs", "test", ["photo"]),
]


def check_datasets(
    root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, batch_size: int = 512
) -> list[dict]:
    """Load each dataset of the plan twice and one augmented CIFAR-10 epoch; return the rows."""
    import torch

    rows = []
    for name, split, domains in _PLAN:
        for attempt in ("first", "cached"):
            t = time.perf_counter()
            ds = load_dataset(name, split, root, domains=domains, cache_dir=cache_dir)
            dt = time.perf_counter() - t
            counts = ds.class_counts()
            rows.append(
                {
                    "dataset": name,
                    "split": split,
                    "domains": domains,
                    "load": attempt,
                    "seconds": round(dt, 3),
                    "shape": list(ds.x.shape),
                    "classes": ds.num_classes,
                    "count_min": int(counts.min()),
                    "count_max": int(counts.max()),
                    "pixel_mean": round(float(ds.x.mean()) / 255, 4),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    ds = load_dataset("cifar10", "train", root, cache_dir=cache_dir)
    x, y = to_device(ds, "cpu")
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    n = 0
    for xb, _ in iterate_batches(
        x,
        y,
        batch_size,
        shuffle=True,
        augment=True,
        generator=g,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ):
        n += xb.shape[0]
    dt = time.perf_counter() - t
    rows.append(
        {
            "what": "cifar10 train augmented epoch, cpu",
            "batch_size": batch_size,
            "torch_threads": torch.get_num_threads(),
            "seconds": round(dt, 3),
            "images_per_s": round(n / dt),
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("root", type=Path, help="folder holding the datasets (../shared/datasets)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache (default ENTROPI_CACHE)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    a = p.parse_args(argv)
    rows = check_datasets(a.root, cache_dir=a.cache_dir)
    if a.json:
        from entropi.common.files import atomic_write_json

        atomic_write_json(a.json, rows)
    return 0 if np.isfinite([r["seconds"] for r in rows]).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
