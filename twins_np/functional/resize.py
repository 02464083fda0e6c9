"""Resizing feature maps: bilinear (any size), nearest (any size), the nearest 2x fast path,
and adaptive average pooling (UPerNet's pyramid pooling), a linear map of the same kind.

Notation: x (B, H, W, C) channels-last, as every spatial op of twins-np (see
:mod:`twins_np.functional.patch_conv`); the output is (B, Ho, Wo, C).

Bilinear and nearest resizing are both *separable linear maps*: each output row is a
fixed mix of input rows, and each output column a fixed mix of input columns. With an
interpolation matrix A_h (Ho, H) along H and A_w (Wo, W) along W::

    out[b, i, j, c] = sum_{p, q} A_h[i, p] A_w[j, q] x[b, p, q, c]

so the backward is two small matrix products with the transposed matrices (dx = A_h^T dout
A_w per image and channel). No scatter-add is needed, and NumPy and CuPy share every call.
The bilinear forward reads its two taps per axis directly (``x[i0] * w0 + x[i1] * w1``,
the same weights as A's two non-zero entries): a product with the dense A would spend H
multiply-adds per output pixel where two are non-zero, which for 150-class logits resized
to a 512 x 683 image is about 10 G multiply-adds, as much as half a Twins-S backbone.

The matrices follow PyTorch's ``interpolate`` exactly (``align_corners=False``, no
antialiasing), so outputs agree to rounding:

- bilinear: scale = in / out (or 1 / scale_factor when one is given, as torch does),
  src = max((dst + 0.5) * scale - 0.5, 0), i0 = floor(src), i1 = min(i0 + 1, in - 1),
  weights 1 - (src - i0) and src - i0;
- nearest: src = min(floor(dst * scale), in - 1), computed in float32 as torch's kernel
  does (its float rounding decides which source pixel ties go to);
- adaptive average pooling (``torch.nn.AdaptiveAvgPool2d``): output bin i averages the
  input rows floor(i * in / out) to ceil((i + 1) * in / out) - 1 (bins overlap when out
  does not divide in), so row i of A_h holds 1 / (bin length) on its bin and 0 elsewhere.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..backend import get_xp
from ._checks import check_dout, check_float, check_ndim


class ResizeCache(NamedTuple):
    a_h: Any  # (Ho, H) interpolation matrix along H
    a_w: Any  # (Wo, W) interpolation matrix along W


def _check_size(size: Any) -> tuple[int, int]:
    try:
        Ho, Wo = (int(s) for s in size)
        integral = all(int(s) == s for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"'size' must be a pair of integers (Ho, Wo), got {size!r}") from None
    if not integral or Ho < 1 or Wo < 1:
        raise ValueError(f"'size' must be a pair of positive integers (Ho, Wo), got {size!r}")
    return Ho, Wo


def _check_map(x: Any) -> None:
    check_float("x", x)
    check_ndim("x", x, 4, "(B, H, W, C)")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"'x' must have H, W >= 1, got shape {tuple(x.shape)}")


def _out_size(x: Any, size: Any, scale_factor: Any) -> tuple[tuple[int, int], tuple[float | None, float | None]]:
    """(Ho, Wo) and the per-axis scale factors from exactly one of size / scale_factor (torch's rule)."""
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of 'size' and 'scale_factor'")
    if size is not None:
        return _check_size(size), (None, None)
    sf = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
    if len(sf) != 2 or not all(isinstance(s, (int, float)) and s > 0 for s in sf):
        raise ValueError(f"'scale_factor' must be a positive number or a pair of them, got {scale_factor!r}")
    H, W = x.shape[1], x.shape[2]
    # torch: output size = floor(in * scale_factor)
    Ho, Wo = int(np.floor(H * float(sf[0]))), int(np.floor(W * float(sf[1])))
    if Ho < 1 or Wo < 1:
        raise ValueError(f"scale_factor {scale_factor!r} makes the {H}x{W} map empty ({Ho}x{Wo})")
    return (Ho, Wo), (float(sf[0]), float(sf[1]))


def bilinear_matrix(xp: Any, n_in: int, n_out: int, dtype: Any, scale_factor: float | None = None) -> Any:
    """(n_out, n_in) matrix of torch's bilinear weights along one axis (align_corners=False).

    Row i holds the two weights of output pixel i; where both neighbours are the last
    input pixel (the right edge), the two weights land in one entry and sum to 1.
    """
    scale = (1.0 / scale_factor) if scale_factor else n_in / n_out
    src = (xp.arange(n_out, dtype=xp.float64) + 0.5) * scale - 0.5
    src = xp.maximum(src, 0.0)  # torch clamps negative source coordinates to 0
    i0 = xp.minimum(xp.floor(src).astype(xp.int64), n_in - 1)
    i1 = xp.minimum(i0 + 1, n_in - 1)
    lam = (src - i0)[:, None]
    cols = xp.arange(n_in)[None, :]
    a = (cols == i0[:, None]) * (1.0 - lam) + (cols == i1[:, None]) * lam
    return a.astype(dtype)


def bilinear_taps(xp: Any, n_in: int, n_out: int, dtype: Any, scale_factor: float | None = None) -> tuple[Any, ...]:
    """The two taps of each output pixel along one axis: (i0, i1, w0, w1), the non-zero entries of
    :func:`bilinear_matrix`'s row (at the right edge, where i0 == i1, the two weights as one)."""
    scale = (1.0 / scale_factor) if scale_factor else n_in / n_out
    src = xp.maximum((xp.arange(n_out, dtype=xp.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = xp.minimum(xp.floor(src).astype(xp.int64), n_in - 1)
    i1 = xp.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    same = i0 == i1
    w0 = xp.where(same, (1.0 - lam) + lam, 1.0 - lam)  # the matrix's entry where both taps land on one pixel
    w1 = xp.where(same, 0.0, lam)
    return i0, i1, w0.astype(dtype), w1.astype(dtype)


def _apply_taps(x: Any, taps_h: tuple[Any, ...], taps_w: tuple[Any, ...]) -> Any:
    """out = A_h x A_w^T from the two non-zero entries per row: (B, H, W, C) -> (B, Ho, Wo, C)."""
    i0, i1, w0, w1 = taps_h
    y = x[:, i0] * w0[None, :, None, None] + x[:, i1] * w1[None, :, None, None]  # rows: (B, Ho, W, C)
    i0, i1, w0, w1 = taps_w
    return y[:, :, i0] * w0[None, None, :, None] + y[:, :, i1] * w1[None, None, :, None]


def nearest_matrix(xp: Any, n_in: int, n_out: int, dtype: Any, scale_factor: float | None = None) -> Any:
    """(n_out, n_in) 0/1 matrix of torch's nearest source pixel along one axis.

    torch computes scale and source index in float32 (``floorf(dst * scale)``); doing the
    same here picks the same source pixel where float64 would round the other way.
    """
    scale = np.float32(1.0) / np.float32(scale_factor) if scale_factor else np.float32(n_in) / np.float32(n_out)
    if n_out == n_in:
        src = xp.arange(n_out)
    elif n_out == 2 * n_in:
        src = xp.arange(n_out) // 2  # torch's exact shortcut for 2x
    else:
        src = xp.floor(xp.arange(n_out, dtype=xp.float32) * scale).astype(xp.int64)
    src = xp.minimum(src, n_in - 1)
    return (xp.arange(n_in)[None, :] == src[:, None]).astype(dtype)


def _apply(x: Any, a_h: Any, a_w: Any) -> Any:
    """out = A_h x A_w^T per image and channel: (B, H, W, C) -> (B, Ho, Wo, C)."""
    B, H, W, C = x.shape
    Ho, Wo = a_h.shape[0], a_w.shape[0]
    y = a_h @ x.reshape(B, H, W * C)  # (Ho, H) @ (B, H, W*C) -> (B, Ho, W*C)
    out = a_w @ y.reshape(B * Ho, W, C)  # (Wo, W) @ (B*Ho, W, C) -> (B*Ho, Wo, C)
    return out.reshape(B, Ho, Wo, C)


def resize_backward(dout: Any, cache: ResizeCache) -> Any:
    """Gradient of :func:`bilinear_resize_forward` and :func:`nearest_resize_forward`.

    Math: out = A_h x A_w^T (per image and channel) is linear in x, so
    dx = A_h^T dout A_w: the same two products with the transposed matrices. Each input
    pixel collects every output pixel's gradient times the weight it had in that output.

    Args:
        dout: (B, Ho, Wo, C).

    Returns:
        dx: (B, H, W, C).
    """
    a_h, a_w = cache
    check_dout(dout, a_h)
    B, Ho, Wo, C = dout.shape
    H, W = a_h.shape[1], a_w.shape[1]
    # BEGIN SOLUTION bilinear_resize_backward
    dy = a_w.T @ dout.reshape(B * Ho, Wo, C)  # (W, Wo) @ (B*Ho, Wo, C) -> (B*Ho, W, C)
    dx = (a_h.T @ dy.reshape(B, Ho, W * C)).reshape(B, H, W, C)  # (H, Ho) @ (B, Ho, W*C) -> (B, H, W*C)
    return dx
    # END SOLUTION


def bilinear_resize_forward(x: Any, size: Any = None, scale_factor: Any = None) -> tuple[Any, ResizeCache]:
    """Bilinear resize, equal to ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.

    Any sizes, up or down, integer or not (no antialiasing, like torch's default).

    Args:
        x: (B, H, W, C) channels-last.
        size: (Ho, Wo), or None when ``scale_factor`` is given.
        scale_factor: a positive number or a pair; Ho = floor(H * s) and, as in torch,
            the source coordinate uses 1 / s rather than H / Ho.

    Returns:
        out: (B, Ho, Wo, C); cache for :func:`bilinear_resize_backward`.
    """
    xp = get_xp(x=x)
    _check_map(x)
    (Ho, Wo), (sh, sw) = _out_size(x, size, scale_factor)
    a_h = bilinear_matrix(xp, x.shape[1], Ho, x.dtype, sh)
    a_w = bilinear_matrix(xp, x.shape[2], Wo, x.dtype, sw)
    taps_h = bilinear_taps(xp, x.shape[1], Ho, x.dtype, sh)
    taps_w = bilinear_taps(xp, x.shape[2], Wo, x.dtype, sw)
    return _apply_taps(x, taps_h, taps_w), ResizeCache(a_h, a_w)


def nearest_resize_forward(x: Any, size: Any = None, scale_factor: Any = None) -> tuple[Any, ResizeCache]:
    """Nearest resize, equal to ``torch.nn.functional.interpolate(mode="nearest")`` for any size.

    The FPN's top-down path needs it at sizes that are not exactly 2x (a 12-row map
    upsampled onto the 25 rows of the level below).

    Args:
        x: (B, H, W, C) channels-last.
        size: (Ho, Wo), or None when ``scale_factor`` is given.
        scale_factor: a positive number or a pair (torch's rule, see the module doc).

    Returns:
        out: (B, Ho, Wo, C); cache for :func:`nearest_resize_backward`.
    """
    xp = get_xp(x=x)
    _check_map(x)
    (Ho, Wo), (sh, sw) = _out_size(x, size, scale_factor)
    a_h = nearest_matrix(xp, x.shape[1], Ho, x.dtype, sh)
    a_w = nearest_matrix(xp, x.shape[2], Wo, x.dtype, sw)
    return _apply(x, a_h, a_w), ResizeCache(a_h, a_w)


bilinear_resize_backward = resize_backward
nearest_resize_backward = resize_backward


def pool_matrix(xp: Any, n_in: int, n_out: int, dtype: Any) -> Any:
    """(n_out, n_in) matrix of torch's adaptive average pooling along one axis.

    Bin i covers input indices [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out)) (integer
    arithmetic, as torch's ``start_index`` / ``end_index``) and row i averages them.
    """
    i = np.arange(n_out)
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)  # ceil((i + 1) * n_in / n_out)
    cols = np.arange(n_in)[None, :]
    inside = (cols >= start[:, None]) & (cols < end[:, None])
    return xp.asarray(inside / (end - start)[:, None], dtype=dtype)


def adaptive_avg_pool_forward(x: Any, output_size: Any) -> tuple[Any, ResizeCache]:
    """Adaptive average pooling, equal to ``torch.nn.functional.adaptive_avg_pool2d``.

    UPerNet's pyramid pooling module pools the last stage's map to 1x1, 2x2, 3x3 and 6x6.
    Each output pixel is the mean of its bin (torch's bin boundaries: see :func:`pool_matrix`);
    like a resize it is separable, out = A_h x A_w^T per image and channel.

    Args:
        x: (B, H, W, C) channels-last.
        output_size: (Ho, Wo), or one int for a square; any size (also larger than the map,
            where bins repeat input pixels, as torch).

    Returns:
        out: (B, Ho, Wo, C); cache for :func:`adaptive_avg_pool_backward` (the pooling matrices).
    """
    xp = get_xp(x=x)
    _check_map(x)
    size = (output_size, output_size) if isinstance(output_size, (int, np.integer)) else output_size
    Ho, Wo = _check_size(size)
    a_h = pool_matrix(xp, x.shape[1], Ho, x.dtype)
    a_w = pool_matrix(xp, x.shape[2], Wo, x.dtype)
    return _apply(x, a_h, a_w), ResizeCache(a_h, a_w)


# the pooling is linear with the matrices A_h, A_w: dx = A_h^T dout A_w, the resizes' backward
adaptive_avg_pool_backward = resize_backward


class Upsample2xCache(NamedTuple):
    x_shape: tuple[int, int, int, int]  # (B, H, W, C)


def nearest_upsample2x_forward(x: Any) -> tuple[Any, Upsample2xCache]:
    """Nearest 2x upsampling: every pixel becomes a 2x2 block.

    Equal to ``torch.nn.functional.interpolate(scale_factor=2, mode="nearest")``.

    Args:
        x: (B, H, W, C).

    Returns:
        out: (B, 2H, 2W, C) with out[b, 2i + u, 2j + v] = x[b, i, j] for u, v in {0, 1}.
    """
    xp = get_xp(x=x)
    _check_map(x)
    B, H, W, C = x.shape
    out = xp.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C)).reshape(B, 2 * H, 2 * W, C)
    return out, Upsample2xCache((B, H, W, C))


def nearest_upsample2x_backward(dout: Any, cache: Upsample2xCache) -> Any:
    """Each input pixel was copied to four outputs, so its gradient is the sum of its 2x2 block.

    Returns:
        dx: (B, H, W, C).
    """
    B, H, W, C = cache.x_shape
    if tuple(dout.shape) != (B, 2 * H, 2 * W, C):
        raise ValueError(f"'dout' must have shape {(B, 2 * H, 2 * W, C)}, got {tuple(dout.shape)}")
    return dout.reshape(B, H, 2, W, 2, C).sum(axis=(2, 4))
