"""GELU, the exact (erf) form used by timm's ``nn.GELU()``.

GELU(x) = x * Phi(x),   Phi(x) = (1 + erf(x / sqrt(2))) / 2
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ..backend import erf, get_xp
from ._checks import check_float

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
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
    cdf = erf(x * _INV_SQRT2)
    cdf += 1.0
    cdf *= 0.5
    return x * cdf, GeluCache(x, cdf)


def gelu_backward(dout: Any, cache: GeluCache) -> Any:
    """Gradient of the exact GELU.

    Math:
        d/dx [x Phi(x)] = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    """
    # BEGIN SOLUTION gelu_backward
    x, cdf = cache
    xp = get_xp(x)
    pdf = xp.exp(-0.5 * x * x)
    pdf *= _INV_SQRT_2PI
    return dout * (cdf + x * pdf)
    # END SOLUTION
