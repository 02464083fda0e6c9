"""Exact GELU on the CPU, one pass over memory each way: the numba twin of gelu.cu.

    forward:   y = x Phi(x),   Phi(x) = (1 + erf(x / sqrt(2))) / 2
    backward:  dx = dout (Phi(x) + x phi(x)),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

NumPy twin: twins_np.functional.activation.gelu_forward / gelu_backward, with Phi from
twins_np.functional.normal_cdf. The forward also returns Phi(x), the twin's cache
(GeluCache(x, cdf)), so either backward can follow either forward.

Phi is computed as the twin computes it, step for step:

- float32: the fitted rational function of ``normal_cdf_rational``,
  Phi(x) = 1/2 + z Pt(z^2) / Qt(z^2) with z = x clipped to +-4 sqrt(2), by Horner's rule in
  float32 with the same float32 coefficients, then clipped to [0, 1]. The twin makes about
  25 passes over memory for it (one per NumPy operation); the loop below makes one, and
  gives the same bits.
- float64: SciPy's erf (through ``twins_np.backend.erf``, as the twin), then one loop for
  (1 + erf) / 2 and x Phi(x). No compiled erf gives SciPy's bits (the C library's differs in
  the last bit for about one argument in eight), and float64 is for checks, not speed.

The backward needs exp, which the kernel takes from ``cpu_common.exp`` (vectorised for
float32, the C library's for float64); NumPy's exp differs from it by a few ulp, so dx is
within a few ulp of the twin's rather than equal (tests/test_kernels_cpu.py measures it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from .cpu_common import exp, jit, launch

# Phi's coefficients in float32, constant term first: the values of _PHI_P, _PHI_Q and
# _CLAMP in twins_np/functional/normal_cdf.py (which sits a layer above the kernels and
# cannot be imported here). tests/test_kernels_cpu.py checks that the two copies are equal.
_PHI_P = (
    np.float32(0.3989422917366028),
    np.float32(0.03273957595229149),
    np.float32(0.004800981841981411),
    np.float32(0.00017013016622513533),
    np.float32(8.388273272430524e-06),
    np.float32(5.176034179044109e-08),
    np.float32(-7.293361053983816e-11),
)
_PHI_Q = (
    np.float32(1.0),
    np.float32(0.24873265624046326),
    np.float32(0.02848958782851696),
    np.float32(0.0019327603513374925),
    np.float32(8.172313391696662e-05),
    np.float32(1.9722153865586733e-06),
)
_CLAMP = np.float32(4.0 * math.sqrt(2.0))
_HALF, _ZERO, _ONE = np.float32(0.5), np.float32(0.0), np.float32(1.0)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jit
def _gelu_forward_f32(x: Any, y: Any, cdf: Any, start: int, stop: int) -> None:
    """y = x Phi(x) and cdf = Phi(x) for the flat float32 arrays' elements start..stop-1."""
    P, Q = _PHI_P, _PHI_Q
    x, y, cdf = x[start:stop], y[start:stop], cdf[start:stop]
    for i in range(x.size):
        xi = x[i]
        z = xi  # clip(x, -_CLAMP, _CLAMP); a NaN fails both tests and stays NaN
        if z > _CLAMP:
            z = _CLAMP
        if z < -_CLAMP:
            z = -_CLAMP
        t = z * z
        # Horner's rule in the twin's order: (((t P6 + P5) t + P4) t + ...) t + P0
        p = t * P[6] + P[5]
        p = p * t + P[4]
        p = p * t + P[3]
        p = p * t + P[2]
        p = p * t + P[1]
        p = p * t + P[0]
        p = p * z
        q = t * Q[5] + Q[4]
        q = q * t + Q[3]
        q = q * t + Q[2]
        q = q * t + Q[1]
        q = q * t + Q[0]
        phi = p / q + _HALF
        if phi < _ZERO:  # clip to [0, 1]: rounding can land a few 1e-8 outside
            phi = _ZERO
        if phi > _ONE:
            phi = _ONE
        cdf[i] = phi
        y[i] = xi * phi


@jit
def _gelu_from_erf_f64(x: Any, y: Any, cdf: Any, start: int, stop: int) -> None:
    """cdf holds erf(x / sqrt 2) on entry: cdf = (erf + 1) / 2 and y = x cdf, in the twin's order."""
    x, y, cdf = x[start:stop], y[start:stop], cdf[start:stop]
    for i in range(x.size):
        phi = (cdf[i] + 1.0) * 0.5
        cdf[i] = phi
        y[i] = x[i] * phi


@jit
def _gelu_backward(dout: Any, x: Any, cdf: Any, dx: Any, start: int, stop: int) -> None:
    """dx = dout (Phi(x) + x phi(x)) for the flat arrays' elements start..stop-1, in x's precision."""
    minus_half = x.dtype.type(-0.5)
    inv_sqrt_2pi = x.dtype.type(_INV_SQRT_2PI)
    dout, x, cdf, dx = dout[start:stop], x[start:stop], cdf[start:stop], dx[start:stop]
    for i in range(x.size):
        xi = x[i]
        pdf = exp(minus_half * xi * xi)
        pdf = pdf * inv_sqrt_2pi
        pdf = pdf * xi
        pdf = pdf + cdf[i]
        dx[i] = dout[i] * pdf


def gelu_forward(x: Any) -> tuple[Any, Any]:
    """(y, cdf) = (x Phi(x), Phi(x)); x a C-contiguous float32 or float64 NumPy array."""
    y = np.empty_like(x)
    if x.dtype == np.float32:
        cdf = np.empty_like(x)
        flat = (x.reshape(-1), y.reshape(-1), cdf.reshape(-1))
        launch(_gelu_forward_f32, x.size, *flat)
    else:
        cdf = backend.erf(x * _INV_SQRT_2)  # the twin's call, so the same bits
        flat = (x.reshape(-1), y.reshape(-1), cdf.reshape(-1))
        launch(_gelu_from_erf_f64, x.size, *flat)
    return y, cdf


def gelu_backward(dout: Any, x: Any, cdf: Any) -> Any:
    """dout (Phi(x) + x phi(x)), with dout's shape and dtype."""
    dout = np.ascontiguousarray(dout)
    dx = np.empty_like(dout)
    x, cdf = np.ascontiguousarray(x), np.ascontiguousarray(cdf)
    launch(_gelu_backward, dout.size, dout.reshape(-1), x.reshape(-1), cdf.reshape(-1), dx.reshape(-1))
    return dx
