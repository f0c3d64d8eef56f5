"""TensorFlow Lite Micro and channel pruning: what a microcontroller target costs to build and run.

- one TFLM invoke of smallnet's MCU form (int8, NHWC), the dense network against a channel rung
  at alpha 0.125 (the same file layout, an eighth of the weights): the host's time for TFLM's
  reference kernels, a stand-in for the MCU's relative cost;
- building a three-rung ladder (alpha 1/2, 1/4, 1/8 of smallnet's prunable weights) by channel
  pruning (Torch-Pruning, bisected ratio) against the magnitude ladder's masks: the pruning steps
  alone, without the retraining both ladders share.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tflite_micro")
pytest.importorskip("torch_pruning")
pytest.importorskip("litert_torch")

from entropi.export.mcu import NHWCInput  # noqa: E402
from entropi.export.quantize import tflite_int8_bytes  # noqa: E402
from entropi.export.tflm import open_tflm, tflm_arena_bytes  # noqa: E402
from entropi.host.ladder.channels import channel_prune, prunable_count  # noqa: E402
from entropi.host.ladder.models import build_model  # noqa: E402
from entropi.host.ladder.prune import dense_masks, global_magnitude_masks  # noqa: E402

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
ALPHAS = (0.5, 0.25, 0.125)


def _mcu_int8(model) -> bytes:
    cal = np.random.default_rng(0).standard_normal((8, 32, 32, 3)).astype(np.float32)
    data, _ = tflite_int8_bytes(NHWCInput(model.encoder.eval()), cal, input_shape=(32, 32, 3))
    return data


@pytest.fixture(scope="module")
def files():
    torch.manual_seed(0)
    dense = build_model("smallnet", 10).eval()
    eighth = channel_prune(dense, round(0.125 * prunable_count(dense.encoder)), X)
    return {"dense": _mcu_int8(dense), "channel_0.125": _mcu_int8(eighth)}


@pytest.mark.parametrize("rung", ["dense", "channel_0.125"])
def test_tflm_invoke_smallnet_int8(benchmark, files, rung):
    data = files[rung]
    interp = open_tflm(data, arena_size=tflm_arena_bytes(data))
    x = np.zeros((1, 32, 32, 3), np.int8)

    def invoke():
        interp.set_input(x, 0)
        interp.invoke()
        return interp.get_output(0)

    y = benchmark(invoke)
    assert y.shape == (1, 256)
    benchmark.extra_info.update(file_bytes=len(data), tflm_arena_bytes=tflm_arena_bytes(data))
    if rung != "dense":
        assert len(data) < 0.2 * len(files["dense"])


@pytest.mark.parametrize("method", ["channel", "magnitude"])
def test_build_ladder_smallnet(benchmark, method):
    torch.manual_seed(0)
    dense = build_model("smallnet", 10).eval()
    n = prunable_count(dense.encoder)

    def ladder():
        if method == "channel":
            net, sizes = dense, []
            for a in ALPHAS:
                net = channel_prune(net, round(a * n), X)
                sizes.append(prunable_count(net.encoder))
            return sizes
        masks, sizes = dense_masks(dense.encoder), []
        for a in ALPHAS:
            masks = global_magnitude_masks(dense.encoder, masks, a)
            sizes.append(sum(int(m.sum()) for m in masks.values()))
        return sizes

    sizes = benchmark.pedantic(ladder, rounds=1, iterations=1)
    for a, s in zip(ALPHAS, sizes, strict=True):
        assert abs(s - a * n) <= 0.02 * a * n
