"""Softmax over one axis, with its Jacobian-vector product."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_xp
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
    xp = get_xp(x)
    y = x - x.max(axis=axis, keepdims=True)
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y, SoftmaxCache(y, axis)


def softmax_backward(dout: Any, cache: SoftmaxCache) -> Any:
    """Jacobian-vector product of softmax, without forming the Jacobian.

    Math:
        J = diag(y) - y y^T, so  dx = J^T dout = y * (dout - sum(dout * y)).
    """
    # BEGIN SOLUTION attention_backward
    y, axis = cache
    dx = dout * y
    s = dx.sum(axis=axis, keepdims=True)
    dx -= y * s
    return dx
    # END SOLUTION
