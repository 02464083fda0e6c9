"""GELU, the exact (erf) form used by timm's ``nn.GELU()``; and ReLU, for the dense head.

GELU(x) = x * Phi(x),   Phi(x) = (1 + erf(x / sqrt(2))) / 2

Both passes run through :func:`~twins_np.backend.map_blocks`: on the CPU the chain of
elementwise steps is applied to one cache-sized block at a time, so the input is read
from memory once instead of once per step; on the GPU each is one call over the array.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .. import kernels
from ..backend import get_xp, map_blocks, use_fused
from ._checks import check_dout, check_float
from .normal_cdf import normal_cdf

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GeluCache(NamedTuple):
    x: Any  # the input; the density phi(x) is recomputed in backward (cheap), not stored
    cdf: Any  # Phi(x), kept because erf is the expensive part


def gelu_forward(x: Any) -> tuple[Any, GeluCache]:
    """Exact GELU, elementwise.

    Args:
        x: array of any shape, float32 or float64.

    Returns:
        out: same shape and dtype; cache for :func:`gelu_backward`.
    """
    check_float("x", x)
    xp = get_xp(x)
    x = xp.ascontiguousarray(x)
    if use_fused(x, "gelu"):  # one fused kernel (twins_np/kernels/gelu_cpu.py or gelu.cu)
        out, cdf = kernels.for_array(x).gelu_forward(x)
        return out, GeluCache(x, cdf)
    out, cdf = xp.empty_like(x), xp.empty_like(x)
    map_blocks(_gelu_forward_block, x.reshape(-1), out=(out.reshape(-1), cdf.reshape(-1)))
    return out, GeluCache(x, cdf)


def _gelu_forward_block(x: Any, out: tuple[Any, Any]) -> None:
    """Writes x Phi(x) and Phi(x) for one block into out = (gelu, cdf)."""
    gelu, cdf = out
    normal_cdf(x, out=cdf)
    get_xp(x).multiply(x, cdf, out=gelu)


def gelu_backward(dout: Any, cache: GeluCache) -> Any:
    """Gradient of the exact GELU.

    Args:
        dout: upstream gradient, the shape and dtype of the forward's input x.
        cache: the forward's :class:`GeluCache`: x (the input) and cdf = Phi(x).

    Returns:
        dx: the shape and dtype of dout.

    Math:
        d/dx [x Phi(x)] = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    """
    x, cdf = cache
    xp = check_dout(dout, x)
    dout = xp.ascontiguousarray(dout)
    if use_fused(dout, "gelu"):  # twins_np/kernels/gelu_cpu.py or gelu.cu
        return kernels.for_array(dout).gelu_backward(dout, x, cdf)

    # BEGIN SOLUTION gelu_backward
    def block(d: Any, x_: Any, cdf_: Any, out: Any) -> None:  # dout * (Phi(x) + x phi(x)) for one block, into out
        pdf = xp.exp(-0.5 * x_ * x_)
        pdf *= _INV_SQRT_2PI
        pdf *= x_
        pdf += cdf_
        xp.multiply(d, pdf, out=out)

    dx = xp.empty_like(dout)
    map_blocks(block, dout.reshape(-1), x.reshape(-1), cdf.reshape(-1), out=dx.reshape(-1))  # cache-sized blocks
    return dx
    # END SOLUTION


# --- ReLU (the FPN head's activation) ------------------------------------------------


class ReluCache(NamedTuple):
    mask: Any  # bool, x > 0: a quarter of the float32 input's memory, all backward needs


def relu_forward(x: Any) -> tuple[Any, ReluCache]:
    """ReLU, elementwise: max(x, 0).

    Args:
        x: array of any shape, float32 or float64.

    Returns:
        out: same shape and dtype; cache for :func:`relu_backward`.
    """
    check_float("x", x)
    xp = get_xp(x)
    # maximum, not x * mask: negative inputs give +0.0 (not -0.0) and NaN stays NaN, as in PyTorch
    return xp.maximum(x, 0.0), ReluCache(x > 0.0)


def relu_backward(dout: Any, cache: ReluCache) -> Any:
    """Gradient of ReLU.

    Math:
        d/dx max(x, 0) = 1 where x > 0, else 0 (at x = 0 too, as PyTorch), so
        dx = dout * [x > 0].
    """
    (mask,) = cache
    check_dout(dout, mask)
    if tuple(dout.shape) != tuple(mask.shape):
        raise ValueError(f"relu_backward: dout must have the forward's shape {tuple(mask.shape)}, got {tuple(dout.shape)}")
    return get_xp(dout).multiply(dout, mask)
