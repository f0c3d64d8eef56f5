"""Shared fixtures: tiny real-format datasets written into tmp folders, quiet progress bars."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

# CI runs property tests with a fixed seed so that a rare example cannot make one run red
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("ENTROPI_QUIET", "1")


def write_image_folder(root, *, classes=3, train_per_class=16, test_per_class=6, seed=0):
    """``root/{train,test}/<class>/*.png`` with class-dependent colour so a net can learn it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                img = rng.integers(0, 80, (32, 32, 3))
                img[..., c % 3] += 120
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ENTROPI_CACHE", str(tmp_path_factory.getbasetemp() / "entropi-cache"))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs"))
