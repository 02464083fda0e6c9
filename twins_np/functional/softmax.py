"""Softmax over one axis, with its Jacobian-vector product.

Over the last axis (attention's case) both passes run on blocks of rows through
:func:`~twins_np.backend.map_blocks`: one cache-sized block at a time on the CPU, one
call on the GPU. Any other axis is computed on the whole array at once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import kernels
from ..backend import get_xp, map_blocks, row_sums, use_fused
from ._checks import check_dout, check_float


class SoftmaxCache(NamedTuple):
    y: Any  # the softmax output; the backward needs nothing else
    axis: int


def softmax_forward(x: Any, axis: int = -1) -> tuple[Any, SoftmaxCache]:
    """Numerically stable softmax.

    The row maximum is subtracted first, so ``exp`` never overflows even for logits of
    1e4; the result is unchanged because softmax is invariant to adding a constant.

    Args:
        x: array of any shape.
        axis: the axis that sums to one.

    Returns:
        y: same shape as x; cache for :func:`softmax_backward`.
    """
    check_float("x", x)
    xp = get_xp(x)
    if use_fused(x, "softmax") and axis in (-1, x.ndim - 1) and x.ndim > 0:  # twins_np/kernels/softmax_cpu.py or softmax.cu
        y = kernels.for_array(x).softmax_forward(x)
        return y, SoftmaxCache(y, axis)
    y = xp.empty(x.shape, dtype=x.dtype)  # C order, so its reshape below is a view
    if axis in (-1, x.ndim - 1) and x.ndim > 0:
        n = x.shape[-1]
        map_blocks(_softmax_rows, x.reshape(-1, n), out=y.reshape(-1, n))
    else:
        _softmax_rows(x, out=y, axis=axis)
    return y, SoftmaxCache(y, axis)


def _softmax_rows(x: Any, out: Any, axis: int = -1) -> None:
    """Writes softmax(x) along ``axis`` into out."""
    xp = get_xp(x)
    xp.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    xp.exp(out, out=out)
    out /= _sum(out, axis)


def _sum(a: Any, axis: int) -> Any:
    """a.sum(axis, keepdims=True); over the last axis through the faster BLAS row_sums."""
    return row_sums(a) if axis in (-1, a.ndim - 1) else a.sum(axis=axis, keepdims=True)


def softmax_backward(dout: Any, cache: SoftmaxCache) -> Any:
    """Jacobian-vector product of softmax, without forming the Jacobian.

    Args:
        dout: upstream gradient, the shape and dtype of the forward's output y.
        cache: the forward's :class:`SoftmaxCache`: y (the softmax) and the axis it ran over.

    Returns:
        dx: the shape and dtype of dout.

    Math:
        J = diag(y) - y y^T, so  dx = J^T dout = y * (dout - sum(dout * y)).
    """
    y, axis = cache
    xp = check_dout(dout, y)
    last = axis in (-1, y.ndim - 1) and y.ndim > 0
    if use_fused(dout, "softmax") and last:  # twins_np/kernels/softmax_cpu.py or softmax.cu
        return kernels.for_array(dout).softmax_backward(dout, y)

    # BEGIN SOLUTION attention_backward
    def rows(d: Any, y_: Any, out: Any, ax: int = -1) -> None:  # y * (dout - sum(dout * y)) along ax, into out
        xp.multiply(d, y_, out=out)
        out -= y_ * _sum(out, ax)

    dx = xp.empty(y.shape, dtype=dout.dtype)
    if last:  # in cache-sized blocks of rows
        n = y.shape[-1]
        map_blocks(rows, dout.reshape(-1, n), y.reshape(-1, n), out=dx.reshape(-1, n))
    else:
        rows(dout, y, out=dx, ax=axis)
    return dx
    # END SOLUTION
