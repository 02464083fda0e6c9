"""Normalisations for dense heads: GroupNorm and BatchNorm, on channels-last maps.

Notation: x (B, H, W, C) channels-last (GroupNorm takes any (B, ..., C)); G groups of
C/G consecutive channels; eps added to the variance.

Both are LayerNorm's computation over other axes: with the mean mu and the *biased*
variance var over a set S of n entries,

    xhat = (x - mu) / sqrt(var + eps),   out = gamma * xhat + beta   (gamma, beta per channel)

- GroupNorm (Wu & He 2018): S = one image's H*W*(C/G) values of one group. Same in
  training and evaluation; it does not depend on the batch (the usual choice at small
  batches).
- BatchNorm (Ioffe & Szegedy 2015), training: S = one channel's B*H*W values, and the
  running statistics are updated in place as PyTorch does, with the *unbiased* variance:
  ``running_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)``.
  Evaluation: mu and var are the running statistics, so the layer is a fixed per-channel
  affine map.

The backward of a normalisation over S is LayerNorm's three-term formula (see
docs/derivations/norm2d.md); in evaluation BatchNorm's is one product.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_xp
from ._checks import check_dout, check_float, check_ndim, check_same_dtype


def _check_affine(op: str, C: int, gamma: Any, beta: Any) -> None:
    for name, a in (("gamma", gamma), ("beta", beta)):
        if a is not None and tuple(a.shape) != (C,):
            raise ValueError(f"{op}: '{name}' must have shape ({C},) for C = {C} channels, got {tuple(a.shape)}")


def _affine(xhat: Any, gamma: Any | None, beta: Any | None) -> Any:
    out = xhat * gamma if gamma is not None else xhat.copy()
    if beta is not None:
        out += beta
    return out


def _normalized_backward(dxhat: Any, xhat: Any, inv_std: Any, axes: tuple[int, ...]) -> Any:
    """dx of xhat = (x - mean_S x) * inv_std, with the mean and variance over ``axes`` (the set S).

    dx = inv_std * (dxhat - mean_S(dxhat) - xhat * mean_S(dxhat * xhat)): the two means
    are the gradient flowing through mu and through var.
    """
    # BEGIN SOLUTION group_norm_backward
    m1 = dxhat.mean(axis=axes, keepdims=True)
    m2 = (dxhat * xhat).mean(axis=axes, keepdims=True)
    dx = dxhat - m1
    dx -= xhat * m2
    dx *= inv_std
    return dx
    # END SOLUTION


def _param_grads(dout: Any, xhat: Any, C: int) -> tuple[Any, Any]:
    """(dgamma, dbeta): sums over every axis but the channel axis."""
    # BEGIN SOLUTION group_norm_backward
    d2 = dout.reshape(-1, C)
    dgamma = (d2 * xhat.reshape(-1, C)).sum(axis=0)
    dbeta = d2.sum(axis=0)
    return dgamma, dbeta
    # END SOLUTION


# --- GroupNorm ---------------------------------------------------------------------------


class GroupNormCache(NamedTuple):
    xhat: Any  # (B, ..., C) the normalised input
    inv_std: Any  # (B, 1, G, 1) 1 / sqrt(var + eps) per image and group
    gamma: Any  # (C,) or None
    num_groups: int


def group_norm_forward(
    x: Any, gamma: Any | None, beta: Any | None, num_groups: int, eps: float = 1e-5
) -> tuple[Any, GroupNormCache]:
    """GroupNorm over channels-last maps, as ``torch.nn.functional.group_norm`` on NCHW.

    Args:
        x: (B, H, W, C), or any (B, ..., C) with at least 2 axes.
        gamma: (C,) or None (no scale).
        beta: (C,) or None (no shift).
        num_groups: G, dividing C; group g holds channels g*C/G ... (g+1)*C/G - 1.
        eps: added to the variance.

    Returns:
        out: same shape and dtype as x; cache for :func:`group_norm_backward`.
    """
    xp = get_xp(x=x, gamma=gamma, beta=beta)
    check_float("x", x)
    check_same_dtype(x=x, gamma=gamma, beta=beta)
    if x.ndim < 2:
        raise ValueError(f"group_norm: 'x' must have shape (B, ..., C) (at least 2-D), got shape {tuple(x.shape)}")
    B, C = x.shape[0], x.shape[-1]
    if isinstance(num_groups, bool) or int(num_groups) != num_groups or num_groups < 1:
        raise ValueError(f"group_norm: num_groups must be a positive integer, got {num_groups!r}")
    G = int(num_groups)
    if C % G:
        raise ValueError(f"group_norm: num_groups = {G} does not divide the C = {C} channels of x (shape {tuple(x.shape)})")
    _check_affine("group_norm", C, gamma, beta)
    eps = float(eps)
    xg = xp.ascontiguousarray(x).reshape(B, -1, G, C // G)
    mu = xg.mean(axis=(1, 3), keepdims=True)
    xc = xg - mu
    var = (xc * xc).mean(axis=(1, 3), keepdims=True)
    inv_std = 1.0 / xp.sqrt(var + eps)
    xc *= inv_std  # now xhat, grouped
    xhat = xc.reshape(x.shape)
    return _affine(xhat, gamma, beta), GroupNormCache(xhat, inv_std, gamma, G)


def group_norm_backward(dout: Any, cache: GroupNormCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`group_norm_forward`.

    Math (S = one image's group, n = H*W*C/G entries):
        dbeta = sum_{b, h, w} dout,   dgamma = sum_{b, h, w} dout * xhat,
        dxhat = dout * gamma,
        dx = inv_std * (dxhat - mean_S dxhat - xhat * mean_S(dxhat * xhat)).

    Returns:
        dx (same shape as x), dgamma (C,), dbeta (C,): the last two are returned even when
        the forward had no gamma / beta (a module without affine parameters drops them).
    """
    xhat, inv_std, gamma, G = cache
    check_dout(dout, xhat)
    if tuple(dout.shape) != tuple(xhat.shape):
        raise ValueError(f"group_norm_backward: dout must have the forward's shape {tuple(xhat.shape)}, got {tuple(dout.shape)}")
    B, C = xhat.shape[0], xhat.shape[-1]
    # BEGIN SOLUTION group_norm_backward
    dgamma, dbeta = _param_grads(dout, xhat, C)
    dxhat = dout * gamma if gamma is not None else dout
    grouped = (B, -1, G, C // G)  # S = axes 1 and 3 of this view: one image's group
    dx = _normalized_backward(dxhat.reshape(grouped), xhat.reshape(grouped), inv_std, (1, 3)).reshape(xhat.shape)
    return dx, dgamma, dbeta
    # END SOLUTION


# --- BatchNorm ---------------------------------------------------------------------------


class BatchNormCache(NamedTuple):
    xhat: Any  # (B, H, W, C) the normalised input
    inv_std: Any  # (C,) 1 / sqrt(var + eps), of the batch (training) or the running variance
    gamma: Any  # (C,) or None
    batch_stats: bool  # True: mu and var came from this batch, so they depend on x


def batch_norm_forward(
    x: Any,
    gamma: Any | None,
    beta: Any | None,
    running_mean: Any | None,
    running_var: Any | None,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Any, BatchNormCache]:
    """BatchNorm over channels-last maps, as ``torch.nn.functional.batch_norm`` on NCHW.

    Training (or no running statistics given): normalise with this batch's mean and biased
    variance per channel, and update ``running_mean`` / ``running_var`` **in place** (when
    given) with ``momentum`` and the unbiased variance, as PyTorch does. Evaluation:
    normalise with the running statistics, which are not changed.

    Args:
        x: (B, H, W, C).
        gamma, beta: (C,) or None.
        running_mean, running_var: (C,) arrays of x's dtype and device, or None (both).
        training: use batch statistics (and update the running ones).
        momentum: weight of the new batch in the running averages.
        eps: added to the variance.

    Returns:
        out: (B, H, W, C); cache for :func:`batch_norm_backward`.

    Raises:
        ValueError: training with a single value per channel (B*H*W == 1: the variance is
            undefined, as PyTorch says), evaluation without running statistics, bad shapes.
    """
    xp = get_xp(x=x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    check_float("x", x)
    check_ndim("x", x, 4, "(B, H, W, C)")
    check_same_dtype(x=x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    C = x.shape[-1]
    _check_affine("batch_norm", C, gamma, beta)
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        if a is not None and tuple(a.shape) != (C,):
            raise ValueError(f"batch_norm: '{name}' must have shape ({C},) for C = {C} channels, got {tuple(a.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    momentum, eps = float(momentum), float(eps)  # Python floats: a NumPy float64 would upcast float32
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm: momentum must be in [0, 1], got {momentum}")
    x2 = xp.ascontiguousarray(x).reshape(-1, C)
    n = x2.shape[0]
    batch_stats = bool(training) or running_mean is None
    if batch_stats:
        if n <= 1:
            raise ValueError(
                f"batch_norm: training needs more than one value per channel, got x of shape {tuple(x.shape)} "
                "(B*H*W = 1); use a larger batch or map, or evaluation mode"
            )
        mu = x2.mean(axis=0)
        xc = x2 - mu
        var = (xc * xc).mean(axis=0)
        if running_mean is not None and running_var is not None and training:
            # in place, as torch: the caller (the module) owns these arrays
            running_mean *= 1.0 - momentum
            running_mean += momentum * mu
            running_var *= 1.0 - momentum
            running_var += (momentum * n / (n - 1)) * var  # the unbiased variance
    else:
        xc = x2 - running_mean
        var = running_var
    inv_std = 1.0 / xp.sqrt(var + eps)
    xc *= inv_std  # now xhat
    xhat = xc.reshape(x.shape)
    return _affine(xhat, gamma, beta), BatchNormCache(xhat, inv_std, gamma, batch_stats)


def batch_norm_backward(dout: Any, cache: BatchNormCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`batch_norm_forward`.

    Math (S = one channel's n = B*H*W entries):
        dbeta = sum_S dout,   dgamma = sum_S dout * xhat,   dxhat = dout * gamma;
        training: dx = inv_std * (dxhat - mean_S dxhat - xhat * mean_S(dxhat * xhat));
        evaluation (fixed running statistics): dx = dxhat * inv_std.

    Returns:
        dx (B, H, W, C), dgamma (C,), dbeta (C,).
    """
    xhat, inv_std, gamma, batch_stats = cache
    check_dout(dout, xhat)
    if tuple(dout.shape) != tuple(xhat.shape):
        raise ValueError(f"batch_norm_backward: dout must have the forward's shape {tuple(xhat.shape)}, got {tuple(dout.shape)}")
    C = xhat.shape[-1]
    dgamma, dbeta = _param_grads(dout, xhat, C)
    dxhat = (dout * gamma if gamma is not None else dout).reshape(-1, C)
    if batch_stats:
        dx = _normalized_backward(dxhat, xhat.reshape(-1, C), inv_std, (0,))
    else:
        dx = dxhat * inv_std
    return dx.reshape(xhat.shape), dgamma, dbeta
