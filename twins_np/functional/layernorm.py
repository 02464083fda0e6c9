"""Layer normalisation over the last axis (the channel axis C of (B, N, C) tokens).

    xhat = (x - mean) / sqrt(var + eps),   y = gamma * xhat + beta

twins-np uses eps = 1e-6 in the blocks and the final norm, and eps = 1e-5 in the
patch embedding and the GSA sub-sampling norm, exactly as timm's Twins does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_xp
from ._checks import check_float, check_same_dtype


class LayerNormCache(NamedTuple):
    xhat: Any  # (..., C) normalised input
    inv_std: Any  # (..., 1) 1 / sqrt(var + eps)
    gamma: Any  # (C,)


def layernorm_forward(x: Any, gamma: Any, beta: Any, eps: float = 1e-6) -> tuple[Any, LayerNormCache]:
    """LayerNorm over the last axis.

    Args:
        x: (..., C) input.
        gamma: (C,) scale.  beta: (C,) shift.
        eps: added to the variance (a constant row gives xhat = 0, not NaN).

    Returns:
        y: (..., C); cache for :func:`layernorm_backward`.
    """
    get_xp(x=x, gamma=gamma, beta=beta)
    check_float("x", x)
    check_same_dtype(x=x, gamma=gamma, beta=beta)
    C = x.shape[-1]
    if gamma.shape != (C,) or beta.shape != (C,):
        raise ValueError(f"layernorm: x has C = {C} channels but gamma/beta have shapes {tuple(gamma.shape)}/{tuple(beta.shape)}")
    xp = get_xp(x)
    mean = x.mean(axis=-1, keepdims=True)
    xhat = x - mean
    # biased variance (divide by C), as torch's layer_norm
    var = (xhat * xhat).mean(axis=-1, keepdims=True)
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat *= inv_std
    y = xhat * gamma
    y += beta
    return y, LayerNormCache(xhat, inv_std, gamma)


def layernorm_backward(dout: Any, cache: LayerNormCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`layernorm_forward`.

    Math (per row, C channels, g = dout * gamma):
        dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))
        dgamma = sum_rows dout * xhat,   dbeta = sum_rows dout

    The three terms: the direct path, the path through the mean, and the path through
    the variance (see docs/derivations/layernorm.md).

    Returns:
        dx (..., C), dgamma (C,), dbeta (C,).
    """
    # BEGIN SOLUTION layernorm_backward
    xhat, inv_std, gamma = cache
    C = xhat.shape[-1]
    dgamma = (dout * xhat).reshape(-1, C).sum(axis=0)
    dbeta = dout.reshape(-1, C).sum(axis=0)
    g = dout * gamma
    dx = g - g.mean(axis=-1, keepdims=True)
    dx -= xhat * (g * xhat).mean(axis=-1, keepdims=True)
    dx *= inv_std
    return dx, dgamma, dbeta
    # END SOLUTION
