"""LayerNorm over the last axis on the CPU, one row at a time: the numba twin of layernorm.cu.

    forward:   mean = sum(x) / C,  xhat = x - mean,  var = sum(xhat^2) / C  (biased, as torch),
               inv_std = 1 / sqrt(var + eps),  xhat = xhat inv_std,  y = xhat gamma + beta
    backward:  g = dout gamma,  dx = ((g - xhat mean(g xhat)) - mean(g)) inv_std

NumPy twin: twins_np.functional.layernorm.layernorm_forward / layernorm_backward. The forward
returns the twin's cache (xhat and inv_std); the backward computes dx only: dgamma and dbeta
are sums over all rows, which the twin's lines compute in either case.

Every step is the twin's, in the twin's order, with one exception: the row sums. The twin
takes them from BLAS (a matrix-vector product with a vector of ones) and from ``einsum``; the
kernel adds them in float64 (``cpu_common.row_sum``), so a mean or a variance can differ
from the twin's in its last bits, and so can everything computed from it
(tests/test_kernels_cpu.py states by how much). A row is read from memory once per pass
over it, and each pass over a row of 32 to 512 channels stays in the CPU's first-level cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .cpu_common import jit, launch, row_dot, row_sum


@jit
def _layernorm_forward(x: Any, gamma: Any, beta: Any, eps: Any, c: Any, y: Any, xhat: Any, inv_std: Any, start: int,
                       stop: int) -> None:  # fmt: skip
    """Rows start..stop-1 of x (R, C) into y, xhat (R, C) and inv_std (R, 1); eps and c = C in x's dtype."""
    one = x.dtype.type(1)
    for r in range(start, stop):
        xr, xh, yr = x[r], xhat[r], y[r]
        mean = row_sum(xr) / c
        for j in range(xr.size):
            xh[j] = xr[j] - mean
        var = row_dot(xh, xh) / c
        s = one / np.sqrt(var + eps)
        inv_std[r, 0] = s
        for j in range(xr.size):
            v = xh[j] * s
            xh[j] = v
            yr[j] = v * gamma[j] + beta[j]


@jit
def _layernorm_backward_dx(dout: Any, xhat: Any, inv_std: Any, gamma: Any, c: Any, dx: Any, start: int, stop: int) -> None:
    """dx for rows start..stop-1; dout, xhat and dx (R, C), inv_std (R, 1), c = C in dx's dtype."""
    for r in range(start, stop):
        d, xh, g = dout[r], xhat[r], dx[r]  # g = dout gamma is kept in dx's row until dx replaces it
        for j in range(g.size):
            g[j] = d[j] * gamma[j]
        mean_gx = row_dot(g, xh) / c
        mean_g = row_sum(g) / c
        s = inv_std[r, 0]
        for j in range(g.size):
            g[j] = ((g[j] - xh[j] * mean_gx) - mean_g) * s


def layernorm_forward(x: Any, gamma: Any, beta: Any, eps: float) -> tuple[Any, Any, Any]:
    """(y, xhat, inv_std) with x's shape, x's shape and (..., 1); gamma and beta (C,) in x's dtype."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)
    rows = x2.shape[0]
    y, xhat = np.empty_like(x2), np.empty_like(x2)
    inv_std = np.empty((rows, 1), dtype=x.dtype)
    if C:
        gamma, beta = np.ascontiguousarray(gamma), np.ascontiguousarray(beta)
        dtype = x.dtype.type
        launch(_layernorm_forward, rows, x2, gamma, beta, dtype(eps), dtype(C), y, xhat, inv_std, elements_per_item=C)
    return y.reshape(x.shape), xhat.reshape(x.shape), inv_std.reshape(*x.shape[:-1], 1)


def layernorm_backward_dx(dout: Any, xhat: Any, inv_std: Any, gamma: Any) -> Any:
    """dx = ((g - xhat mean(g xhat)) - mean(g)) inv_std, g = dout gamma, per row; dout's shape and dtype."""
    C = dout.shape[-1]
    d2 = np.ascontiguousarray(dout).reshape(-1, C)
    dx = np.empty_like(d2)
    if C:
        xh2 = np.ascontiguousarray(xhat).reshape(-1, C)
        s2 = np.ascontiguousarray(inv_std).reshape(-1, 1)
        launch(_layernorm_backward_dx, d2.shape[0], d2, xh2, s2, np.ascontiguousarray(gamma), dx.dtype.type(C), dx,
               elements_per_item=C)  # fmt: skip
    return dx.reshape(dout.shape)
