"""The two convolutions Twins needs, both written with operations NumPy and CuPy share.

1. :func:`patch_conv_forward`: kernel = stride = k, no padding (patch embedding with
   k = 4 or 2; GSA sub-sampling with k = sr). Windows never overlap, so the conv is a
   reshape ("patchify") followed by one matrix product. The output size floors:
   trailing rows/columns that do not fill a patch are dropped and get zero gradient.
2. :func:`depthwise_conv3x3_forward`: 3x3 depthwise conv, stride 1, padding 1 (the PEG).
   It is 9 shifted multiply-adds over a zero-padded copy.

Layout: both work channels-last, x of shape (B, H, W, C), because Twins keeps its
tokens as (B, N, C) with N = H*W row-major, and (B, H, W, C) is then a free reshape.
Weights keep PyTorch's layout: (C_out, C_in, k, k) and (C, 1, 3, 3).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import kernels
from ..backend import get_xp, map_blocks, use_fused
from ._checks import check_float, check_ndim, check_same_dtype, check_weight


class PatchConvCache(NamedTuple):
    cols: Any  # (B*Ho*Wo, C_in*k*k) the patches, needed for dW
    w: Any  # (C_out, C_in, k, k)
    x_shape: tuple[int, int, int, int]  # (B, H, W, C_in) to restore floor-dropped pixels


def patch_conv_forward(x: Any, w: Any, b: Any | None) -> tuple[Any, PatchConvCache]:
    """Non-overlapping conv, kernel = stride = k, channels-last.

    Args:
        x: (B, H, W, C_in).
        w: (C_out, C_in, k, k).
        b: (C_out,) or None.

    Returns:
        out: (B, H // k, W // k, C_out); cache for :func:`patch_conv_backward`.

    Raises:
        ValueError: when k > H or k > W (the output would be empty).
    """
    get_xp(x=x, weight=w, bias=b)
    check_float("x", x)
    check_ndim("x", x, 4, "(B, H, W, C_in)")
    check_same_dtype(x=x, weight=w, bias=b)
    B, H, W, Cin = x.shape
    Cout, k = w.shape[0], w.shape[-1]
    check_weight("weight", w, (Cout, Cin, k, k))
    if k > H or k > W:
        raise ValueError(
            f"patch conv: kernel = stride = {k} is larger than the {H}x{W} map; "
            f"the map must be at least {k}x{k} (for a whole Twins model, images at least 32x32)"
        )
    Ho, Wo = H // k, W // k
    # (B, Ho, k, Wo, k, Cin) -> (B, Ho, Wo, Cin, k, k): patch pixels in the weight's order
    patches = x[:, : Ho * k, : Wo * k, :].reshape(B, Ho, k, Wo, k, Cin)
    cols = patches.transpose(0, 1, 3, 5, 2, 4).reshape(B * Ho * Wo, Cin * k * k)
    out = cols @ w.reshape(Cout, -1).T
    if b is not None:
        out += b
    return out.reshape(B, Ho, Wo, Cout), PatchConvCache(cols, w, (B, H, W, Cin))


def patch_conv_backward(dout: Any, cache: PatchConvCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`patch_conv_forward`.

    Math: with cols the patch matrix, out = cols W^T + b, so::

        dcols = dout W,  dW = dout^T cols,  db = sum dout

    and dx is dcols scattered back to the pixels (each pixel is in exactly one patch,
    so it is a reshape, not a sum); floor-dropped pixels get 0.

    Returns:
        dx (B, H, W, C_in), dw (C_out, C_in, k, k), db (C_out,).
    """
    cols, w, (B, H, W, Cin) = cache
    xp = get_xp(dout)
    Cout, k = w.shape[0], w.shape[-1]
    Ho, Wo = dout.shape[1], dout.shape[2]
    dout2 = dout.reshape(-1, Cout)
    dw = (dout2.T @ cols).reshape(w.shape)
    db = dout2.sum(axis=0)
    dcols = (dout2 @ w.reshape(Cout, -1)).reshape(B, Ho, Wo, Cin, k, k)
    dpatch = dcols.transpose(0, 1, 4, 2, 5, 3).reshape(B, Ho * k, Wo * k, Cin)
    if Ho * k == H and Wo * k == W:
        return dpatch, dw, db
    dx = xp.zeros((B, H, W, Cin), dtype=dout.dtype)
    dx[:, : Ho * k, : Wo * k, :] = dpatch
    return dx, dw, db


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
    if use_fused(x):  # one CUDA kernel for the nine taps (twins_np/kernels/dwconv3x3.cu)
        out, xpad = kernels.dwconv3x3_forward(x, w, b)
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

    Math: each tap (u, v) is a shifted elementwise product, so
        dW[c, 0, u, v] = sum_{b,i,j} dout[b,i,j,c] * xpad[b, i+u, j+v, c]
        dxpad[:, i+u, j+v] += dout * w[:, 0, u, v]   (then crop the pad)
        db = sum dout

    Returns:
        dx (B, H, W, C), dw (C, 1, 3, 3), db (C,).
    """
    xpad, w = cache
    xp = get_xp(dout)
    if use_fused(dout):  # twins_np/kernels/dwconv3x3.cu: dx, and dW per image summed here
        return kernels.dwconv3x3_backward(dout, xpad, w)
    C = w.shape[0]
    wt = xp.ascontiguousarray(w[:, 0].transpose(1, 2, 0))  # (3, 3, C)
    # per image: dx and that image's share of dW (summed over the batch below)
    B, H, W, _ = dout.shape
    dx = xp.empty((B, H, W, C), dtype=dout.dtype)
    dwt_per_image = xp.empty((B, 3, 3, C), dtype=dout.dtype)
    map_blocks(lambda d, xp_, out: _dwconv3x3_images_backward(d, xp_, wt, out), dout, xpad, out=(dx, dwt_per_image))
    dw = dwt_per_image.sum(axis=0).transpose(2, 0, 1).reshape(C, 1, 3, 3)
    db = dout.reshape(-1, C).sum(axis=0)
    return dx, dw, db


def _dwconv3x3_images_backward(dout: Any, xpad: Any, wt: Any, out: tuple[Any, Any]) -> None:
    """Writes (dx, dW per image) for a block of images into out.

    dout (n, H, W, C) and xpad (n, H+2, W+2, C) in; dx (n, H, W, C) and dwt (n, 3, 3, C),
    tap (u, v) of image i's contribution to dW, out.
    """
    # BEGIN SOLUTION peg_backward
    dx, dwt = out
    xp = get_xp(dout)
    H, W = dout.shape[1:3]
    dxpad = xp.zeros_like(xpad)
    tmp = xp.empty_like(dout)  # one scratch array for the 9 taps instead of 9 temporaries
    for u in range(3):
        for v in range(3):
            window = xpad[:, u : u + H, v : v + W, :]
            # sum over (H, W) of dout * window, per image and channel: einsum contracts
            # without materialising the (n, H, W, C) product
            dwt[:, u, v] = xp.einsum("bhwc,bhwc->bc", dout, window)
            xp.multiply(dout, wt[u, v], out=tmp)
            dxpad[:, u : u + H, v : v + W, :] += tmp
    dx[...] = dxpad[:, 1:-1, 1:-1, :]
    # END SOLUTION


class DWPatchConvCache(NamedTuple):
    patches: Any  # (B, Ho, Wo, k, k, C) the input windows, needed for dW
    w: Any  # (C, 1, k, k)
    x_shape: tuple[int, int, int, int]


def depthwise_patch_conv_forward(x: Any, w: Any, b: Any | None) -> tuple[Any, DWPatchConvCache]:
    """Depthwise conv with kernel = stride = k (each channel summarises its own k x k window).

    The first half of the depthwise-separable sub-sampling that GSA can use instead of
    the dense strided conv (Twins Table 9). Floors like :func:`patch_conv_forward`.

    out[b, i, j, c] = bias[c] + sum_{u,v} x[b, i*k+u, j*k+v, c] * w[c, 0, u, v]

    Args:
        x: (B, H, W, C).  w: (C, 1, k, k).  b: (C,) or None.

    Returns:
        out: (B, H // k, W // k, C); cache for :func:`depthwise_patch_conv_backward`.
    """
    get_xp(x=x, weight=w, bias=b)
    check_float("x", x)
    check_ndim("x", x, 4, "(B, H, W, C)")
    check_same_dtype(x=x, weight=w, bias=b)
    B, H, W, C = x.shape
    k = w.shape[-1]
    check_weight("weight", w, (C, 1, k, k))
    if k > H or k > W:
        raise ValueError(f"depthwise patch conv: kernel = stride = {k} is larger than the {H}x{W} map")
    Ho, Wo = H // k, W // k
    patches = x[:, : Ho * k, : Wo * k, :].reshape(B, Ho, k, Wo, k, C).transpose(0, 1, 3, 2, 4, 5)
    wt = w[:, 0].transpose(1, 2, 0)  # (k, k, C)
    out = (patches * wt).sum(axis=(3, 4))
    if b is not None:
        out += b
    return out, DWPatchConvCache(patches, w, (B, H, W, C))


def depthwise_patch_conv_backward(dout: Any, cache: DWPatchConvCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`depthwise_patch_conv_forward`.

    Math: dW[c, 0, u, v] = sum_{b,i,j} dout[b,i,j,c] x[b, i*k+u, j*k+v, c];
    dx at a window pixel (u, v) = dout * w[:, 0, u, v]; floor-dropped pixels get 0.

    Returns:
        dx (B, H, W, C), dw (C, 1, k, k), db (C,).
    """
    patches, w, (B, H, W, C) = cache
    xp = get_xp(dout)
    k = w.shape[-1]
    Ho, Wo = dout.shape[1], dout.shape[2]
    d = dout[:, :, :, None, None, :]  # (B, Ho, Wo, 1, 1, C)
    dwt = (d * patches).sum(axis=(0, 1, 2))  # (k, k, C)
    dw = dwt.transpose(2, 0, 1).reshape(C, 1, k, k)
    db = dout.reshape(-1, C).sum(axis=0)
    dpatch = d * w[:, 0].transpose(1, 2, 0)  # (B, Ho, Wo, k, k, C)
    dx = xp.zeros((B, H, W, C), dtype=dout.dtype)
    dx[:, : Ho * k, : Wo * k, :] = dpatch.transpose(0, 1, 3, 2, 4, 5).reshape(B, Ho * k, Wo * k, C)
    return dx, dw, db


class AvgPoolCache(NamedTuple):
    k: int
    x_shape: tuple[int, int, int, int]


def avg_pool_forward(x: Any, k: int) -> tuple[Any, AvgPoolCache]:
    """Average pooling over non-overlapping k x k windows (stride k, floors), channels-last.

    Args:
        x: (B, H, W, C).  k: window = stride.

    Returns:
        out: (B, H // k, W // k, C); cache for :func:`avg_pool_backward`.
    """
    check_float("x", x)
    check_ndim("x", x, 4, "(B, H, W, C)")
    B, H, W, C = x.shape
    if int(k) != k or k < 1 or k > H or k > W:
        raise ValueError(f"avg pool: window k = {k!r} must be a positive integer no larger than the {H}x{W} map")
    Ho, Wo = H // k, W // k
    out = x[:, : Ho * k, : Wo * k, :].reshape(B, Ho, k, Wo, k, C).mean(axis=(2, 4))
    return out, AvgPoolCache(int(k), (B, H, W, C))


def avg_pool_backward(dout: Any, cache: AvgPoolCache) -> Any:
    """Each pixel of a window receives dout / k^2; floor-dropped pixels get 0.

    Returns:
        dx: (B, H, W, C).
    """
    k, (B, H, W, C) = cache
    xp = get_xp(dout)
    Ho, Wo = dout.shape[1], dout.shape[2]
    share = (dout * (1.0 / (k * k)))[:, :, None, :, None, :]
    dx = xp.zeros((B, H, W, C), dtype=dout.dtype)
    dx[:, : Ho * k, : Wo * k, :] = xp.broadcast_to(share, (B, Ho, k, Wo, k, C)).reshape(B, Ho * k, Wo * k, C)
    return dx
