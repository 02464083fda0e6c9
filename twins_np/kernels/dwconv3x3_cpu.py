"""The PEG's 3x3 depthwise conv (stride 1, zero padding 1) on the CPU: the numba twin of dwconv3x3.cu.

    forward:   out[b, i, j, c] = x[b, i, j, c] w[1, 1, c] + bias[c]
                                 + sum over the other taps (u, v) of xpad[b, i+u, j+v, c] w[u, v, c]
    backward:  dx[b, i, j, c]  = sum over the taps (u, v) that reach (i, j) of dout[b, i+1-u, j+1-v, c] w[u, v, c]
               dW[c, 0, u, v]  = sum over b, i, j of dout[b, i, j, c] xpad[b, i+u, j+v, c]
               db[c]           = sum over b, i, j of dout[b, i, j, c]

(w here is the weight as (3, 3, C): ``w[:, 0].transpose(1, 2, 0)``.) NumPy twin:
twins_np.functional.depthwise_conv.depthwise_conv3x3_forward / _backward; the forward
returns the twin's cache, the zero-padded input xpad (B, H+2, W+2, C).

The twin runs nine shifted multiply-adds over whole images; the kernel visits each pixel
once and does its nine taps on the pixel's C channels (a short loop the compiler
vectorises), in the twin's order of taps, so out and dx are the twin's bits exactly. dW is
summed over (i, j) in row-major order, the twin's ``einsum`` in its own order: dW agrees
within a few ulp of the sum of the magnitudes of its terms. db is the twin's NumPy line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .cpu_common import jit, launch


@jit
def _dwconv3x3_forward(x: Any, w: Any, bias: Any, has_bias: bool, out: Any, xpad: Any, start: int, stop: int) -> None:
    """Images start..stop-1: xpad's interior = x (its border arrives zeroed), then out = the conv."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    for b in range(start, stop):
        for i in range(H):
            src, dst = x[b, i], xpad[b, i + 1]
            for j in range(W):
                for c in range(C):
                    dst[j + 1, c] = src[j, c]
        for i in range(H):
            # the three padded rows that output row i sees: pixel (i, j) is the centre of
            # top/mid/bot[j : j + 3]
            top, mid, bot = xpad[b, i], xpad[b, i + 1], xpad[b, i + 2]
            o, xi = out[b, i], x[b, i]
            for j in range(W):
                for c in range(C):  # the nine taps of one channel, in the twin's order
                    v = xi[j, c] * w[1, 1, c]  # the centre tap first, then the bias
                    if has_bias:
                        v = v + bias[c]
                    v = v + top[j, c] * w[0, 0, c]
                    v = v + top[j + 1, c] * w[0, 1, c]
                    v = v + top[j + 2, c] * w[0, 2, c]
                    v = v + mid[j, c] * w[1, 0, c]
                    v = v + mid[j + 2, c] * w[1, 2, c]
                    v = v + bot[j, c] * w[2, 0, c]
                    v = v + bot[j + 1, c] * w[2, 1, c]
                    v = v + bot[j + 2, c] * w[2, 2, c]
                    o[j, c] = v


@jit
def _dx_at_border(dout: Any, w: Any, dx: Any, b: int, i: int, j: int) -> None:
    """dx[b, i, j] with a range check on every tap (for the pixels on the image's border)."""
    H, W, C = dout.shape[1], dout.shape[2], dout.shape[3]
    o = dx[b, i, j]
    o[:] = dout.dtype.type(0)  # the twin's padded dx starts at zero
    for u in range(3):
        for v in range(3):
            si, sj = i + 1 - u, j + 1 - v
            if 0 <= si < H and 0 <= sj < W:
                d = dout[b, si, sj]
                for c in range(C):
                    o[c] = o[c] + d[c] * w[u, v, c]


@jit
def _dwconv3x3_backward(dout: Any, xpad: Any, w: Any, dx: Any, dw_img: Any, start: int, stop: int) -> None:
    """Images start..stop-1: dx, and dw_img[b] (3, 3, C), image b's share of dW."""
    H, W, C = dout.shape[1], dout.shape[2], dout.shape[3]
    zero = dout.dtype.type(0)
    for b in range(start, stop):
        # dx: the twin adds dout w[u, v] into a zeroed, padded dx tap by tap, so dx at (i, j)
        # gets dout at (i+1-u, j+1-v) w[u, v] for the taps (u, v) in order, those that fall
        # inside the image. Inside, all nine do; on the border, _dx_at_border checks each.
        for i in range(H):
            if i == 0 or i == H - 1:
                for j in range(W):
                    _dx_at_border(dout, w, dx, b, i, j)
                continue
            below, here, above = dout[b, i + 1], dout[b, i], dout[b, i - 1]
            o = dx[b, i]
            _dx_at_border(dout, w, dx, b, i, 0)
            for j in range(1, W - 1):
                for c in range(C):
                    v = zero + below[j + 1, c] * w[0, 0, c]
                    v = v + below[j, c] * w[0, 1, c]
                    v = v + below[j - 1, c] * w[0, 2, c]
                    v = v + here[j + 1, c] * w[1, 0, c]
                    v = v + here[j, c] * w[1, 1, c]
                    v = v + here[j - 1, c] * w[1, 2, c]
                    v = v + above[j + 1, c] * w[2, 0, c]
                    v = v + above[j, c] * w[2, 1, c]
                    v = v + above[j - 1, c] * w[2, 2, c]
                    o[j, c] = v
            if W > 1:
                _dx_at_border(dout, w, dx, b, i, W - 1)
        # dW: the gradient at (i, j) times the nine inputs the forward multiplied there,
        # summed over (i, j) in row-major order
        acc = dw_img[b]
        acc[:] = zero
        for i in range(H):
            d, top, mid, bot = dout[b, i], xpad[b, i], xpad[b, i + 1], xpad[b, i + 2]
            for j in range(W):
                for c in range(C):
                    g = d[j, c]
                    acc[0, 0, c] += g * top[j, c]
                    acc[0, 1, c] += g * top[j + 1, c]
                    acc[0, 2, c] += g * top[j + 2, c]
                    acc[1, 0, c] += g * mid[j, c]
                    acc[1, 1, c] += g * mid[j + 1, c]
                    acc[1, 2, c] += g * mid[j + 2, c]
                    acc[2, 0, c] += g * bot[j, c]
                    acc[2, 1, c] += g * bot[j + 1, c]
                    acc[2, 2, c] += g * bot[j + 2, c]


def _taps(w: Any) -> Any:
    """The (C, 1, 3, 3) weight as (3, 3, C), contiguous: one channel vector per tap."""
    return np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))


def dwconv3x3_forward(x: Any, w: Any, b: Any | None) -> tuple[Any, Any]:
    """(out, xpad): x (B, H, W, C), w (C, 1, 3, 3), b (C,) or None; all float32 or all float64."""
    B, H, W, C = x.shape
    x = np.ascontiguousarray(x)
    wt = _taps(w)
    out = np.empty_like(x)
    xpad = np.zeros((B, H + 2, W + 2, C), dtype=x.dtype)
    bias = np.ascontiguousarray(b) if b is not None else wt[0, 0]  # any array of C: unread without a bias
    launch(_dwconv3x3_forward, B, x, wt, bias, b is not None, out, xpad, elements_per_item=H * W * C)
    return out, xpad


def dwconv3x3_backward(dout: Any, xpad: Any, w: Any) -> tuple[Any, Any, Any]:
    """(dx, dw, db) as the twin returns them: (B, H, W, C), (C, 1, 3, 3), (C,)."""
    B, H, W, C = dout.shape
    dout = np.ascontiguousarray(dout)
    dx = np.empty_like(dout)
    dw_img = np.empty((B, 3, 3, C), dtype=dout.dtype)
    launch(_dwconv3x3_backward, B, dout, np.ascontiguousarray(xpad), _taps(w), dx, dw_img, elements_per_item=H * W * C)
    dw = dw_img.sum(axis=0).transpose(2, 0, 1).reshape(C, 1, 3, 3)  # the twin's lines from here on
    db = dout.reshape(-1, C).sum(axis=0)
    return dx, dw, db
