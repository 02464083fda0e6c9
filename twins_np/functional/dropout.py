"""Dropout and drop path (stochastic depth), with explicit randomness.

Both take either a ready ``mask`` or a ``numpy.random.Generator``; the mask is drawn
on the host and moved to the array's device, so a seed gives the same mask on the CPU
and the GPU, and a test can hand in the very mask PyTorch drew.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..backend import get_xp, host_uniform
from ._checks import check_dout, check_float, check_same_dtype


class DropoutCache(NamedTuple):
    mask: Any  # scaled keep-mask (0 or 1/keep), broadcastable to x; None = identity


def _check_p(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float, dtype: Any, xp: Any) -> Any:
    """The scaled keep-mask of every dropout kind: 1/(1-p) with probability 1-p, else 0.

    One rule for elementwise dropout (``shape`` = x's), drop path (``(B,)``) and channel
    dropout (``(B, 1, 1, C)``). The uniforms are drawn on the host from ``rng`` and moved
    to ``xp``'s device, so one seed gives the same mask on the CPU and the GPU.

    Args:
        rng: host generator.
        shape: the mask's shape; it broadcasts against the input.
        p: drop probability in [0, 1] (p = 1 drops everything: the mask is all zeros).
        dtype: the input's dtype (the mask never upcasts it).
        xp: numpy or cupy, the input's array module.
    """
    keep = 1.0 - p
    u = host_uniform(rng, tuple(shape), dtype=dtype, xp=xp)
    return (u < keep).astype(dtype) * (1.0 / keep if keep > 0 else 0.0)


def dropout_forward(
    x: Any,
    p: float,
    rng: np.random.Generator | None = None,
    mask: Any | None = None,
    training: bool = True,
) -> tuple[Any, DropoutCache]:
    """Elementwise dropout: zero each entry with probability p, scale the rest by 1/(1-p).

    Args:
        x: array of any shape.
        p: drop probability in [0, 1].
        rng: host generator, used when ``mask`` is None.
        mask: optional ready mask with values in {0, 1/(1-p)}, shape of x.
        training: when False (or p == 0) the op is the identity.

    Returns:
        out: same shape as x; cache for :func:`dropout_backward`.
    """
    _check_p("p", p)
    check_float("x", x)
    check_same_dtype(x=x, mask=mask)
    if not training or (p == 0.0 and mask is None):
        return x, DropoutCache(None)
    xp = get_xp(x=x, mask=mask)
    if mask is None:
        if rng is None:
            raise ValueError("dropout with p > 0 in training needs an rng or a mask")
        mask = dropout_mask(rng, tuple(x.shape), p, x.dtype, xp)
    return x * mask, DropoutCache(mask)


def dropout_backward(dout: Any, cache: DropoutCache) -> Any:
    """The same mask multiplies the gradient: dx = dout * mask."""
    if cache.mask is None:
        return dout
    check_dout(dout, cache.mask)
    return dout * cache.mask


def drop_path_forward(
    x: Any,
    drop_prob: float,
    rng: np.random.Generator | None = None,
    mask: Any | None = None,
    training: bool = True,
) -> tuple[Any, DropoutCache]:
    """Drop path: drop a residual branch for whole samples (timm's ``drop_path``).

    Args:
        x: (B, ...) the output of a residual branch.
        drop_prob: probability that a sample's branch is dropped.
        rng: host generator, used when ``mask`` is None.
        mask: optional (B,) mask with values in {0, 1/keep}.
        training: when False (or drop_prob == 0) the op is the identity.

    Returns:
        out: x with each sample's branch kept (scaled by 1/keep) or zeroed.
    """
    _check_p("drop_prob", drop_prob)
    check_float("x", x)
    check_same_dtype(x=x, mask=mask)
    if not training or (drop_prob == 0.0 and mask is None):
        return x, DropoutCache(None)
    xp = get_xp(x=x, mask=mask)
    B = x.shape[0]
    if mask is None:
        if rng is None:
            raise ValueError("drop path with drop_prob > 0 in training needs an rng or a mask")
        mask = dropout_mask(rng, (B,), drop_prob, x.dtype, xp)
    if mask.shape != (B,):
        raise ValueError(f"drop path mask must have shape (B,) = ({B},), got {tuple(mask.shape)}")
    mask = mask.reshape((B,) + (1,) * (x.ndim - 1))
    return x * mask, DropoutCache(mask)


drop_path_backward = dropout_backward
