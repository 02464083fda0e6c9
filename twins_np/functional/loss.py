"""Softmax cross-entropy with label smoothing (the DeiT/Twins training loss).

With K classes and smoothing eps, the target for label y is (as
``torch.nn.functional.cross_entropy(..., label_smoothing=eps)``)::

    t = (1 - eps) * onehot(y) + eps / K
    loss = mean_b  -sum_k t[b, k] * log softmax(z[b])_k

Soft targets (B, K), e.g. from mixup, are accepted as they are.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_xp
from ._checks import check_float, check_ndim


class CrossEntropyCache(NamedTuple):
    probs: Any  # (B, K) softmax of the logits
    target: Any  # (B, K) the (smoothed) target distribution


def cross_entropy_forward(logits: Any, target: Any, label_smoothing: float = 0.0) -> tuple[float, CrossEntropyCache]:
    """Mean cross-entropy over the batch.

    Args:
        logits: (B, K).
        target: (B,) integer labels in [0, K), or (B, K) probabilities.
        label_smoothing: eps in [0, 1).

    Returns:
        loss: a Python float; cache for :func:`cross_entropy_backward`.
    """
    if not hasattr(target, "shape"):
        raise TypeError(f"target must be an array of labels (B,) or probabilities (B, K), got {type(target).__name__}")
    xp = get_xp(logits=logits, target=target)
    check_float("logits", logits)
    check_ndim("logits", logits, 2, "(B, K)")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    B, K = logits.shape
    if target.ndim == 1:
        if target.shape[0] != B:
            raise ValueError(f"target has {target.shape[0]} labels for a batch of {B}")
        if target.dtype.kind not in "iu":
            raise TypeError(f"integer labels expected for a (B,) target, got {target.dtype}")
        if B and (int(target.min()) < 0 or int(target.max()) >= K):
            raise ValueError(f"labels must be in [0, {K}), got range [{int(target.min())}, {int(target.max())}]")
        t = xp.full((B, K), label_smoothing / K, dtype=logits.dtype)
        t[xp.arange(B), target] += 1.0 - label_smoothing
    else:
        if target.shape != (B, K):
            raise ValueError(f"soft target must have shape {(B, K)}, got {tuple(target.shape)}")
        sums = target.sum(axis=1)
        if not bool(xp.all(xp.abs(sums - 1.0) <= 1e-4)) or bool((target < 0).any()):
            # the backward (probs - t) / B assumes each target row is a distribution
            raise ValueError("soft targets must be non-negative and each row must sum to 1")
        t = target.astype(logits.dtype) * (1.0 - label_smoothing) + label_smoothing / K
    z = logits - logits.max(axis=1, keepdims=True)
    logsumexp = xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    log_probs = z - logsumexp
    loss = float(-(t * log_probs).sum() / B)
    return loss, CrossEntropyCache(xp.exp(log_probs), t)


def cross_entropy_backward(dloss: float, cache: CrossEntropyCache) -> Any:
    """Gradient with respect to the logits.

    Math: since sum_k t_k = 1,  d loss / d z = (softmax(z) - t) / B.

    Returns:
        dlogits: (B, K).
    """
    probs, t = cache
    return (probs - t) * (float(dloss) / probs.shape[0])
