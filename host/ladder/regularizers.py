"""Representation-entropy regularizers for pre-training (seed paper 000, REFERENCE section 2).

Pre-training minimizes ``L = L_CE - gamma * R(Z)`` with ``Z`` (N x d) the batch's penultimate
features (the encoder output, before the head) and ``R`` one of:

- ``vne``, the von Neumann entropy of the features' autocorrelation (paper eqs. 4-5, from VNE,
  Kim et al., CVPR 2023)::

      h_i = z_i / ||z_i||,   C_auto = (1/N) sum_i h_i h_i^T = H^T H / N   (d x d, trace 1, >= 0)
      S(C_auto) = -sum_j lambda_j log lambda_j          (lambda_j the eigenvalues of C_auto)

  ``H^T H / N`` (d x d) and ``H H^T / N`` (N x N) have the same non-zero eigenvalues, so the
  smaller of the two is decomposed: ``O(min(N, d)^3)``. 0 <= S <= log min(N, d).

- ``nce``, the Shannon self-information estimate H_NCE (paper eqs. 1-3): InfoNCE between two
  augmented views ``Z1``, ``Z2`` of the same images, positives the same image::

      s_ij = cos(z1_i, z2_j) / temperature
      L_NCE = -(1/N) sum_i log( exp(s_ii) / sum_j exp(s_ij) )
      H_NCE = log N - L_NCE                            (<= log N; the critic is the cosine)

  The critic ``h`` of eq. 1 is the temperature-scaled cosine of the penultimate features (no
  projection head, so the model that is pruned and exported is unchanged).

Gradients. ``torch.linalg.eigvalsh`` differentiates the eigenvalues only: its backward is
``U diag(dL/dlambda) U^T``, with no ``1 / (lambda_i - lambda_j)`` eigenvector terms, so it is
defined (and basis-independent) when eigenvalues repeat: ``dL/dlambda`` is equal inside a
repeated eigenspace. ``d(-lambda log lambda)/dlambda = -(log lambda + 1)`` is infinite at
``lambda = 0`` (a rank-deficient batch: duplicated rows, N > rank, d > N), so the log reads
``log(max(lambda, eps))`` and negative round-off eigenvalues count as 0: an eigenvalue below
``eps`` contributes at most ``eps * log(1/eps)`` (3e-7 nats at the default 1e-8) and a finite
gradient ``-log(eps)`` (the gradient of an exactly-zero eigenvalue of a rank-deficient Gram
matrix is 0 anyway: ``dlambda = u^T dG u`` with ``u`` in the null space). Rows with ``||z|| = 0``
are normalized with ``F.normalize``'s ``eps`` (they become 0 and add nothing to the trace).

Precision. Both are computed in float32 (float64 when given float64, as the tests do) with
autocast off: under bfloat16 autocast the features are cast up first, since eigenvalues and
log-sum-exp of a bfloat16 Gram matrix lose most of their digits.

Data parallelism. :func:`gather_features` concatenates every rank's features with
``torch.distributed.nn.functional.all_gather``, whose backward sums the gradients of each rank's
copy back to its owner; every rank then computes the same ``R`` of the global batch, and after
DistributedDataParallel averages the gradients over the W ranks the update is exactly the
single-process one on the global batch (each rank's ``-gamma dR/dZ_r`` arrives W times, divided
by W). The ranks' slices may differ in size by a row (``distributed.shard`` splits B images
over W ranks): each rank's features are padded to the largest slice for the collective and the
padding is dropped again. The gathered rows are in rank order; with two views each view is
gathered on its own, so row i of view 1 and row i of view 2 stay the same image. Without an
initialized process group (or with one rank) it returns the features as they are.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
from torch.nn import functional as F

from ..errors import ConfigError

__all__ = [
    "EIG_EPS",
    "REGULARIZERS",
    "RegularizerError",
    "autocorrelation",
    "check_regularizer",
    "gather_features",
    "info_nce_entropy",
    "info_nce_loss",
    "regularized_loss",
    "regularizer_views",
    "von_neumann_entropy",
]

REGULARIZERS = {
    "none": "cross-entropy only",
    "vne": "L_CE - gamma * S(C_auto), the von Neumann entropy of the normalized features",
    "nce": "L_CE - gamma * H_NCE, InfoNCE self-information between two augmented views",
}
"""The pre-training regularizers by name (``[pretrain] regularizer``)."""

EIG_EPS = 1e-8
"""Eigenvalues below this read ``log(EIG_EPS)`` in ``-lambda log lambda`` (finite gradient)."""


class RegularizerError(ConfigError):
    """A regularizer name or setting is invalid."""


def check_regularizer(name: str, gamma: float, temperature: float, *, prefix: str = "") -> None:
    """Raise :class:`RegularizerError` unless ``name`` is a key of :data:`REGULARIZERS`,
    ``gamma`` a finite number >= 0 and ``temperature`` a finite number > 0. ``prefix`` is put
    before each setting's name in the message (``"pretrain."``)."""
    if name not in REGULARIZERS:
        raise RegularizerError(
            f"{prefix}regularizer = {name!r} is not a known regularizer; known: "
            + ", ".join(f"{k} ({v})" for k, v in REGULARIZERS.items())
        )
    for key, value, ok, what in (
        ("gamma", gamma, lambda v: v >= 0, ">= 0 (0 = cross-entropy only)"),
        ("nce_temperature", temperature, lambda v: v > 0, "> 0 (e.g. 0.1)"),
    ):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not ok(value):
            raise RegularizerError(f"{prefix}{key} must be a finite number {what}, got {value!r}")


def _work_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _check_features(z: torch.Tensor, what: str = "features") -> None:
    if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise RegularizerError(
            f"{what} must be a non-empty 2-D tensor [N, d], got "
            f"{type(z).__name__} {tuple(getattr(z, 'shape', ()))}"
        )


def autocorrelation(z: torch.Tensor) -> torch.Tensor:
    """``C_auto = H^T H / N`` (d x d) of the L2-normalized rows ``H`` of ``z`` (eq. 4)."""
    _check_features(z)
    with torch.autocast(z.device.type, enabled=False):
        h = F.normalize(z.to(_work_dtype(z)), dim=1)
        return h.T @ h / h.shape[0]


def _spectrum(z: torch.Tensor) -> torch.Tensor:
    """The eigenvalues of ``C_auto``, from the smaller Gram matrix (the other one's extra
    eigenvalues are zeros, which add nothing to the entropy)."""
    h = F.normalize(z.to(_work_dtype(z)), dim=1)
    n, d = h.shape
    gram = (h @ h.T if n <= d else h.T @ h) / n
    try:
        return torch.linalg.eigvalsh(gram)
    except torch.linalg.LinAlgError:  # a float32 solver that did not converge: once in float64
        return torch.linalg.eigvalsh(gram.double()).to(gram.dtype)


def von_neumann_entropy(z: torch.Tensor, *, eps: float = EIG_EPS) -> torch.Tensor:
    """``S(C_auto)`` (nats, 0-d tensor) of the features ``z`` (N x d); see the module docstring
    for the formula, the Gram matrix used, the gradient and the precision."""
    _check_features(z)
    with torch.autocast(z.device.type, enabled=False):
        lam = _spectrum(z)
        return -(lam.clamp(min=0) * torch.log(lam.clamp(min=eps))).sum()


def info_nce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """``L_NCE`` (eq. 1) of views ``z1``, ``z2`` (N x d each, row i of both = sample i):
    cross-entropy of the cosine-similarity logits ``s_ij / temperature`` with target ``j = i``."""
    _check_features(z1, "z1")
    _check_features(z2, "z2")
    if z1.shape != z2.shape:
        raise RegularizerError(
            f"the two views must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    check_regularizer("nce", 0.0, temperature)
    with torch.autocast(z1.device.type, enabled=False):
        dtype = _work_dtype(z1)
        h1 = F.normalize(z1.to(dtype), dim=1)
        h2 = F.normalize(z2.to(dtype), dim=1)
        logits = h1 @ h2.T / temperature
        target = torch.arange(len(h1), device=h1.device)
        return F.cross_entropy(logits, target)


def info_nce_entropy(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """``H_NCE = log N - L_NCE`` (eq. 3, nats) of the two views (see :func:`info_nce_loss`)."""
    return math.log(len(z1)) - info_nce_loss(z1, z2, temperature)


def regularizer_views(name: str) -> int:
    """Augmented views of each image a training batch needs: 2 for ``nce``, else 1."""
    check_regularizer(name, 0.0, 1.0)
    return 2 if name == "nce" else 1


def gather_features(z: torch.Tensor) -> torch.Tensor:
    """Every rank's ``z`` concatenated in rank order (differentiable; see the module docstring),
    or ``z`` itself outside a multi-process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    # lazy: only under torchrun (torch builds without distributed support lack this module)
    from torch.distributed.nn.functional import all_gather

    # the ranks' slices may differ by a row (distributed.shard): gather padded to the largest
    size = torch.tensor([len(z)], device=z.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    pad = max(counts) - len(z)
    padded = torch.cat([z, z.new_zeros(pad, *z.shape[1:])]) if pad else z
    with warnings.catch_warnings():
        # deprecated for _functional_collectives.all_gather_single, whose backward needs a
        # reduce-scatter that gloo (CPU) lacks; this one's backward works on every backend
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)], dim=0)


def regularized_loss(
    ce: torch.Tensor,
    features: torch.Tensor,
    name: str,
    gamma: float,
    *,
    temperature: float = 0.1,
    gather: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(L_CE - gamma * R, R)`` for the regularizer ``name`` (``(ce, None)`` for ``none``).

    ``features`` are the batch's penultimate features; for ``nce`` they hold two views,
    view-major (rows ``0..B-1`` view 1, ``B..2B-1`` view 2 of the same images, as
    ``iterate_batches(..., views=2)`` yields them). ``gather``: compute ``R`` over the
    features of every rank (:func:`gather_features`). ``R`` is computed in float32 (see the
    module docstring); the result has ``ce``'s dtype promoted with it.
    """
    check_regularizer(name, gamma, temperature)
    if name == "none":
        return ce, None
    z = features.float() if features.dtype != torch.float64 else features
    if name == "vne":
        if gather:
            z = gather_features(z)
        reg = von_neumann_entropy(z)
    else:
        if len(z) % 2:
            raise RegularizerError(
                f"nce needs two views of each image (an even number of rows), got {len(z)} rows"
            )
        z1, z2 = z.chunk(2)
        if gather:
            z1, z2 = gather_features(z1), gather_features(z2)
        reg = info_nce_entropy(z1, z2, temperature)
    return ce.float() - gamma * reg, reg.detach()
