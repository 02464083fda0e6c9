"""Phi(x), the standard normal CDF that the exact GELU multiplies by, fast on the CPU.

    Phi(x) = (1 + erf(x / sqrt(2))) / 2

``scipy.special.erf`` is exact but evaluates one element at a time, and it was the
largest single cost of a Twins forward pass on the CPU. For float32 NumPy arrays
twins-np evaluates a rational function fitted to erf instead:

    erf(u) ~= u * P(u^2) / Q(u^2),   deg P = 6, deg Q = 5,   u clamped to [-4, 4]

(``tools/fit_erf.py`` fits the coefficients; its relative error is 2.1e-9). Substituting
u = x / sqrt(2) and folding the 1/2 in gives Phi in the same form,

    Phi(x) = 1/2 + x * Pt(x^2) / Qt(x^2),   Pt_k = P_k / (2 sqrt(2) 2^k),  Qt_k = Q_k / 2^k,

a dozen multiply-adds that NumPy runs vectorised, in float32, and a final clip to
[0, 1]. Its error then comes from float32 rounding: GELU(x) = x Phi(x) is within
3e-7 * abs(x) of the exact value and within 4 ulp for x >= 0, which is the accuracy of
PyTorch's own float32 GELU (3.7e-7 * abs(x), 5 ulp; ``tests/functional/test_f_normal_cdf.py``
measures both). Clamping is harmless: Phi is within float32 rounding of 0 or 1 beyond
abs(x) = 4 sqrt(2).

float64 arrays keep ``scipy.special.erf`` (gradient checks and float64 parity need Phi to
the last bit) and CuPy arrays use ``cupyx.scipy.special.erf``, a GPU kernel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend

# erf's P and Q, constant term first (printed by tools/fit_erf.py) ...
_ERF_P = (
    1.1283791693775078,  # ~ 2 / sqrt(pi): erf(u) ~ 2u / sqrt(pi) near 0
    0.18520300270190224,
    0.05431691105998577,
    0.003849606221669872,
    0.0003796099013509734,
    4.684811194716794e-06,
    -1.3202393698265605e-08,
)
_ERF_Q = (
    1.0,
    0.4974653015360518,
    0.11395835105007883,
    0.015462082883591823,
    0.0013075701573192534,
    6.311089340218155e-05,
)
# ... and Phi's, after u = x / sqrt(2) and the factor 1/2.
_PHI_P = tuple(np.float32(c / (2.0 * math.sqrt(2.0) * 2.0**k)) for k, c in enumerate(_ERF_P))
_PHI_Q = tuple(np.float32(c / 2.0**k) for k, c in enumerate(_ERF_Q))
_CLAMP = np.float32(4.0 * math.sqrt(2.0))


def _horner(t: Any, coeffs: tuple[Any, ...]) -> Any:
    """sum_k coeffs[k] t^k by Horner's rule, updating one array in place."""
    acc = t * coeffs[-1]
    acc += coeffs[-2]
    for c in reversed(coeffs[:-2]):
        acc *= t
        acc += c
    return acc


def normal_cdf_rational(x: Any, out: Any | None = None) -> Any:
    """Phi(x) from the fitted rational function (any backend), for float32 arrays.

    The coefficients are stored in float32, so a float64 input gets float32 accuracy;
    :func:`normal_cdf` sends float64 to SciPy's erf instead.

    Args:
        x: float32 array of any shape.
        out: optional array of x's shape and dtype to write the result into.

    Returns:
        Phi(x), same shape and dtype; NaN stays NaN, -inf gives 0 and +inf gives 1.
    """
    xp = backend.get_xp(x)
    z = xp.clip(x, -_CLAMP, _CLAMP)
    t = z * z
    p = _horner(t, _PHI_P)
    p *= z
    p /= _horner(t, _PHI_Q)
    p += 0.5
    # float32 rounding of 1/2 + (-1/2 + tiny) can land a few 1e-8 outside [0, 1]
    return xp.clip(p, 0.0, 1.0, out=p if out is None else out)


def normal_cdf(x: Any, out: Any | None = None) -> Any:
    """Phi(x) elementwise, keeping the dtype (the module docstring gives the method).

    Args:
        x: float32 or float64 array (NumPy or CuPy).
        out: optional array of x's shape and dtype to write the result into.

    Returns:
        Phi(x), same shape and dtype.
    """
    if isinstance(x, np.ndarray) and x.dtype == np.float32:
        return normal_cdf_rational(x, out=out)
    xp = backend.get_xp(x)
    cdf = backend.erf(x * (1.0 / math.sqrt(2.0)))
    cdf += 1.0
    return xp.multiply(cdf, 0.5, out=cdf if out is None else out)
