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


class PixelCrossEntropyCache(NamedTuple):
    probs: Any  # (B, K, H, W) softmax over K
    labels: Any  # (B, 1, H, W) int64 labels, 0 where ignored (any class; masked by `valid`)
    valid: Any  # (B, 1, H, W) 1.0 where the pixel counts, 0.0 where it is ignore_index
    n_valid: int  # number of counted pixels (the mean's denominator)
    label_smoothing: float


def pixel_cross_entropy_forward(
    logits: Any, target: Any, label_smoothing: float = 0.0, ignore_index: int = 255
) -> tuple[float, PixelCrossEntropyCache]:
    """Per-pixel cross-entropy, the mean over the pixels whose label is not ``ignore_index``.

    Equal to ``torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index,
    label_smoothing=label_smoothing, reduction="mean")``. With n the number of counted
    pixels and t = (1 - eps) onehot(y) + eps / K at each counted pixel::

        loss = -(1 / n) sum_{counted pixels} sum_k t_k log softmax(z)_k

    Ignored pixels contribute nothing, neither to the label term nor to the smoothing term.

    Args:
        logits: (B, K, H, W) float, NCHW as torch's.
        target: (B, H, W) integer labels in [0, K), or ``ignore_index``; on the same
            device as the logits.
        label_smoothing: eps in [0, 1) (third, as in :func:`cross_entropy_forward`).
        ignore_index: the label of pixels that do not count (255, mmsegmentation's
            "unlabelled", by default).

    Returns:
        loss: a Python float; cache for :func:`pixel_cross_entropy_backward`.

    Raises:
        ValueError: a label outside [0, K) that is not ``ignore_index``; shapes that do not
            match; or every pixel ignored. torch returns nan for the last case (0 / 0); a nan
            loss would silently poison every weight at the next step, so twins-np refuses it
            with a message instead.
        TypeError: non-integer labels, or target and logits on different devices.
    """
    if not hasattr(target, "shape"):
        raise TypeError(f"target must be an array of integer labels (B, H, W), got {type(target).__name__}")
    xp = get_xp(logits=logits, target=target)
    check_float("logits", logits)
    check_ndim("logits", logits, 4, "(B, K, H, W)")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    B, K, H, W = logits.shape
    if tuple(target.shape) != (B, H, W):
        raise ValueError(
            f"target must have shape (B, H, W) = {(B, H, W)} for logits {tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.dtype.kind not in "iu":
        raise TypeError(f"integer labels expected for target, got {target.dtype}")
    valid_b = target != ignore_index
    n_valid = int(valid_b.sum())
    if n_valid and bool((valid_b & ((target < 0) | (target >= K))).any()):
        bad = target[valid_b & ((target < 0) | (target >= K))]
        raise ValueError(
            f"labels must be in [0, {K}) or equal ignore_index = {ignore_index}; "
            f"got {int(bad.size)} pixels with labels in [{int(bad.min())}, {int(bad.max())}]"
        )
    if n_valid == 0:
        raise ValueError(
            f"every pixel of target is ignore_index = {ignore_index}: the mean over zero pixels is undefined "
            "(torch returns nan); skip this batch or check the labels"
        )
    labels = xp.where(valid_b, target, 0).astype(xp.int64)[:, None]
    valid = valid_b.astype(logits.dtype)[:, None]
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    # the two terms of -sum_k t_k log p_k, over counted pixels only
    nll = -(xp.take_along_axis(log_probs, labels, axis=1) * valid).sum()
    smooth = -(log_probs.sum(axis=1, keepdims=True) * valid).sum()
    loss = float(((1.0 - label_smoothing) * nll + (label_smoothing / K) * smooth) / n_valid)
    return loss, PixelCrossEntropyCache(xp.exp(log_probs), labels, valid, n_valid, float(label_smoothing))


def pixel_cross_entropy_backward(dloss: float, cache: PixelCrossEntropyCache) -> Any:
    """Gradient with respect to the logits.

    Math: at a counted pixel, as for :func:`cross_entropy_backward`, d loss / d z = (p - t) / n
    because sum_k t_k = 1; at an ignored pixel the loss does not depend on z, so 0::

        dz = dloss * valid * (softmax(z) - (1 - eps) onehot(y) - eps / K) / n

    Returns:
        dlogits: (B, K, H, W).
    """
    probs, labels, valid, n, eps = cache
    xp = get_xp(probs)
    K = probs.shape[1]
    scale = float(dloss) / n
    onehot = (xp.arange(K)[None, :, None, None] == labels).astype(probs.dtype)
    dz = probs - (eps / K)
    dz -= onehot * (1.0 - eps)
    dz *= valid * scale
    return dz
