"""Softmax over the last axis on the CPU, one row at a time: the numba twin of softmax.cu.

    forward:   y = exp(x - max(x)) / sum(exp(x - max(x)))
    backward:  dx = dout y - y sum(dout y)       (the Jacobian-vector product, no Jacobian)

NumPy twin: twins_np.functional.softmax.softmax_forward / softmax_backward (last axis). The
twin's cache is y itself.

The steps are the twin's, in its order. Two differ in their last bits: exp (the kernel's is
``cpu_common.exp``, NumPy's its own vectorised one) and the row sums (added in float64
here, a BLAS matrix-vector product in the twin); tests/test_kernels_cpu.py states by how much.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .cpu_common import exp, jit, launch, row_sum

# Rows of attention scores are short (49 for a 7x7 window), too short for the compiler's
# vector loop to pay off row by row: exp's remainder elements would run one at a time. So the
# forward works on blocks of rows (about 16 KiB, in the first-level cache): the row maxima
# are subtracted row by row, exp runs over the whole block as one long loop, and the sums
# and divisions go row by row again. Each step is still the twin's, in the twin's order.
BLOCK_ELEMENTS = 4096


@jit
def _softmax_forward(x: Any, y: Any, start: int, stop: int) -> None:
    """Rows start..stop-1 of x (R, n) into y (R, n), n >= 1."""
    n = x.shape[1]
    rows_per_block = max(1, BLOCK_ELEMENTS // n)
    for r0 in range(start, stop, rows_per_block):
        r1 = min(r0 + rows_per_block, stop)
        for r in range(r0, r1):  # y = x - max(x)
            xr, yr = x[r], y[r]
            m = xr[0]  # a NaN anywhere makes the whole row NaN below, as in the twin
            for j in range(1, n):
                if xr[j] > m:
                    m = xr[j]
            for j in range(n):
                yr[j] = xr[j] - m
        block = y[r0:r1].reshape(-1)  # y = exp(y)
        for i in range(block.size):
            block[i] = exp(block[i])
        for r in range(r0, r1):  # y = y / sum(y)
            yr = y[r]
            s = row_sum(yr)
            for j in range(n):
                yr[j] = yr[j] / s


@jit
def _softmax_backward(dout: Any, y: Any, dx: Any, start: int, stop: int) -> None:
    """Rows start..stop-1: dx = dout y - y sum(dout y), all (R, n)."""
    for r in range(start, stop):
        d, yr, o = dout[r], y[r], dx[r]
        for j in range(o.size):
            o[j] = d[j] * yr[j]
        s = row_sum(o)
        for j in range(o.size):
            o[j] = o[j] - yr[j] * s


def softmax_forward(x: Any) -> Any:
    """Softmax over the last axis of a float32/float64 NumPy array."""
    n = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, n)
    y = np.empty_like(x2)
    if n:
        launch(_softmax_forward, x2.shape[0], x2, y, elements_per_item=n)
    return y.reshape(x.shape)


def softmax_backward(dout: Any, y: Any) -> Any:
    """dout y - y sum(dout y) over the last axis, with dout's dtype."""
    n = y.shape[-1]
    d2, y2 = np.ascontiguousarray(dout).reshape(-1, n), np.ascontiguousarray(y).reshape(-1, n)
    dx = np.empty_like(d2)
    if n:
        launch(_softmax_backward, d2.shape[0], d2, y2, dx, elements_per_item=n)
    return dx.reshape(y.shape)
