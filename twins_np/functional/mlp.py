"""The feed-forward network (FFN / timm's Mlp): fc1 -> exact GELU -> fc2.

(B, N, C) -> fc1 -> (B, N, rC) -> GELU -> fc2 -> (B, N, C)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_xp
from .activation import GeluCache, gelu_backward, gelu_forward
from .linear import LinearCache, linear_backward, linear_forward


class MlpCache(NamedTuple):
    fc1: LinearCache
    act: GeluCache
    fc2: LinearCache


def mlp_forward(x: Any, fc1_w: Any, fc1_b: Any, fc2_w: Any, fc2_b: Any) -> tuple[Any, MlpCache]:
    """FFN with exact GELU.

    Args:
        x: (..., C).
        fc1_w: (rC, C), fc1_b: (rC,); fc2_w: (C_out, rC), fc2_b: (C_out,).

    Returns:
        out: (..., C_out); cache for :func:`mlp_backward`.
    """
    get_xp(x=x, fc1_w=fc1_w, fc1_b=fc1_b, fc2_w=fc2_w, fc2_b=fc2_b)  # every device, before any work
    h, c1 = linear_forward(x, fc1_w, fc1_b)
    a, ca = gelu_forward(h)
    out, c2 = linear_forward(a, fc2_w, fc2_b)
    return out, MlpCache(c1, ca, c2)


def mlp_backward(dout: Any, cache: MlpCache) -> tuple[Any, Any, Any, Any, Any]:
    """Gradients of :func:`mlp_forward`.

    Args:
        dout: upstream gradient (..., C_out), the forward's output shape and dtype.
        cache: the forward's :class:`MlpCache`: the caches of its three steps, fc1
            (a :class:`LinearCache`), act (a :class:`GeluCache`) and fc2 (a :class:`LinearCache`).

    Returns:
        dx (..., C), dfc1_w (rC, C), dfc1_b (rC,), dfc2_w (C_out, rC), dfc2_b (C_out,).

    Math:
        out = fc2(gelu(fc1(x))): the chain rule through the three steps, last first.
    """
    # BEGIN SOLUTION ffn_backward
    da, dfc2_w, dfc2_b = linear_backward(dout, cache.fc2)
    dh = gelu_backward(da, cache.act)
    dx, dfc1_w, dfc1_b = linear_backward(dh, cache.fc1)
    return dx, dfc1_w, dfc1_b, dfc2_w, dfc2_b
    # END SOLUTION
