"""The general 2-D convolution: k x k kernel, any stride, zero padding, groups = 1.

Twins itself needs only two special convolutions, :mod:`twins_np.functional.patch_conv`
(kernel = stride, no padding) and :mod:`twins_np.functional.depthwise_conv` (the PEG); a
dense-prediction head (the FPN neck's 3x3 output convs, the semantic head's 3x3 convs, the
1x1 lateral convs and classifier) needs overlapping windows and zero padding.

Notation: x (B, H, W, C_in) channels-last, as every twins-np conv; weight (C_out, C_in, k, k)
in PyTorch's layout; stride s, padding p; the padded map is Hp x Wp = (H + 2p) x (W + 2p) and
the output Ho x Wo with Ho = (Hp - k) // s + 1 (PyTorch's floor: rows of the padded map that no
window reaches get zero gradient).

How: "im2col" built from k*k strided slices. ``cols[b, i, j, u, v, c] = xpad[b, s*i + u,
s*j + v, c]`` is filled by k*k slice copies (one per tap (u, v), each a whole (B, Ho, Wo, C_in)
slab), then the conv is one matrix product ``cols (B*Ho*Wo, k*k*C_in) @ wmat (k*k*C_in, C_out)``
with ``wmat = w`` transposed to (u, v, c, o) order. No ``np.add.at``, no loop over pixels:
the same lines run on NumPy and CuPy. A 1x1 conv with stride 1 and no padding is a Linear
over the channels, one matmul on x itself.

The cache keeps x (a reference, no copy), not the k^2-times-larger cols: the backward
rebuilds them. Both passes work on a few images at a time so that cols stays near
``_COLS_BYTES``, not k^2 times the whole batch.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

from ..backend import get_xp, is_cupy_array
from ._checks import check_dout, check_float, check_ndim, check_same_dtype

# Bytes of cols built at once on the CPU: large enough for an efficient matmul (thousands of
# rows), small enough that a 3x3 conv on a big map does not hold 9 copies of the whole batch.
_COLS_BYTES = 64 * 2**20


class Conv2dCache(NamedTuple):
    x: Any  # (B, H, W, C_in) the input, read again to rebuild cols for dW
    w: Any  # (C_out, C_in, k, k)
    stride: int
    padding: int


def _as_int(name: str, value: Any, low: int) -> int:
    """An integer >= low (bools and floats refused), or a ValueError naming the argument."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"conv2d: {name} must be an integer >= {low}, got {value!r}") from None
    if v < low:
        raise ValueError(f"conv2d: {name} must be an integer >= {low}, got {v}")
    return int(v)


def _out_size(H: int, W: int, k: int, stride: int, padding: int) -> tuple[int, int]:
    """(Ho, Wo), or a ValueError when the kernel does not fit the padded map."""
    Hp, Wp = H + 2 * padding, W + 2 * padding
    if k > Hp or k > Wp:
        raise ValueError(
            f"conv2d: kernel_size {k} is larger than the padded input {Hp}x{Wp} "
            f"({H}x{W} with padding {padding}); the output would be empty"
        )
    return (Hp - k) // stride + 1, (Wp - k) // stride + 1


def _weight_matrix(w: Any) -> Any:
    """(C_out, C_in, k, k) -> (k*k*C_in, C_out), rows in (u, v, c) order like cols' columns."""
    Cout, Cin, k, _ = w.shape
    return w.transpose(2, 3, 1, 0).reshape(k * k * Cin, Cout)


def _image_blocks(x: Any, Ho: int, Wo: int, k: int) -> list[slice]:
    """Slices of the batch axis whose cols take about _COLS_BYTES each (one block on the GPU)."""
    B, Cin = x.shape[0], x.shape[3]
    per_image = max(1, Ho * Wo * k * k * Cin * x.itemsize)
    step = B if is_cupy_array(x) else max(1, _COLS_BYTES // per_image)
    return [slice(i, min(i + step, B)) for i in range(0, B, step)]


def _im2col(x: Any, k: int, stride: int, padding: int, Ho: int, Wo: int) -> Any:
    """cols (n*Ho*Wo, k*k*C_in): row (b, i, j) holds the window under output pixel (i, j).

    cols[b, i, j, u, v, c] = xpad[b, s*i + u, s*j + v, c], one strided slice per tap.
    """
    xp = get_xp(x)
    n, H, W, Cin = x.shape
    if padding:
        xpad = xp.zeros((n, H + 2 * padding, W + 2 * padding, Cin), dtype=x.dtype)
        xpad[:, padding : padding + H, padding : padding + W, :] = x
    else:
        xpad = x
    cols = xp.empty((n, Ho, Wo, k, k, Cin), dtype=x.dtype)
    hi, wi = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1  # extent of one tap's slice
    for u in range(k):
        for v in range(k):
            cols[:, :, :, u, v, :] = xpad[:, u : u + hi : stride, v : v + wi : stride, :]
    return cols.reshape(n * Ho * Wo, k * k * Cin)


def _col2im(dcols: Any, x_shape: tuple[int, ...], k: int, stride: int, padding: int, Ho: int, Wo: int) -> Any:
    """The transpose of :func:`_im2col`: every tap's gradient added back where it was read.

    Windows overlap when stride < k, so one pixel receives up to (k/s)^2 contributions: a
    sum over the k*k taps of strided slice additions, then the padding is cropped away.
    """
    xp = get_xp(dcols)
    n, H, W, Cin = x_shape
    dcols = dcols.reshape(n, Ho, Wo, k, k, Cin)
    dxpad = xp.zeros((n, H + 2 * padding, W + 2 * padding, Cin), dtype=dcols.dtype)
    hi, wi = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    for u in range(k):
        for v in range(k):
            dxpad[:, u : u + hi : stride, v : v + wi : stride, :] += dcols[:, :, :, u, v, :]
    return dxpad[:, padding : padding + H, padding : padding + W, :]


def conv2d_forward(x: Any, w: Any, b: Any | None = None, stride: int = 1, padding: int = 0) -> tuple[Any, Conv2dCache]:
    """2-D convolution (cross-correlation, as PyTorch), channels-last, groups = 1.

    out[b, i, j, o] = bias[o] + sum_{c, u, v} xpad[b, s*i + u, s*j + v, c] * w[o, c, u, v]

    with xpad = x zero-padded by ``padding`` on every side.

    Args:
        x: (B, H, W, C_in).
        w: (C_out, C_in, k, k), PyTorch's layout.
        b: (C_out,) or None.
        stride: s >= 1.
        padding: p >= 0 zero rows/columns on each side.

    Returns:
        out: (B, Ho, Wo, C_out) with Ho = (H + 2p - k) // s + 1 (same for Wo); cache for
        :func:`conv2d_backward`.

    Raises:
        ValueError: wrong shapes (x not 4-D, weight not (C_out, C_in, k, k) with x's C_in,
            bias not (C_out,)), stride < 1, padding < 0, or k larger than the padded map.
        TypeError: non-float arrays, mixed dtypes, or NumPy mixed with CuPy.
    """
    xp = get_xp(x=x, weight=w, bias=b)
    check_float("x", x)
    check_float("weight", w)
    check_ndim("x", x, 4, "(B, H, W, C_in)")
    check_ndim("weight", w, 4, "(C_out, C_in, k, k)")
    check_same_dtype(x=x, weight=w, bias=b)
    stride, padding = _as_int("stride", stride, 1), _as_int("padding", padding, 0)
    B, H, W, Cin = x.shape
    Cout, Cin_w, k, k2 = w.shape
    if k != k2:
        raise ValueError(f"conv2d: 'weight' must have a square k x k kernel, got shape {tuple(w.shape)}")
    if Cin_w != Cin:
        raise ValueError(
            f"conv2d: x has C_in = {Cin} channels (shape {tuple(x.shape)}, channels-last) "
            f"but 'weight' of shape {tuple(w.shape)} expects C_in = {Cin_w}"
        )
    if b is not None and tuple(b.shape) != (Cout,):
        raise ValueError(f"conv2d: 'bias' must have shape ({Cout},), got {tuple(b.shape)}")
    Ho, Wo = _out_size(H, W, k, stride, padding)
    wmat = _weight_matrix(w)
    if k == 1 and stride == 1 and padding == 0:
        out = (x.reshape(-1, Cin) @ wmat).reshape(B, H, W, Cout)  # a Linear over the channels
    else:
        out = xp.empty((B, Ho, Wo, Cout), dtype=x.dtype)
        for blk in _image_blocks(x, Ho, Wo, k):
            cols = _im2col(x[blk], k, stride, padding, Ho, Wo)
            out[blk] = (cols @ wmat).reshape(-1, Ho, Wo, Cout)
    if b is not None:
        out += b
    return out, Conv2dCache(x, w, stride, padding)


def conv2d_backward(dout: Any, cache: Conv2dCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`conv2d_forward`.

    Math: with cols the im2col matrix and wmat the (k*k*C_in, C_out) weight,
    out = cols wmat + b, a Linear on the windows, so::

        dwmat = cols^T dout,   db = sum_{b,i,j} dout,   dcols = dout wmat^T

    and dx = col2im(dcols): each tap's slice of dcols is added back at the pixels it was
    read from (overlapping windows sum), then the padding is cropped.

    Args:
        dout: (B, Ho, Wo, C_out).
        cache: from :func:`conv2d_forward`.

    Returns:
        dx (B, H, W, C_in), dw (C_out, C_in, k, k), db (C_out,).
    """
    x, w, stride, padding = cache
    xp = check_dout(dout, x)
    B, H, W, Cin = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = dout.shape[1], dout.shape[2]
    if tuple(dout.shape) != (B, Ho, Wo, Cout) or (Ho, Wo) != _out_size(H, W, k, stride, padding):
        raise ValueError(
            f"conv2d_backward: dout must have the forward's output shape {(B, *_out_size(H, W, k, stride, padding), Cout)}, "
            f"got {tuple(dout.shape)}"
        )
    wmat = _weight_matrix(w)
    db = dout.reshape(-1, Cout).sum(axis=0)
    if k == 1 and stride == 1 and padding == 0:
        d2 = dout.reshape(-1, Cout)
        dx = (d2 @ wmat.T).reshape(B, H, W, Cin)
        dwmat = x.reshape(-1, Cin).T @ d2
    else:
        dx = xp.empty((B, H, W, Cin), dtype=dout.dtype)
        dwmat = xp.zeros_like(wmat)
        for blk in _image_blocks(x, Ho, Wo, k):
            cols = _im2col(x[blk], k, stride, padding, Ho, Wo)
            d2 = dout[blk].reshape(-1, Cout)
            dwmat += cols.T @ d2
            dx[blk] = _col2im(d2 @ wmat.T, x[blk].shape, k, stride, padding, Ho, Wo)
    dw = xp.ascontiguousarray(dwmat.reshape(k, k, Cin, Cout).transpose(3, 2, 0, 1))
    return dx, dw, db
