"""Centered kernel alignment (CKA) between layer representations, full and in minibatches.

X (n x p) and Y (n x q) are two representations of the same n inputs (a layer's output,
flattened). With Gram matrices K = k(X, X), L = k(Y, Y) and H = I - (1/n) 1 1^T
(Kornblith et al., ICML 2019; paper 003 uses it, REFERENCE.md sec. 4):

    HSIC_0(K, L) = tr(K H L H) / (n - 1)^2                 (biased)
    CKA(K, L)    = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

For the linear kernel k(x, y) = x^T y this is ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F
||Y_c^T Y_c||_F) on column-centred X_c, Y_c; the RBF kernel is k(x, y) = exp(-||x - y||^2 /
(2 sigma^2)) with sigma = ``rbf_sigma`` x the median pairwise distance (Kornblith et al.'s
choice; per minibatch in the minibatch form). Both are invariant to orthogonal transforms and
isotropic scaling of X or Y.

Minibatch form (Nguyen, Raghu & Kornblith, ICLR 2021, eq. 3): over k minibatches of size m,

    CKA_mb = sum_i HSIC_1(K_i, L_i) / sqrt(sum_i HSIC_1(K_i, K_i) sum_i HSIC_1(L_i, L_i))

with the unbiased estimator of Song et al. (JMLR 2012), K~ = K with its diagonal set to 0:

    HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((m - 1)(m - 2))
                    - 2 / (m - 2) 1^T K~ L~ 1] / (m (m - 3))

so memory is m x m per layer pair whatever n is: only the m x m Gram of each layer's minibatch is
kept (a ResNet18's 10,000 images fit in a few hundred MB at m = 256). Its expectation does not
depend on m, so it estimates the same quantity as the full-data debiased CKA (``debiased=True``
below); ``tests/test_cka.py`` states how close on test data. Grams are computed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from entropi.common.files import atomic_write

from ..data import normalize
from ..errors import ConfigError
from .finetune import layer_representations

__all__ = [
    "KERNELS",
    "CKAError",
    "MinibatchCKA",
    "cka",
    "compare_models",
    "diagonal",
    "gram",
    "hsic_biased",
    "hsic_unbiased",
    "linear_cka",
    "plot_cka",
]

KERNELS = ("linear", "rbf")
DEFAULT_RBF_SIGMA = 0.5
"""RBF bandwidth as a fraction of the median pairwise distance (Kornblith et al. 2019 use 0.2-
0.8; 0.5 is the middle)."""


class CKAError(ConfigError):
    """Representations, a kernel name or a batch size unusable for CKA."""


def _as64(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim < 2:
        raise CKAError(
            f"a representation must be n x features (or n x ...), got shape {tuple(t.shape)}"
        )
    t = t.reshape(t.shape[0], -1).to(torch.float64)
    if not torch.isfinite(t).all():
        raise CKAError("a representation contains NaN/inf")
    return t


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise CKAError(f"unknown CKA kernel {kernel!r}; kernels: {', '.join(KERNELS)}")


def gram(x, kernel: str = "linear", rbf_sigma: float = DEFAULT_RBF_SIGMA) -> torch.Tensor:
    """The n x n Gram matrix (float64) of the rows of ``x`` under ``kernel``."""
    _check_kernel(kernel)
    x = _as64(x)
    g = x @ x.T
    if kernel == "linear":
        return g
    d = g.diagonal()
    sq = (d[:, None] + d[None, :] - 2.0 * g).clamp_min(0.0)
    n = len(x)
    iu = torch.triu_indices(n, n, 1, device=sq.device)
    pairs = sq[iu[0], iu[1]].sqrt().cpu().numpy()
    median = float(np.median(pairs)) if pairs.size else 0.0  # numpy's (mean of the middle two)
    if median == 0.0:
        raise CKAError("rbf CKA: every pair of samples is at distance 0 (constant features)")
    return torch.exp(-sq / (2.0 * (rbf_sigma * median) ** 2))


def _center(k: torch.Tensor) -> torch.Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic_biased(k: torch.Tensor, lmat: torch.Tensor) -> float:
    """tr(K H L H) / (n - 1)^2."""
    n = k.shape[0]
    return float((_center(k) * _center(lmat)).sum()) / (n - 1) ** 2


def hsic_unbiased(k: torch.Tensor, lmat: torch.Tensor) -> float:
    """Song et al. (2012)'s unbiased HSIC estimator (needs n >= 4)."""
    n = k.shape[0]
    if n < 4:
        raise CKAError(f"the unbiased HSIC needs at least 4 samples per batch, got {n}")
    kt = k.clone()
    kt.fill_diagonal_(0.0)
    lt = lmat.clone()
    lt.fill_diagonal_(0.0)
    term1 = float((kt * lt).sum())  # tr(K~ L~), both symmetric
    term2 = float(kt.sum()) * float(lt.sum()) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * float(kt.sum(0) @ lt.sum(1))
    return (term1 + term2 - term3) / (n * (n - 3))


def _ratio(kl: float, kk: float, ll: float) -> float:
    if kk <= 0.0 or ll <= 0.0:
        raise CKAError(
            "CKA is undefined: a representation has zero (estimated) variance (constant features?)"
        )
    return kl / float(np.sqrt(kk * ll))


def cka(
    x,
    y,
    kernel: str = "linear",
    *,
    debiased: bool = False,
    rbf_sigma: float = DEFAULT_RBF_SIGMA,
) -> float:
    """CKA of two representations of the same n samples on all of them at once (n x n Grams)."""
    k, lmat = gram(x, kernel, rbf_sigma), gram(y, kernel, rbf_sigma)
    if k.shape[0] != lmat.shape[0]:
        raise CKAError(f"X and Y must have the same samples, got {k.shape[0]} and {lmat.shape[0]}")
    h = hsic_unbiased if debiased else hsic_biased
    return _ratio(h(k, lmat), h(k, k), h(lmat, lmat))


def linear_cka(x, y) -> float:
    """Linear CKA from feature-space products (no n x n matrix; for large n, few features)."""
    x, y = _as64(x), _as64(y)
    if len(x) != len(y):
        raise CKAError(f"X and Y must have the same samples, got {len(x)} and {len(y)}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    return _ratio(
        float((y.T @ x).square().sum()),
        float((x.T @ x).square().sum()),
        float((y.T @ y).square().sum()),
    )


class MinibatchCKA:
    """Accumulates the minibatch CKA (Nguyen et al. 2021) of every layer of A vs every layer of B.

    Call :meth:`update` with the layer outputs of both models on the same minibatch (each batch
    of at least 4 samples), then :meth:`result` for the ``len(A) x len(B)`` matrix.
    """

    def __init__(
        self,
        n_a: int,
        n_b: int,
        kernel: str = "linear",
        rbf_sigma: float = DEFAULT_RBF_SIGMA,
    ) -> None:
        _check_kernel(kernel)
        self.kernel, self.rbf_sigma = kernel, rbf_sigma
        self.kl = np.zeros((n_a, n_b))
        self.kk = np.zeros(n_a)
        self.ll = np.zeros(n_b)
        self.batches = 0
        self.samples = 0

    def update(self, reps_a: Sequence, reps_b: Sequence) -> None:
        if len(reps_a) != len(self.kk) or len(reps_b) != len(self.ll):
            raise CKAError(
                f"expected {len(self.kk)} and {len(self.ll)} layers, got {len(reps_a)} and "
                f"{len(reps_b)}"
            )
        ka = [gram(r, self.kernel, self.rbf_sigma) for r in reps_a]
        lb = [gram(r, self.kernel, self.rbf_sigma) for r in reps_b]
        m = {k.shape[0] for k in ka + lb}
        if len(m) != 1:
            raise CKAError(f"every layer must see the same minibatch, got sizes {sorted(m)}")
        for i, k in enumerate(ka):
            self.kk[i] += hsic_unbiased(k, k)
            for j, lmat in enumerate(lb):
                self.kl[i, j] += hsic_unbiased(k, lmat)
        for j, lmat in enumerate(lb):
            self.ll[j] += hsic_unbiased(lmat, lmat)
        self.batches += 1
        self.samples += m.pop()

    def result(self) -> np.ndarray:
        if not self.batches:
            raise CKAError("no minibatch was added")
        out = np.empty_like(self.kl)
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] = _ratio(self.kl[i, j], self.kk[i], self.ll[j])
        return out


@torch.no_grad()
def compare_models(
    model_a,
    model_b,
    images: np.ndarray,
    *,
    norm_a: dict,
    norm_b: dict,
    kernels: Sequence[str] = KERNELS,
    batch_size: int = 256,
    rbf_sigma: float = DEFAULT_RBF_SIGMA,
    device: str | torch.device = "cpu",
) -> dict:
    """Minibatch CKA of every layer of ``model_a`` vs every layer of ``model_b``
    (:class:`~.finetune.FinetuneModel`; layers from :func:`~.finetune.layer_representations`)
    on the same uint8 NHWC ``images``, each model with its own input normalization.

    Returns ``{"layers_a", "layers_b", "n", "batch_size", "cka": {kernel: matrix}}``; a last
    minibatch of fewer than 4 images is left out (the unbiased HSIC needs 4)."""

    for k in kernels:
        _check_kernel(k)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 4:
        raise CKAError(f"the CKA batch size must be an integer >= 4, got {batch_size!r}")
    if len(images) < 4:
        raise CKAError(f"CKA needs at least 4 images, got {len(images)}")
    device = torch.device(device)
    model_a, model_b = model_a.to(device).eval(), model_b.to(device).eval()
    x = torch.as_tensor(np.ascontiguousarray(images)).to(device)
    acc: dict[str, MinibatchCKA] = {}
    names_a = names_b = None
    used = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        if len(xb) < 4:
            break
        ra = layer_representations(model_a, normalize(xb, norm_a["mean"], norm_a["std"]))
        rb = layer_representations(model_b, normalize(xb, norm_b["mean"], norm_b["std"]))
        if names_a is None:
            names_a, names_b = list(ra), list(rb)
            acc = {k: MinibatchCKA(len(ra), len(rb), k, rbf_sigma) for k in kernels}
        for mb in acc.values():
            mb.update(list(ra.values()), list(rb.values()))
        used += len(xb)
    return {
        "layers_a": names_a,
        "layers_b": names_b,
        "n": used,
        "batch_size": batch_size,
        "rbf_sigma": rbf_sigma,
        "estimator": "minibatch CKA (Nguyen et al. 2021), unbiased HSIC (Song et al. 2012)",
        "cka": {k: mb.result().tolist() for k, mb in acc.items()},
    }


def diagonal(result: dict, kernel: str = "linear") -> dict[str, float]:
    """CKA of each layer with the same-named layer of the other model."""
    m = result["cka"][kernel]
    return {
        name: m[i][result["layers_b"].index(name)]
        for i, name in enumerate(result["layers_a"])
        if name in result["layers_b"]
    }


def plot_cka(result: dict, path, *, title: str = "") -> None:
    """One heatmap per kernel (layers of A down, layers of B across), values written in."""
    # lazy: matplotlib loads only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib loads only when a plot is drawn
    import matplotlib.pyplot as plt

    kernels = list(result["cka"])
    la, lb = result["layers_a"], result["layers_b"]
    size = max(4.0, 0.55 * max(len(la), len(lb)) + 2)
    fig, axes = plt.subplots(1, len(kernels), figsize=(size * len(kernels), size), squeeze=False)
    for ax, k in zip(axes[0], kernels, strict=True):
        m = np.asarray(result["cka"][k])
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(lb)), lb, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(la)), la, fontsize=7)
        if m.size <= 400:
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="w" if m[i, j] < 0.6 else "k",
                    )
        ax.set_title(f"{k} CKA (n = {result['n']})", fontsize=9)
        ax.set_xlabel(result.get("label_b", "B"), fontsize=8)
        ax.set_ylabel(result.get("label_a", "A"), fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
