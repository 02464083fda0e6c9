"""Linear (fully connected) layer: ``y = x W^T + b``.

Notation: x has shape (..., D_in); the weight is stored as timm/PyTorch store it,
(D_out, D_in). All leading axes are treated as a batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_xp
from ._checks import check_dout, check_float, check_same_dtype


class LinearCache(NamedTuple):
    x: Any  # (..., D_in) input, needed for dW
    w: Any  # (D_out, D_in), needed for dx


def linear_forward(x: Any, w: Any, b: Any | None = None) -> tuple[Any, LinearCache]:
    """Affine map over the last axis.

    Args:
        x: (..., D_in) input.
        w: (D_out, D_in) weight.
        b: (D_out,) bias, or None.

    Returns:
        out: (..., D_out); cache for :func:`linear_backward`.
    """
    get_xp(x=x, weight=w, bias=b)
    check_float("x", x)
    check_same_dtype(x=x, weight=w, bias=b)
    if w.ndim != 2 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear: x has {x.shape[-1]} input features (shape {tuple(x.shape)}) but the "
            f"weight expects {w.shape[1] if w.ndim == 2 else '?'} (weight shape {tuple(w.shape)})"
        )
    # One (M, D_in) x (D_in, D_out) product over all leading axes: a 3-D/4-D ``x @ w.T``
    # would broadcast into a batch of many small matrix products, several times slower.
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"linear: bias must have shape ({w.shape[0]},) to match the weight, got {tuple(b.shape)}")
    out = x.reshape(-1, x.shape[-1]) @ w.T
    if b is not None:
        out += b
    return out.reshape(*x.shape[:-1], w.shape[0]), LinearCache(x, w)


def linear_backward(dout: Any, cache: LinearCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`linear_forward`.

    Math:
        dx = dout W,  dW = sum_batch dout^T x,  db = sum_batch dout.

    Returns:
        dx (..., D_in), dw (D_out, D_in), db (D_out,).
    """
    x, w = cache
    check_dout(dout, w)
    d_out = w.shape[0]
    dout2 = dout.reshape(-1, d_out)
    dx = (dout2 @ w).reshape(x.shape)
    dw = dout2.T @ x.reshape(-1, x.shape[-1])
    db = dout2.sum(axis=0)
    return dx, dw, db
