"""Shared fixtures: tiny real-format datasets written into tmp folders, quiet progress bars."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings
from scripts_loader import load_script

# CI runs property tests with a fixed seed so that a rare example cannot make one run red
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("ENTROPI_QUIET", "1")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ENTROPI_CACHE", str(tmp_path_factory.getbasetemp() / "entropi-cache"))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """``{train,test}/<class>/*.png``, 3 classes, each image coloured by its class so a net
    can learn it: the crash sweep's data (scripts/crash_sweep.py ``write_images``)."""
    return load_script("crash_sweep").write_images(tmp_path_factory.mktemp("imgs"))
