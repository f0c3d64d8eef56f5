"""Softmax regression math, written plainly: the reference for tests, eval and predict.

The training loop (:mod:`.trainer`) computes the same quantities in place in preallocated
buffers; these functions allocate freely and favour clarity.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cross_entropy", "gradients", "logits", "predict_proba"]


def logits(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``x @ weights + bias`` for ``x`` (N, D), ``weights`` (D, C), ``bias`` (C,)."""
    return x @ weights + bias


def predict_proba(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``z`` (max-shifted, so it never overflows)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(z: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy of logits ``z`` against integer ``labels``."""
    shifted = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_norm - shifted[np.arange(len(labels)), labels]))


def gradients(
    x: np.ndarray, labels: np.ndarray, weights: np.ndarray, bias: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy loss and its gradients ``(loss, d_weights, d_bias)``.

    ``d_logits = (softmax(z) - onehot(labels)) / N``; ``d_weights = x.T @ d_logits``;
    ``d_bias = d_logits.sum(0)``.
    """
    z = logits(x, weights, bias)
    loss = cross_entropy(z, labels)
    g = predict_proba(z)
    g[np.arange(len(labels)), labels] -= 1.0
    g /= len(labels)
    return loss, x.T @ g, g.sum(axis=0)
