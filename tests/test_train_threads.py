"""``[pretrain] threads``: a fixed CPU thread count trains the same weights bit for bit whatever
the process's own thread count (OMP_NUM_THREADS), and the unpinned default does not (the reason
the key exists: the quickstart's pick moved with the machine's thread count)."""

import pytest
import torch

from entropi.export.threads import cpu_threads
from entropi.host.ladder.models import build_model
from entropi.host.ladder.train import train
from entropi.host.run.config import ConfigError, PretrainConfig


def _trained(outer_threads: int, threads: int) -> dict[str, torch.Tensor]:
    """A smallnet after 8 SGD steps, trained with torch set to ``outer_threads`` around it."""
    before = torch.get_num_threads()
    torch.set_num_threads(outer_threads)
    try:
        torch.manual_seed(0)
        model = build_model("smallnet", 4)
        gen = torch.Generator().manual_seed(1)
        x = torch.randint(0, 256, (128, 32, 32, 3), dtype=torch.uint8, generator=gen)
        y = torch.randint(0, 4, (128,), generator=gen)
        cfg = PretrainConfig(arch="smallnet", epochs=2, batch_size=32, lr=0.1, threads=threads)
        train(model, x, y, cfg, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        assert torch.get_num_threads() == outer_threads  # restored after training
        return {k: v.clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(before)


def test_a_pinned_thread_count_trains_the_same_weights_at_any_outer_count():
    one, two = _trained(1, threads=2), _trained(2, threads=2)
    for name in one:
        assert torch.equal(one[name], two[name]), name


def test_the_unpinned_default_follows_the_outer_thread_count():
    # the control: without the pin, 1 and 2 threads sum the weight gradients differently (if
    # this ever trains identical weights, the pin above is no longer what makes them equal)
    one, two = _trained(1, threads=0), _trained(2, threads=0)
    assert any(not torch.equal(one[k], two[k]) for k in one)


def test_cpu_threads_restores_the_count_and_leaves_cuda_alone():
    before = torch.get_num_threads()
    with cpu_threads(1, "cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(3, "cuda"), cpu_threads(0, "cpu"):  # neither touches the count
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [-1, 1.5, True, 5000])
def test_bad_thread_counts_are_config_errors(bad):
    with pytest.raises(ConfigError, match="pretrain.threads"):
        PretrainConfig(arch="smallnet", threads=bad)


def test_features_and_accuracy_are_the_same_at_any_forward_batch_size_and_thread_count():
    # forward_batch_size picks 128 on the CPU for speed: it must not move a feature
    from entropi.host.ladder.train import evaluate, extract_features, forward_batch_size

    assert forward_batch_size(torch.device("cpu")) == 128
    torch.manual_seed(0)
    model = build_model("smallnet", 5).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (300, 32, 32, 3), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 5, (300,), generator=gen)
    norm = {"mean": (0.5, 0.4, 0.3), "std": (0.25, 0.2, 0.3)}
    ref = extract_features(model.encoder, x, batch_size=512, **norm)
    acc = evaluate(model, x, y, batch_size=512, **norm)
    for threads in (1, 2):
        with cpu_threads(threads):
            for bs in (None, 64, 7):
                got = extract_features(model.encoder, x, batch_size=bs, **norm)
                assert got.dtype == ref.dtype and (got == ref).all(), (threads, bs)
                assert evaluate(model, x, y, batch_size=bs, **norm) == acc
