"""Hostile input, round two (issue 22), on the host's run folder: a resolved config that reads
back, a seed that fits torch, training that diverges, and a run folder whose files were damaged
or planted (a gap in the ladder, an edited config, corrupt scores and features, rung records of
the wrong shape, links to folders elsewhere). Each is one clear line, never a traceback or a
wrong rung."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropi.host.config import (
    ConfigError,
    RunConfig,
    _toml_string,
    config_from_dict,
    config_to_toml,
    load_config,
)

# --- D3: the resolved config.toml reads back, whatever the strings hold -----------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_toml_string_round_trips_any_text(s):
    assert tomllib.loads("v = " + _toml_string(s))["v"] == s


def test_a_name_with_a_newline_reads_back_from_the_resolved_config(tmp_path):
    cfg = config_from_dict({"name": "mini\nline", "data": {"roots": ['a"\\\x00\x7fb']}})
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(cfg))
    back = load_config(path)
    assert back == cfg and back.digest() == cfg.digest()


def test_a_string_with_a_lone_surrogate_is_refused_at_load():
    with pytest.raises(ConfigError, match="name must be a string"):
        config_from_dict({"name": "a\udc80"})


# --- D4: a seed torch cannot take is refused at load, before any folder exists --------------------


@pytest.mark.parametrize("seed", [2**63, 2**64, 18446744073709551616])
def test_a_seed_beyond_64_bits_is_refused_at_load(seed):
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 9223372036854775807\]"):
        config_from_dict({"seed": seed})


def test_the_largest_seed_seeds_torch_for_every_rung():
    import torch

    cfg = RunConfig(seed=2**63 - 1)
    torch.Generator().manual_seed(cfg.seed + 64)  # a rung's seed


# --- D7: a diverging training is an EntropiError; an init file must be finite ----------------


def _smallnet_with_nan():
    import torch

    from entropi.host.models import build_model

    torch.manual_seed(0)
    model = build_model("smallnet", 3)
    with torch.no_grad():
        next(iter(model.encoder.parameters())).view(-1)[0] = float("nan")
    return model


def test_a_nan_weight_makes_training_fail_with_an_entropi_error():
    import torch

    from entropi.device.errors import EntropiError
    from entropi.host.config import PretrainConfig
    from entropi.host.train import TrainingDivergedError, train

    x = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    y = torch.arange(16) % 3
    cfg = PretrainConfig(arch="smallnet", epochs=1, batch_size=8)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan .*lower the learning rate"):
        train(_smallnet_with_nan(), x, y, cfg, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert issubclass(TrainingDivergedError, EntropiError)


def test_an_init_file_with_nan_weights_is_refused(tmp_path):
    import torch

    from entropi.host.checkpoint import CheckpointError
    from entropi.host.init import load_init
    from entropi.host.models import build_encoder

    path = tmp_path / "init.pt"
    torch.save(_smallnet_with_nan().encoder.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"init.pt: 0.weight holds NaN or infinite values"):
        load_init(build_encoder("smallnet"), "smallnet", path)
