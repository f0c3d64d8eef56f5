"""The run folder's JSON records: ``results.json`` (:class:`RunResults`, each entry of its
``criteria_summary`` a :class:`CriterionSummary`, each row of ``rungs`` a :class:`RungScores`)
and ``scores/rung_NNN.json`` (:class:`RungScores`), typed and versioned like the rung record
(:mod:`entropi.export.rung`), each read through one loader (:func:`load_results`,
:func:`load_scores`).

A record is a dataclass whose fields are the file's keys. ``to_dict()`` gives back exactly the
JSON object entropi writes, key for key and in the same order, so a file read and written again
is byte-identical: a record read from a file remembers its keys in their order (``key_order``)
and the keys this entropi does not know (``extra``); a record built by entropi writes its fields
in their declared order, leaving out an optional key that holds nothing (``export``,
``device``, ``data_sizes``, ``report`` of a run that had none; a score's empty
``criteria_undefined``).

Versions: both records are format 1, and a format-1 file has no ``format_version`` key (every
file entropi wrote before the records existed is one); a file with a ``format_version`` above
what this entropi reads is refused. A field that older entropi did not write has a default (the
one its readers assumed: ``criterion`` "entropy", ``rule`` "argmax", ``probe_spread`` 0, ...),
and an old file read and written again keeps its own keys.

Every problem is a :class:`RecordError` (a :class:`~entropi.export.rung.CheckpointError`, so an
:class:`~entropi.common.errors.EntropiError`) naming the file and the key. The checks on a score
file's fields are :func:`~entropi.host.run.rundir.check_score`'s; the JSON is read by
:meth:`~entropi.host.run.rundir.RunDir.read_json` (size, syntax, a table).

The record types also read as a read-only mapping of their keys (``results["rungs"]``,
``score.get("n")``), for the selection rules (:mod:`entropi.host.selection.rules`), which take
any table of scores, and for callers written against the dicts entropi returned before.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entropi.export.rung import CheckpointError

from .rundir import RunDir, _is_number, _remake, check_score

__all__ = [
    "RESULTS_FORMAT",
    "SCORES_FORMAT",
    "CriterionSummary",
    "RecordError",
    "RunResults",
    "RungScores",
    "load_results",
    "load_scores",
    "read_scores",
    "read_selection",
    "summaries",
]

RESULTS_FORMAT = 1
"""Format of ``results.json`` this entropi writes and reads up to (1: the keys below; a file
without ``format_version`` is format 1)."""
SCORES_FORMAT = 1
"""Format of ``scores/rung_NNN.json`` this entropi writes and reads up to (as above)."""

_OPTIONAL = {"optional": True}
"""Field metadata: a key entropi writes only when it holds something (not its default)."""
_BOOKKEEPING = ("extra", "key_order")


class RecordError(CheckpointError):
    """A ``results.json`` or score file that is not the record entropi writes; the message names
    the file, the key and what to do."""


def _fix(where: str) -> str:
    """What to do about the damaged file ``where`` names (``PATH`` or ``PATH rungs[i]``...)."""
    return _remake(Path(re.sub(r" (rungs|criteria_summary)\[.*$", "", where)))


# --- the generic record --------------------------------------------------------------------
def _fields(rec_or_cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(rec_or_cls) if f.name not in _BOOKKEEPING]


def _default(f: dataclasses.Field) -> Any:
    """The field's default (``dataclasses.MISSING``: a required field)."""
    factory = f.default_factory
    return f.default if factory is dataclasses.MISSING else factory()


def _written(rec, f: dataclasses.Field) -> bool:
    """Whether field ``f`` of ``rec`` is one of its file's keys."""
    value = getattr(rec, f.name)
    if f.name in rec.key_order:
        return True
    if f.name == "format_version":  # format 1 is written without the key
        return value != 1
    if f.metadata.get("optional") and value == _default(f):
        return False
    if not rec.key_order:  # built by entropi: every field
        return True
    return value != _default(f)  # read from a file that lacked it: written once set


def _json(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


class _Record:
    """What :class:`RunResults` and :class:`RungScores` share: the file's keys in their order,
    and a read-only mapping view of them."""

    key_order: tuple[str, ...]
    extra: dict[str, Any]

    def _present(self) -> dict[str, Any]:
        """The file's keys -> values (records inside kept as records), in the file's order."""
        values = {f.name: getattr(self, f.name) for f in _fields(self) if _written(self, f)}
        values.update(self.extra)
        order = [k for k in self.key_order if k in values]
        order += [k for k in values if k not in self.key_order]
        return {k: values[k] for k in order}

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the file, key for key and in order."""
        return {k: _json(v) for k, v in self._present().items()}

    # read-only mapping view (the selection rules take any table of scores)
    def __getitem__(self, key: str) -> Any:
        return self._present()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._present().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._present()

    def keys(self):
        return self._present().keys()

    def items(self):
        return self._present().items()

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())


def _split(cls, d: dict[str, Any], where: str, what: str) -> dict[str, Any]:
    """The constructor arguments of ``cls`` from the file's object ``d``: known keys as fields,
    the others in ``extra``, the keys' order in ``key_order``; a missing required key or a newer
    format is a :class:`RecordError`."""
    fix = _fix(where)
    version = d.get("format_version", 1)
    newest = cls.FORMAT
    if not (isinstance(version, int) and not isinstance(version, bool) and version >= 1):
        raise RecordError(f"{where}: format_version is {version!r}, not a format number; {fix}")
    if version > newest:
        raise RecordError(
            f"{where} is {what} format {version}; this entropi reads up to {newest} (upgrade "
            "entropi)"
        )
    names = {f.name for f in _fields(cls)}
    for f in _fields(cls):
        if _default(f) is dataclasses.MISSING and f.name not in d:
            raise RecordError(f"{where}: it lacks {f.name!r}; the file is damaged: {fix}")
    kwargs = {k: v for k, v in d.items() if k in names}
    kwargs["extra"] = {k: v for k, v in d.items() if k not in names}
    kwargs["key_order"] = tuple(d)
    return kwargs


def _need(ok: bool, where: str, key: str, what: str) -> None:
    if not ok:
        raise RecordError(f"{where}: {key} is {what}; the file is damaged: {_fix(where)}")


def _is_index(v: Any, n: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n


# --- scores/rung_NNN.json ------------------------------------------------------------------
@dataclass(kw_only=True)
class RungScores(_Record):
    """One rung's selection criteria and linear probe on the target (``scores/rung_NNN.json``,
    written by ``stage_score``; the rows of :class:`RunResults` ``rungs``). Fields in the
    order entropi writes them."""

    FORMAT = SCORES_FORMAT

    index: int
    alpha: float
    """Measured kept fraction of the prunable weights (the rung record's)."""
    nnz: int
    source_accuracy: float | None
    """None (or NaN) when not measured."""
    entropy: float
    """The paper's estimator, in nats."""
    per_unit_bound: float | None = None
    distinct_states: int
    n: int
    """Target training samples the criteria were computed on."""
    delta: float | None = None
    criteria: dict[str, float | None] = field(default_factory=dict)
    """Every criterion's value on this rung (None: undefined, the reason in
    ``criteria_undefined``)."""
    criterion_seconds: dict[str, float] = field(default_factory=dict)
    criteria_undefined: dict[str, str] = field(default_factory=dict, metadata=_OPTIONAL)
    probe_accuracy: float
    """Mean linear-probe test accuracy over the ``[probe] repeats`` seeds."""
    probe_accuracy_std: float = 0.0
    probe_accuracies: list[float] | None = None
    probe_train_accuracy: float | None = None
    probe_test_n: int | None = None
    probe_folds: int | None = None
    probe_accuracy_se: float | None = None
    criteria_version: int | None = None
    criteria_seconds: float | None = None
    probe_seconds: float | None = None
    format_version: int = SCORES_FORMAT
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Keys this entropi does not know, kept as they are."""
    key_order: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """The file's keys in its order (empty: built by entropi, fields in declared order)."""

    @classmethod
    def from_dict(cls, d: Any, where: str | os.PathLike, index: int | None = None) -> RungScores:
        """The record of the score object ``d`` read from ``where``, its fields checked
        (:func:`~entropi.host.run.rundir.check_score`; ``index``: the rung it must be)."""
        where = str(where)
        if not isinstance(d, dict):
            raise RecordError(f"{where} holds a {type(d).__name__}, not a table; "
                              f"{_fix(where)}")  # fmt: skip
        try:
            check_score(d, d.get("index") if index is None else index, where)
        except CheckpointError as e:
            raise RecordError(str(e)) from None
        return cls(**_split(cls, d, where, "a score file of"))


def load_scores(path: str | os.PathLike, index: int | None = None) -> RungScores:
    """``scores/rung_NNN.json`` at ``path`` as a :class:`RungScores` (its rung ``index``
    defaults to the one its name says); a missing or damaged file is a :class:`CheckpointError`
    naming it."""
    path = Path(path)
    if index is None and path.stem.startswith("rung_") and path.stem[5:].isdigit():
        index = int(path.stem[5:])
    d = RunDir(path.parent.parent).read_json(path)
    if d is None:
        raise RecordError(f"{path} does not exist; {_remake(path)}")
    return RungScores.from_dict(d, path, index)


def read_scores(run: RunDir, index: int) -> RungScores:
    """Rung ``index``'s scores in ``run`` (a missing file names the rung and how to rescore;
    :meth:`RunDir.read_score` has checked its fields, so they are not checked again)."""
    return RungScores(
        **_split(RungScores, run.read_score(index), str(run.score(index)), "a score file of")
    )


# --- results.json ------------------------------------------------------------------------
@dataclass(kw_only=True)
class CriterionSummary(_Record):
    """One criterion's entry in :class:`RunResults` ``criteria_summary``: the rung its argmax
    picks, that pick's regret, its rank agreement with the probe, its cost."""

    FORMAT = RESULTS_FORMAT

    selected_index: int
    regret: float
    """Best probe accuracy minus the pick's, a fraction of the test images."""
    kendall_tau: float | None = None
    """Against the probe accuracies (None: undefined, e.g. constant values)."""
    weighted_tau: float | None = None
    higher_is_better: bool = True
    needs_labels: bool = False
    seconds: float | None = None
    """Over every rung (None: not timed by the entropi that scored them)."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    key_order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Any, where: str, n_rungs: int) -> CriterionSummary:
        """The entry ``d`` (at ``where``, a results file's ``criteria_summary[NAME]``) of a
        ladder of ``n_rungs``, its pick and regret checked."""
        if not isinstance(d, dict):
            raise RecordError(f"{where} is not a table; the file is damaged: {_fix(where)}")
        kwargs = _split(cls, d, where, "a summary of")
        pick, regret = kwargs["selected_index"], kwargs["regret"]
        _need(_is_index(pick, n_rungs), where, "selected_index", f"{pick!r}, not a rung")
        _need(_is_number(regret), where, "regret", f"{regret!r}, not a finite number")
        return cls(**kwargs)


@dataclass(kw_only=True)
class RunResults(_Record):
    """``results.json``: the rung table, the selection, and the export / device summaries
    (written by ``select`` / ``entropi run``; read by the report, the study, the CLI). Fields in
    the order entropi writes them; those without a default are in every results.json entropi
    ever wrote."""

    FORMAT = RESULTS_FORMAT

    package_version: str
    config_sha256: str
    seed: int
    arch: str
    source: str
    target: str
    levels: int
    entropy_units: str
    rungs: list[RungScores]
    criterion: str = "entropy"
    selected_index: int
    selection_rule: str | None = None
    """The rule in words (``"argmax subset_entropy; ties ..."``)."""
    rule: str = "argmax"
    selection_ties: dict[str, Any] | None = None
    """``best_index``, ``tied``, ``paired_se``, ``tie_se`` of the rule."""
    selection_confidence: float | None = None
    selection_resamples: dict[str, Any] | None = None
    """``resamples``, ``resamples_dropped``, ``wins``, ``picks`` of the bootstrap."""
    criteria_summary: dict[str, CriterionSummary] = field(default_factory=dict)
    """Per criterion: its pick, regret, Kendall and weighted tau against the probe, cost."""
    criteria_undefined: dict[str, dict[str, Any]] = field(default_factory=dict)
    saturated_rungs: list[int] = field(default_factory=list)
    selected_alpha: float
    best_probe_index: int
    dense_probe_accuracy: float
    selected_probe_accuracy: float
    best_probe_accuracy: float
    probe_spread: float = 0.0
    probe_se: float | None = None
    regret: float
    """Best probe accuracy minus the pick's, a fraction of the test images."""
    regret_units: str | None = None
    deployment: dict[str, Any] | None = None
    """The fit to ``[deploy]`` flash / RAM (``pick``, ``table``, ...); None without limits."""
    stage_seconds: dict[str, float]
    export: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    device: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    data_sizes: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    report: str | None = field(default=None, metadata=_OPTIONAL)
    """The report's file name in the run folder."""
    format_version: int = RESULTS_FORMAT
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    key_order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def selected(self) -> RungScores:
        """The picked rung's scores."""
        return self.rungs[self.selected_index]

    @property
    def best(self) -> RungScores:
        """The best rung by probe accuracy (in hindsight)."""
        return self.rungs[self.best_probe_index]

    @classmethod
    def from_dict(cls, d: Any, where: str | os.PathLike) -> RunResults:
        """The record of the results object ``d`` read from ``where``, its fields checked."""
        where = str(where)
        if not isinstance(d, dict):
            raise RecordError(f"{where} holds a {type(d).__name__}, not a table; "
                              f"{_fix(where)}")  # fmt: skip
        kwargs = _split(cls, d, where, "a results file of")
        rows = kwargs["rungs"]
        _need(isinstance(rows, list) and bool(rows), where, "rungs", "not a list of rungs")
        kwargs["rungs"] = [
            RungScores.from_dict(r, f"{where} rungs[{i}]", i) for i, r in enumerate(rows)
        ]
        _check_results(kwargs, where, len(rows))
        kwargs["criteria_summary"] = summaries(kwargs.get("criteria_summary", {}), len(rows), where)
        return cls(**kwargs)


def _check_results(d: dict[str, Any], where: str, n: int) -> None:
    """The kinds of the fields the report, the CLI and the study read."""
    for key in ("selected_index", "best_probe_index"):
        _need(_is_index(d[key], n), where, key, f"{d[key]!r}, not a rung of 0..{n - 1}")
    for key in ("regret", "selected_alpha", "dense_probe_accuracy", "selected_probe_accuracy",
                "best_probe_accuracy", "probe_spread"):  # fmt: skip
        if key in d:
            _need(_is_number(d[key]), where, key, f"{d[key]!r}, not a finite number")
    for key in ("selection_confidence", "probe_se"):
        v = d.get(key)
        _need(v is None or _is_number(v), where, key, f"{v!r}, not a number or null")
    for key in ("package_version", "config_sha256", "arch", "source", "target", "criterion",
                "rule"):  # fmt: skip
        if key in d:
            _need(isinstance(d[key], str), where, key, f"{d[key]!r}, not a string")
    for key in ("levels", "seed"):
        _need(_is_index(d[key], math.inf) if key == "levels" else isinstance(d[key], int),
              where, key, f"{d[key]!r}, not an integer")  # fmt: skip
    for key in ("stage_seconds", "criteria_summary", "criteria_undefined"):
        if key in d:
            _need(isinstance(d[key], dict), where, key, "not a table")
    for key in ("selection_ties", "selection_resamples", "deployment", "export", "device",
                "data_sizes"):  # fmt: skip
        v = d.get(key)
        _need(v is None or isinstance(v, dict), where, key, "not a table or null")


def summaries(table: dict[str, Any], n_rungs: int, where: str = "(in memory)"):
    """``criteria_summary``'s entries (dicts, as the selection rules compute them, or read from
    ``where``) as :class:`CriterionSummary` records, checked against a ladder of ``n_rungs``."""
    return {
        name: CriterionSummary.from_dict(s, f"{where} criteria_summary[{name!r}]", n_rungs)
        for name, s in table.items()
    }


def load_results(path: str | os.PathLike) -> RunResults:
    """``results.json`` at ``path`` as a :class:`RunResults`; a missing or damaged file is a
    :class:`CheckpointError` naming it (and the key)."""
    path = Path(path)
    d = RunDir(path.parent).read_json(path)
    if d is None:
        raise RecordError(f"{path} does not exist; run `entropi select {path.parent}` to make it")
    return RunResults.from_dict(d, path)


def read_selection(path: str | os.PathLike) -> tuple[Any, Any]:
    """``(selected_index, deployment)`` of ``results.json`` at ``path`` as the file holds them,
    unchecked (None where absent): what a bundle or an export of "the selected rung" needs, from
    a file that may be partial. A file that is not a JSON table is a :class:`CheckpointError`."""
    path = Path(path)
    d = RunDir(path.parent).read_json(path, {})
    return d.get("selected_index"), d.get("deployment")


def previous_data_sizes(path: str | os.PathLike) -> dict[str, Any] | None:
    """``data_sizes`` of the ``results.json`` at ``path`` (None when it has none): what the run
    loaded, which a re-selection keeps; read leniently, since select remakes the rest."""
    path = Path(path)
    sizes = RunDir(path.parent).read_json(path, {}).get("data_sizes")
    return sizes if isinstance(sizes, dict) and sizes else None
