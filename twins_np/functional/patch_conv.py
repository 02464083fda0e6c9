"""Convolutions over non-overlapping windows: kernel = stride = k, no padding.

Twins uses them for the patch embedding (k = 4, then 2) and for GSA's sub-sampling
(k = sr), with three kinds (Twins Table 9):

- :func:`patch_conv_forward`: a dense conv. Windows never overlap, so it is a reshape
  ("patchify") followed by one matrix product.
- :func:`depthwise_patch_conv_forward`: each channel summarises its own window (the first
  half of the depthwise-separable sub-sampling).
- :func:`avg_pool_forward`: the window's mean, no parameters.

All three floor: trailing rows/columns that do not fill a window are dropped and get zero
gradient. mmsegmentation's patch embedding pads instead (its ``AdaptivePadding`` with
``padding="corner"``): :func:`corner_pad_forward` adds zero rows at the bottom and zero
columns on the right up to the next multiple of k, so that the conv covers every pixel and
gives ceil(H / k) x ceil(W / k) outputs. Layout: channels-last, x of shape (B, H, W, C), because Twins keeps its tokens as
(B, N, C) with N = H*W row-major, and (B, H, W, C) is then a free reshape. Weights keep
PyTorch's layout: (C_out, C_in, k, k), or (C, 1, k, k) for the depthwise one.
Overlapping windows with padding are :mod:`twins_np.functional.conv2d` (dense heads) and
:mod:`twins_np.functional.depthwise_conv` (the PEG).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_xp
from ._checks import check_dout, check_float, check_ndim, check_same_dtype, check_weight


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
    xp = check_dout(dout, cols)
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
    xp = check_dout(dout, patches)
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


class CornerPadCache(NamedTuple):
    x_shape: tuple[int, int, int, int]  # (B, H, W, C) before padding


def corner_pad_forward(x: Any, multiple: int) -> tuple[Any, CornerPadCache]:
    """Zero-pad the bottom rows and right columns up to the next multiple of ``multiple``.

    mmsegmentation's ``AdaptivePadding(padding="corner")`` before a kernel = stride = k
    patch conv: pad_h = ceil(H / k) * k - H rows at the bottom, pad_w likewise on the
    right, so the conv that follows outputs ceil(H / k) x ceil(W / k) instead of
    floor(H / k) x floor(W / k).

    Args:
        x: (B, H, W, C) channels-last.
        multiple: k >= 1.

    Returns:
        out: (B, ceil(H/k)*k, ceil(W/k)*k, C), x in its top-left corner, zeros elsewhere
        (x itself when nothing needs padding); cache for :func:`corner_pad_backward`.
    """
    xp = get_xp(x=x)
    check_float("x", x)
    check_ndim("x", x, 4, "(B, H, W, C)")
    if isinstance(multiple, bool) or int(multiple) != multiple or multiple < 1:
        raise ValueError(f"corner pad: 'multiple' must be a positive integer, got {multiple!r}")
    k = int(multiple)
    B, H, W, C = x.shape
    Hp, Wp = -(-H // k) * k, -(-W // k) * k
    if (Hp, Wp) == (H, W):
        return x, CornerPadCache((B, H, W, C))
    out = xp.zeros((B, Hp, Wp, C), dtype=x.dtype)
    out[:, :H, :W, :] = x
    return out, CornerPadCache((B, H, W, C))


def corner_pad_backward(dout: Any, cache: CornerPadCache) -> Any:
    """The pad's backward is a slice: the padded zeros were constants, their gradient is dropped.

    Returns:
        dx: (B, H, W, C), ``dout[:, :H, :W, :]``.
    """
    B, H, W, C = cache.x_shape
    if dout.ndim != 4 or dout.shape[0] != B or dout.shape[1] < H or dout.shape[2] < W or dout.shape[3] != C:
        raise ValueError(f"corner pad: 'dout' must be the padded map of a {(B, H, W, C)} input, got {tuple(dout.shape)}")
    return dout if dout.shape[1:3] == (H, W) else dout[:, :H, :W, :]
