"""Strict config values: every field of every section refuses a value of the wrong type, and
values of the right type that make no sense (NaN, inf, blanks, unknown names) fail at load."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from entropi.host.run.config import (
    _NOT_IN_FILE,
    _SECTIONS,
    ConfigError,
    RunConfig,
    config_from_dict,
    config_to_toml,
    load_config,
)

_WRONG = {
    bool: ["yes", "no", "true", 1, 0, 1.0],
    int: [True, 1.5, "3", [1]],
    float: [True, "0.5", math.nan, math.inf, -math.inf],
    str: [5, True, 0.5, ["a"]],
    list[str]: ["a", [1], ["a", 2], [True], {"a": "b"}],
    str | int: [True, 1.5, ["256KB"]],
}


def _fields():
    """(section or "" for the top level, key, annotated type) of every settable field."""
    out = []
    for name, cls in {"": RunConfig, **_SECTIONS}.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if (not name and f.name in _SECTIONS) or f.name in _NOT_IN_FILE.get(name, {}):
                continue
            out.append((name, f.name, hints[f.name]))
    return out


def test_every_field_type_is_covered():
    kinds = {kind for _, _, kind in _fields()}
    assert kinds <= set(_WRONG), kinds - set(_WRONG)


@pytest.mark.parametrize(
    "section, key, value",
    [(s, k, v) for s, k, kind in _fields() for v in _WRONG[kind]],
    ids=lambda x: repr(x),
)
def test_every_field_refuses_the_wrong_type(section, key, value):
    raw = {key: value} if not section else {section: {key: value}}
    name = f"{section}.{key}" if section else key
    with pytest.raises(ConfigError, match=rf"^{name} must be "):
        config_from_dict(raw)


@pytest.mark.parametrize(
    "sets, match",
    [
        (["name="], "name must be a non-empty string"),
        (['name="  "'], "name must be a non-empty string"),
        (["device=gpu"], "device must be 'auto', 'cpu' or 'cuda'"),
        (["data.source="], "data.source: a dataset spec must be a non-empty string"),
        (['data.roots=[" "]'], "data.roots must be a list of folder names"),
        (["data.test_fraction=nan"], "data.test_fraction must be a finite number, got nan"),
        (["data.test_fraction=0"], r"data.test_fraction must be in \(0.0, 1.0\)"),
        (["data.source_per_class=-1"], "data.source_per_class must be an integer >= 0"),
        (["pretrain.arch=vgg"], "pretrain.arch = 'vgg' is not a known architecture"),
        (["pretrain.lr=inf"], "pretrain.lr must be a finite number, got inf"),
        (["pretrain.lr=-0.1"], r"pretrain.lr must be in \(0.0, 10.0\]"),
        (["pretrain.momentum=1.0"], r"pretrain.momentum must be in \[0.0, 1.0\)"),
        (["pretrain.batch_size=0"], "pretrain.batch_size must be an integer >= 1"),
        (["pretrain.input_size=4"], "pretrain.input_size must be an integer >= 8"),
        (['pretrain.init=" "'], r"pretrain.init must be a path string \(or empty\)"),
        (["prune.alpha_min=nan"], "prune.alpha_min must be a finite number, got nan"),
        (["prune.layer_floor=-0.5"], r"prune.layer_floor must be in \[0.0, 1.0\]"),
        (["prune.retrain_epochs=-1"], "prune.retrain_epochs must be an integer >= 0"),
        (["entropy.levels=2000"], r"entropy.levels must be an integer in \[2, 1024\]"),
        (["probe.folds=1"], "probe.folds must be 0 .* or at least 2"),
        (["probe.weight_decay=-1e-4"], r"probe.weight_decay must be in \[0.0, 1.0\]"),
        (["select.criterion=magic"], "select.criterion = 'magic' is not a known selection"),
        (["select.resamples=-1"], "select.resamples must be an integer >= 0"),
        (["export.formats=[]"], "export.formats must be a non-empty subset"),
        (['export.formats=["onnx", "onnx"]'], r"export.formats .* \(each once\)"),
        (['export.formats=["pt"]'], "export.formats must be a non-empty subset"),
        (["export.form=dense"], "export.form = 'dense' is not a known encoder form"),
        (["export.verify_images=-1"], "export.verify_images must be an integer >= 0"),
        (["device_train.schedule=linear"], "schedule must be one of cosine, step, constant"),
        (["device_train.dtype=float16"], "dtype must be float32 or float64"),
        (["device_train.weight_decay=inf"], "device_train.weight_decay must be a finite number"),
        (["device_train.momentum=nan"], "device_train.momentum must be a finite number"),
        (["device_train.batch_size=0"], "batch_size must be >= 1"),
        (["device_train.budget=0"], "must be > 0 bytes"),
        (["device_train.budget=-1KB"], "invalid size '-1KB'"),
    ],
)
def test_nonsense_values_fail_at_load(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_config("quickstart", sets)


def test_overrides_from_the_command_line_are_typed_like_the_file():
    """``--set`` values are read as TOML: a bare word is a string, so a bool key refuses it."""
    assert load_config("quickstart", ["data.download=false"]).data.download is False
    with pytest.raises(ConfigError, match=r"data.download must be a boolean \(true/false\)"):
        load_config("quickstart", ["data.download=off"])


def test_numbers_keep_their_toml_form(tmp_path):
    """An integer is a valid float setting and is not rewritten (a saved config's digest stays)."""
    cfg = load_config("quickstart", ["pretrain.lr=1"])
    assert cfg.pretrain.lr == 1
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert load_config(path).digest() == cfg.digest()
