"""Pre-training regularizers (host/ladder/regularizers.py) against float64 numpy, autograd and hand
values.

Tolerances: float64 paths agree with numpy to 1e-10 (eigensolvers differ only by round-off);
the float32 path to 1e-5 (float32 has ~7 digits, the entropy is O(1)); under bfloat16 autocast
the regularizer is computed in float32 from bfloat16-rounded features (relative error ~4e-3 per
value), so it is compared with the float64 value of the same rounded features at 1e-5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entropi.host.ladder.regularizers import (
    EIG_EPS,
    REGULARIZERS,
    RegularizerError,
    autocorrelation,
    check_regularizer,
    gather_features,
    info_nce_entropy,
    info_nce_loss,
    regularized_loss,
    regularizer_views,
    von_neumann_entropy,
)
from entropi.host.run.config import ConfigError, config_from_dict


def numpy_vne(z: np.ndarray) -> float:
    """S(C_auto) from the d x d autocorrelation, float64 numpy (eq. 4-5 as written)."""
    h = z / np.linalg.norm(z, axis=1, keepdims=True)
    c = h.T @ h / len(h)
    lam = np.linalg.eigvalsh(c)
    lam = lam[lam > 1e-15]
    return float(-(lam * np.log(lam)).sum())


def numpy_nce_loss(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    h1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    h2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    s = h1 @ h2.T / t
    m = s.max(1, keepdims=True)
    log_softmax = s - m - np.log(np.exp(s - m).sum(1, keepdims=True))
    return float(-np.mean(np.diag(log_softmax)))


def repeated_eigen_batch(n_per: int, d: int, k: int, seed: int = 0) -> torch.Tensor:
    """``n_per`` positively scaled copies of each of ``k`` orthonormal directions in R^d: C_auto
    has the eigenvalue 1/k k times (and 0 d - k times)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    rows = q[:, :k].T.repeat(n_per, 1)
    return rows * (0.5 + torch.rand(len(rows), 1, generator=g, dtype=torch.float64))


@pytest.mark.parametrize(("n", "d"), [(7, 16), (40, 5), (8, 8)])
def test_vne_matches_float64_numpy(n, d):
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    s = von_neumann_entropy(z)
    assert s.dtype == torch.float64
    assert abs(float(s) - numpy_vne(z.numpy())) < 1e-10
    s32 = von_neumann_entropy(z.float())
    assert s32.dtype == torch.float32 and abs(float(s32) - numpy_vne(z.numpy())) < 1e-5
    assert 0 <= float(s) <= math.log(min(n, d)) + 1e-12


def test_vne_bounds_by_hand():
    # k orthogonal directions, equally often: C_auto = I_k / k on their span, S = log k
    for k in (1, 2, 5):
        z = repeated_eigen_batch(3, 6, k)
        assert abs(float(von_neumann_entropy(z)) - math.log(k)) < 1e-10
    # one direction repeated (all samples alike): S = 0
    assert abs(float(von_neumann_entropy(torch.ones(4, 3, dtype=torch.float64)))) < 1e-12


def test_autocorrelation_has_trace_one():
    z = torch.randn(9, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 7
    c = autocorrelation(z)
    assert c.shape == (4, 4) and abs(float(torch.trace(c)) - 1) < 1e-12
    assert float(torch.linalg.eigvalsh(c).min()) > -1e-12  # positive semi-definite
    h = z / z.norm(dim=1, keepdim=True)
    torch.testing.assert_close(c, sum(torch.outer(r, r) for r in h) / len(h), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "z",
    [
        pytest.param(lambda: torch.randn(6, 4, dtype=torch.float64), id="random-dxd"),
        pytest.param(lambda: torch.randn(3, 8, dtype=torch.float64), id="random-NxN"),
        # eigenvalue 1/3 three times (N > d: the d x d path; N < d: the N x N path)
        pytest.param(lambda: repeated_eigen_batch(3, 3, 3), id="repeated-dxd"),
        pytest.param(lambda: repeated_eigen_batch(1, 6, 3), id="orthogonal-NxN"),
        # eigenvalues 1/2, 1/2, 0, 0 (rank-deficient batch)
        pytest.param(lambda: repeated_eigen_batch(2, 4, 2), id="repeated+zero-NxN"),
        pytest.param(lambda: repeated_eigen_batch(3, 4, 2), id="repeated+zero-dxd"),
    ],
)
def test_vne_gradient_matches_finite_differences(z):
    torch.manual_seed(0)
    z = z().requires_grad_(True)
    assert torch.autograd.gradcheck(von_neumann_entropy, (z,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_vne_gradient_finite_with_duplicated_rows_and_zero_rows():
    # duplicated rows make the N x N Gram singular (eigenvalue 0, repeated); a zero row is
    # normalized to 0: the gradient must stay finite everywhere
    base = torch.randn(3, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for z in (base.repeat(2, 1), torch.cat([base, torch.zeros(1, 10, dtype=torch.float64)])):
        z = z.clone().requires_grad_(True)
        s = von_neumann_entropy(z)
        (g,) = torch.autograd.grad(s, z)
        assert torch.isfinite(s) and torch.isfinite(g).all()
    # with duplicated rows the exactly-zero eigenvalues have zero gradient: the gradient equals
    # the one of the d x d path, where the same eigenvalues are d - rank zeros
    z = base.repeat(2, 1).requires_grad_(True)
    (g_small,) = torch.autograd.grad(von_neumann_entropy(z), z)
    h = torch.nn.functional.normalize(z, dim=1)
    lam = torch.linalg.eigvalsh(h.T @ h / len(h))
    s_big = -(lam.clamp(min=0) * torch.log(lam.clamp(min=EIG_EPS))).sum()
    (g_big,) = torch.autograd.grad(s_big, z)
    torch.testing.assert_close(g_small, g_big, rtol=0, atol=1e-10)


def test_vne_float32_under_bfloat16_autocast():
    torch.manual_seed(3)
    model = torch.nn.Linear(12, 16)
    x = torch.randn(10, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model(x)
        assert z.dtype == torch.bfloat16
        s = von_neumann_entropy(z)
        loss, reg = regularized_loss(z.float().sum() * 0, z, "vne", 0.5)
    assert s.dtype == torch.float32 and reg.dtype == torch.float32
    assert abs(float(s.detach()) - numpy_vne(z.detach().double().numpy())) < 1e-5
    loss.backward()
    assert torch.isfinite(model.weight.grad).all() and model.weight.grad.abs().sum() > 0


def test_nce_identical_views_by_hand():
    # three orthonormal features, identical views, temperature 0.5: the logits are 2 on the
    # diagonal and 0 elsewhere, so L_NCE = -log(e^2 / (e^2 + 2)) and H_NCE = log 3 - L_NCE
    z = torch.eye(3, dtype=torch.float64) * torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    loss = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert abs(float(info_nce_loss(z, z, 0.5)) - loss) < 1e-12
    assert abs(float(info_nce_entropy(z, z, 0.5)) - (math.log(3) - loss)) < 1e-12
    # random identical views: H_NCE = log N - L_NCE with L_NCE from float64 numpy
    r = torch.randn(8, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = math.log(8) - numpy_nce_loss(r.numpy(), r.numpy(), 0.1)
    assert abs(float(info_nce_entropy(r, r, 0.1)) - expected) < 1e-10
    assert float(info_nce_entropy(r, r, 0.1)) <= math.log(8)


def test_nce_two_views_match_numpy_and_gradcheck():
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    assert (
        abs(float(info_nce_loss(z1, z2, 0.2)) - numpy_nce_loss(z1.numpy(), z2.numpy(), 0.2)) < 1e-10
    )
    args = (z1.requires_grad_(True), z2.requires_grad_(True))
    assert torch.autograd.gradcheck(lambda a, b: info_nce_entropy(a, b, 0.2), args)


def test_regularized_loss_composes_the_terms():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(8, 5, generator=g, dtype=torch.float64)
    ce = torch.tensor(1.5, dtype=torch.float64)
    loss, reg = regularized_loss(ce, z, "none", 0.3)
    assert loss is ce and reg is None
    loss, reg = regularized_loss(ce, z, "vne", 0.3)
    assert abs(float(loss) - (1.5 - 0.3 * numpy_vne(z.numpy()))) < 1e-10
    loss, reg = regularized_loss(ce, z, "nce", 0.3, temperature=0.5)
    h = math.log(4) - numpy_nce_loss(z[:4].numpy(), z[4:].numpy(), 0.5)
    assert abs(float(reg) - h) < 1e-10 and abs(float(loss) - (1.5 - 0.3 * h)) < 1e-10
    with pytest.raises(RegularizerError, match="two views"):
        regularized_loss(ce, z[:7], "nce", 0.3)
    assert regularizer_views("nce") == 2 and regularizer_views("vne") == regularizer_views("none")


def test_gather_features_is_identity_without_process_group():
    z = torch.randn(3, 2)
    assert gather_features(z) is z


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"regularizer": "entropy"}, r"regularizer = 'entropy' is not a known.*none.*vne.*nce"),
        ({"regularizer": "vne", "gamma": -0.1}, r"pretrain\.gamma must be a finite number >= 0"),
        ({"regularizer": "nce", "nce_temperature": 0}, r"pretrain\.nce_temperature .*> 0"),
        ({"regularizer": "nce", "nce_temperature": -1.0}, r"nce_temperature .*got -1\.0"),
        ({"gamma": "big"}, r"pretrain\.gamma must be a finite number"),
    ],
)
def test_bad_settings_raise_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"pretrain": {"arch": "smallnet", **values}})


def test_check_regularizer_direct_and_good_configs():
    for name in REGULARIZERS:
        cfg = config_from_dict({"pretrain": {"arch": "smallnet", "regularizer": name}})
        assert cfg.pretrain.regularizer == name
    with pytest.raises(RegularizerError, match="gamma"):
        check_regularizer("vne", float("nan"), 0.1)
    with pytest.raises(RegularizerError, match="nce_temperature"):
        info_nce_loss(torch.ones(2, 2), torch.ones(2, 2), 0.0)
    with pytest.raises(RegularizerError, match="2-D"):
        von_neumann_entropy(torch.ones(3))


def _ddp_worker(rank: int, world: int, init: str, x: torch.Tensor, out: str) -> None:
    """One rank of the gather test: its half of the batch through a DDP-wrapped linear map."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial weights on every rank
        model = DistributedDataParallel(torch.nn.Linear(x.shape[1], 6, dtype=torch.float64))
        part = x.chunk(world)[rank]
        for name in ("vne", "nce"):
            feats = model(part)  # one forward per backward, as DDP requires
            # nce: rows 0..B-1 and B..2B-1 of each rank's batch are its two views
            z = torch.cat([feats, feats + 0.1 * part[:, :6]]) if name == "nce" else feats
            loss, _ = regularized_loss(torch.zeros((), dtype=torch.float64), z, name, 1.0)
            model.zero_grad()
            loss.backward()
            torch.save(model.module.weight.grad.clone(), f"{out}.{name}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gathers_features_across_ranks(tmp_path):
    """Two gloo ranks, each with half the batch: after DDP's gradient averaging, the gradient of
    -gamma * R(gathered features) equals the one-process gradient on the whole batch."""
    import torch.multiprocessing as mp

    # 7 images: slices of 4 and 3 rows (padded for the collective)
    x = torch.randn(7, 10, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = str(tmp_path / "grad")
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'init'}", x, out), nprocs=2, join=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 6, dtype=torch.float64)
    for name in ("vne", "nce"):
        halves = [model(p) for p in x.chunk(2)]
        if name == "nce":  # the same views, in the global order: all view-1 rows, then view 2
            parts = x.chunk(2)
            v1 = torch.cat(halves)
            v2 = torch.cat([h + 0.1 * p[:, :6] for h, p in zip(halves, parts, strict=True)])
            z = torch.cat([v1, v2])
        else:
            z = torch.cat(halves)
        loss, _ = regularized_loss(torch.zeros((), dtype=torch.float64), z, name, 1.0)
        (expected,) = torch.autograd.grad(loss, model.weight)
        for rank in range(2):
            got = torch.load(f"{out}.{name}.{rank}")
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def _pretrain(regularizer: str, gamma: float):
    """A short seeded pre-training of smallnet on 48 tiny synthetic images (4 classes)."""
    from entropi.host.ladder.models import build_model
    from entropi.host.ladder.train import train

    g = torch.Generator().manual_seed(0)
    y = torch.arange(48) % 4
    x = torch.randint(0, 100, (48, 16, 16, 3), dtype=torch.uint8, generator=g)
    x[torch.arange(48), :, :, y % 3] += 120  # a class-dependent colour: something to learn
    cfg = config_from_dict(
        {
            "pretrain": {
                "arch": "smallnet",
                "epochs": 2,
                "batch_size": 16,
                "lr": 0.05,
                "regularizer": regularizer,
                "gamma": gamma,
            }
        }
    ).pretrain
    torch.manual_seed(0)
    model = build_model("smallnet", 4)
    stats = train(model, x, y, cfg, mean=(0.5,) * 3, std=(0.25,) * 3, seed=0)
    return model, stats


def test_pretraining_with_a_regularizer_end_to_end():
    none, _ = _pretrain("none", 0.1)
    vne, stats = _pretrain("vne", 0.5)
    assert stats.steps == 6 and math.isfinite(stats.final_loss)
    zero, _ = _pretrain("vne", 0.0)  # gamma 0: exactly the cross-entropy run
    nce, _ = _pretrain("nce", 0.5)
    for (name, a), b, c, d in zip(
        none.state_dict().items(),
        vne.state_dict().values(),
        zero.state_dict().values(),
        nce.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, c), name
        assert torch.isfinite(b.float()).all() and torch.isfinite(d.float()).all()
    changed = [
        n for n, a in none.state_dict().items() if a.is_floating_point()
        and not torch.allclose(a, vne.state_dict()[n], rtol=0, atol=1e-6)
    ]  # fmt: skip
    assert "encoder.0.weight" in changed and "head.weight" in changed
    assert not torch.equal(none.encoder[0].weight, nce.encoder[0].weight)
