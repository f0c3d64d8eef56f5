"""Hostile input, round two (issue 22) and a new user's trips (issue 23), the device application
and its CLI: folders it writes never followed through planted links (D2), Ctrl-C and SIGTERM as
one line (D10), non-finite checkpoints refused (D16), budget remedies that fit, a head folder
not overwritten without ``--overwrite`` and a failed train that leaves nothing (#9), predict's
output (#10), ``--version`` and help texts (#14)."""

from __future__ import annotations

import re

import pytest

from entropi.device.budget import plan_memory
from entropi.device.errors import BudgetError

# --- the budget error names only remedies that fit --------------------------------------------


def test_huge_epochs_suggest_fewer_epochs_not_dropping_momentum():
    d, c, budget = 256, 10, 256 * 1024
    with pytest.raises(BudgetError) as e:
        plan_memory(d, c, budget, momentum=True, epochs=10**7)
    msg = str(e.value)
    assert "momentum" not in msg.split("). ")[-1]  # dropping momentum would not fit
    most = int(re.search(r"train at most (\d+) epochs", msg).group(1))
    plan_memory(d, c, budget, momentum=True, epochs=most)  # the suggestion fits ...
    with pytest.raises(BudgetError):
        plan_memory(d, c, budget, momentum=True, epochs=most + 1)  # ... and is the largest


def test_dropping_momentum_is_suggested_only_when_it_fits():
    with pytest.raises(BudgetError, match=r"or train without momentum \(momentum 0: minimum"):
        plan_memory(512, 100, 256 * 1024, momentum=True)
    plan_memory(512, 100, 256 * 1024, momentum=False)
    with pytest.raises(BudgetError) as e:  # too small either way: only a larger budget helps
        plan_memory(512, 100, 100 * 1024, momentum=True)
    assert "without momentum" not in str(e.value) and "epochs" not in str(e.value).split(". ")[-1]
