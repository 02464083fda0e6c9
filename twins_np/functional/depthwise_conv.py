"""The 3x3 depthwise convolution of the PEG: stride 1, zero padding 1, one filter per channel.

It is 9 shifted multiply-adds over a zero-padded copy, written with operations NumPy and
CuPy share (no im2col: each channel has only 9 weights). Layout: channels-last, x of
shape (B, H, W, C), as every twins-np conv; the weight keeps PyTorch's (C, 1, 3, 3).
On a GPU with fused kernels enabled, one CUDA kernel does the nine taps
(``twins_np/kernels/dwconv3x3.cu``); the NumPy code here is its twin.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import kernels
from ..backend import get_xp, map_blocks, use_fused
from ._checks import check_dout, check_float, check_ndim, check_same_dtype, check_weight


class DWConvCache(NamedTuple):
    xpad: Any  # (B, H+2, W+2, C) zero-padded input, needed for dW
    w: Any  # (C, 1, 3, 3)


def depthwise_conv3x3_forward(x: Any, w: Any, b: Any | None) -> tuple[Any, DWConvCache]:
    """3x3 depthwise conv, stride 1, zero padding 1, channels-last.

    out[b, i, j, c] = bias[c] + sum_{u,v in 0..2} xpad[b, i+u, j+v, c] * w[c, 0, u, v]

    Args:
        x: (B, H, W, C).
        w: (C, 1, 3, 3).
        b: (C,) or None.

    Returns:
        out: (B, H, W, C); cache for :func:`depthwise_conv3x3_backward`.
    """
    xp = get_xp(x=x, weight=w, bias=b)
    check_float("x", x)
    check_ndim("x", x, 4, "(B, H, W, C)")
    check_same_dtype(x=x, weight=w, bias=b)
    B, H, W, C = x.shape
    check_weight("weight", w, (C, 1, 3, 3))
    if use_fused(x, "dwconv3x3"):  # one fused kernel for the nine taps (twins_np/kernels/dwconv3x3_cpu.py or dwconv3x3.cu)
        out, xpad = kernels.for_array(x).dwconv3x3_forward(x, w, b)
        return out, DWConvCache(xpad, w)
    # (3, 3, C): one channel vector per tap, made contiguous because a strided vector
    # slows every broadcast multiply by it
    wt = xp.ascontiguousarray(w[:, 0].transpose(1, 2, 0))
    # Images are independent: map_blocks runs a few at a time, so the padded copy and
    # the nine taps stay in cache.
    out = xp.empty((B, H, W, C), dtype=x.dtype)
    xpad = xp.zeros((B, H + 2, W + 2, C), dtype=x.dtype)
    map_blocks(lambda images, out: _dwconv3x3_images(images, wt, b, out), x, out=(out, xpad))
    return out, DWConvCache(xpad, w)


def _dwconv3x3_images(x: Any, wt: Any, b: Any | None, out: tuple[Any, Any]) -> None:
    """Writes (conv, padded input) for a block of images x (n, H, W, C) into out.

    wt is the (3, 3, C) weight; the padded array arrives zeroed, so only its interior
    is written.
    """
    y, xpad = out
    xp = get_xp(x)
    H, W = x.shape[1:3]
    xpad[:, 1:-1, 1:-1, :] = x
    xp.multiply(x, wt[1, 1], out=y)  # the centre tap needs no padding
    if b is not None:
        y += b
    tmp = xp.empty_like(x)  # one scratch array for the other eight taps
    for u in range(3):
        for v in range(3):
            if (u, v) != (1, 1):
                xp.multiply(xpad[:, u : u + H, v : v + W, :], wt[u, v], out=tmp)
                y += tmp


def depthwise_conv3x3_backward(dout: Any, cache: DWConvCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`depthwise_conv3x3_forward`.

    Args:
        dout: upstream gradient (B, H, W, C), the shape and dtype of the forward's output.
        cache: the forward's :class:`DWConvCache`: xpad (B, H+2, W+2, C), the input with a
            zero border of one pixel, and w (C, 1, 3, 3).

    Returns:
        dx (B, H, W, C), dw (C, 1, 3, 3), db (C,).

    Math: each tap (u, v) is a shifted elementwise product, so
        dW[c, 0, u, v] = sum_{b,i,j} dout[b,i,j,c] * xpad[b, i+u, j+v, c]
        dxpad[:, i+u, j+v] += dout * w[:, 0, u, v]   (then crop the pad)
        db = sum dout
    """
    xpad, w = cache
    xp = check_dout(dout, xpad)
    if use_fused(dout, "dwconv3x3"):  # twins_np/kernels/dwconv3x3_cpu.py or dwconv3x3.cu: dx, and dW per image summed there
        return kernels.for_array(dout).dwconv3x3_backward(dout, xpad, w)
    # BEGIN SOLUTION peg_backward
    C = w.shape[0]
    wt = xp.ascontiguousarray(w[:, 0].transpose(1, 2, 0))  # (3, 3, C)
    B, H, W, _ = dout.shape

    def images(d: Any, xpad_: Any, out: tuple[Any, Any]) -> None:  # (dx, each image's share of dW) of a block of images
        dx_, dwt = out
        dxpad = xp.zeros_like(xpad_)
        tmp = xp.empty_like(d)  # one scratch array for the 9 taps instead of 9 temporaries
        for u in range(3):
            for v in range(3):
                window = xpad_[:, u : u + H, v : v + W, :]
                # sum over (H, W) of dout * window, per image and channel: einsum contracts
                # without materialising the (n, H, W, C) product
                dwt[:, u, v] = xp.einsum("bhwc,bhwc->bc", d, window)
                xp.multiply(d, wt[u, v], out=tmp)
                dxpad[:, u : u + H, v : v + W, :] += tmp
        dx_[...] = dxpad[:, 1:-1, 1:-1, :]

    # per image: dx and that image's share of dW (summed over the batch below)
    dx = xp.empty((B, H, W, C), dtype=dout.dtype)
    dwt_per_image = xp.empty((B, 3, 3, C), dtype=dout.dtype)
    map_blocks(images, dout, xpad, out=(dx, dwt_per_image))
    dw = dwt_per_image.sum(axis=0).transpose(2, 0, 1).reshape(C, 1, 3, 3)
    db = dout.reshape(-1, C).sum(axis=0)
    return dx, dw, db
    # END SOLUTION
