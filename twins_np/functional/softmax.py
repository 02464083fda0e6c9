"""Softmax over one axis, with its Jacobian-vector product.

Over the last axis (attention's case) both passes run on blocks of rows through
:func:`~twins_np.backend.map_blocks`: cache-sized blocks on all CPU cores, one call on
the GPU. Any other axis is computed on the whole array at once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_xp, map_blocks
from ._checks import check_float


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
    if axis in (-1, x.ndim - 1) and x.ndim > 0:
        y = map_blocks(_softmax_rows, x.reshape(-1, x.shape[-1])).reshape(x.shape)
    else:
        y = _softmax_rows(x, axis)
    return y, SoftmaxCache(y, axis)


def _softmax_rows(x: Any, axis: int = -1) -> Any:
    xp = get_xp(x)
    y = x - x.max(axis=axis, keepdims=True)
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def softmax_backward(dout: Any, cache: SoftmaxCache) -> Any:
    """Jacobian-vector product of softmax, without forming the Jacobian.

    Math:
        J = diag(y) - y y^T, so  dx = J^T dout = y * (dout - sum(dout * y)).
    """
    y, axis = cache
    if axis in (-1, y.ndim - 1) and y.ndim > 0:
        n = y.shape[-1]
        return map_blocks(_softmax_rows_backward, dout.reshape(-1, n), y.reshape(-1, n)).reshape(y.shape)
    return _softmax_rows_backward(dout, y, axis)


def _softmax_rows_backward(dout: Any, y: Any, axis: int = -1) -> Any:
    # BEGIN SOLUTION attention_backward
    dx = dout * y
    s = dx.sum(axis=axis, keepdims=True)
    dx -= y * s
    return dx
    # END SOLUTION
