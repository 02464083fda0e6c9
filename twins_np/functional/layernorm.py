"""Layer normalisation over the last axis (the channel axis C of (B, N, C) tokens).

    xhat = (x - mean) / sqrt(var + eps),   y = gamma * xhat + beta

twins-np uses eps = 1e-6 in the blocks and the final norm, and eps = 1e-5 in the
patch embedding and the GSA sub-sampling norm, exactly as timm's Twins does.

Every row is normalised on its own, so both passes run on blocks of rows through
:func:`~twins_np.backend.map_blocks` (one cache-sized block at a time on the CPU; one
call on the GPU).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import kernels
from ..backend import get_xp, map_blocks, row_sums, use_fused
from ._checks import check_dout, check_float, check_same_dtype


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
    if use_fused(x, "layernorm"):  # one fused kernel (twins_np/kernels/layernorm_cpu.py or layernorm.cu)
        y, xhat, inv_std = kernels.for_array(x).layernorm_forward(x, gamma, beta, eps)
        return y, LayerNormCache(xhat, inv_std, gamma)
    x2 = x.reshape(-1, C)
    y, xhat = xp.empty(x2.shape, dtype=x.dtype), xp.empty(x2.shape, dtype=x.dtype)
    inv_std = xp.empty((x2.shape[0], 1), dtype=x.dtype)
    map_blocks(lambda rows, out: _layernorm_rows(rows, gamma, beta, eps, out), x2, out=(y, xhat, inv_std))
    y, xhat, inv_std = y.reshape(x.shape), xhat.reshape(x.shape), inv_std.reshape(*x.shape[:-1], 1)
    return y, LayerNormCache(xhat, inv_std, gamma)


def _row_means(a: Any) -> Any:
    """Mean of each row of an (R, C) block, as an (R, 1) column.

    The sums come from :func:`~twins_np.backend.row_sums` (one BLAS call, several times
    faster than ``mean(axis=-1)``). Dividing them by C, rather than multiplying by a
    rounded 1/C, keeps the mean of a constant row exact, so such a row still normalises
    to exactly 0.
    """
    return row_sums(a) / a.shape[-1]


def _row_means_of_product(a: Any, b: Any) -> Any:
    """Mean of each row of a * b, as an (R, 1) column, without forming a * b."""
    return get_xp(a).einsum("ij,ij->i", a, b)[:, None] / a.shape[-1]


def _layernorm_rows(x: Any, gamma: Any, beta: Any, eps: float, out: tuple[Any, Any, Any]) -> None:
    """Writes (y, xhat, inv_std) for a block of rows x (R, C) into out."""
    y, xhat, inv_std = out
    xp = get_xp(x)
    xp.subtract(x, _row_means(x), out=xhat)
    # biased variance (divide by C), as torch's layer_norm
    var = _row_means_of_product(xhat, xhat)
    xp.divide(1.0, xp.sqrt(var + eps), out=inv_std)
    xhat *= inv_std
    xp.multiply(xhat, gamma, out=y)
    y += beta


def layernorm_backward(dout: Any, cache: LayerNormCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`layernorm_forward`.

    Args:
        dout: upstream gradient (..., C), the shape and dtype of the forward's x.
        cache: the forward's :class:`LayerNormCache`: xhat (..., C) the normalised input,
            inv_std (..., 1) = 1 / sqrt(var + eps) per row, gamma (C,).

    Returns:
        dx (..., C), dgamma (C,), dbeta (C,).

    Math (per row, C channels, g = dout * gamma):
        dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))
        dgamma = sum_rows dout * xhat,   dbeta = sum_rows dout

    The three terms: the direct path, the path through the mean, and the path through
    the variance (see docs/derivations/layernorm.md).
    """
    xhat, inv_std, gamma = cache
    check_dout(dout, xhat)
    # BEGIN SOLUTION layernorm_backward
    C = xhat.shape[-1]
    dout2, xhat2 = dout.reshape(-1, C), xhat.reshape(-1, C)
    xp = get_xp(dout)
    # sums over all B*N rows: NumPy's pairwise summation keeps float32 accurate there
    dgamma = (dout2 * xhat2).sum(axis=0)
    dbeta = dout2.sum(axis=0)
    if use_fused(dout, "layernorm"):  # dx in one fused kernel (twins_np/kernels/layernorm_cpu.py or layernorm.cu)
        return kernels.for_array(dout).layernorm_backward_dx(dout, xhat, inv_std, gamma), dgamma, dbeta

    def rows(d: Any, xh: Any, s: Any, out: Any) -> None:  # dx of a block of rows, assembled in place in out
        g = d * gamma
        # dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))
        xp.multiply(xh, _row_means_of_product(g, xh), out=out)
        xp.subtract(g, out, out=out)
        out -= _row_means(g)
        out *= s

    dx = xp.empty(dout2.shape, dtype=dout.dtype)
    map_blocks(rows, dout2, xhat2, inv_std.reshape(-1, 1), out=dx)
    return dx.reshape(dout.shape), dgamma, dbeta
    # END SOLUTION
