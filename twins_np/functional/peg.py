"""Positional encoding generator (PEG), CPVT's conditional position encoding.

A 3x3 depthwise conv over the token map plus the identity:

    out = x + DWConv3x3(x as (B, H, W, C))        (B, N, C) -> (B, N, C)

Twins applies it once per stage, right after the stage's first block. Because the conv
sees zero padding at the borders, tokens learn where they are (CPVT's argument).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_xp
from ._checks import check_tokens
from .depthwise_conv import DWConvCache, depthwise_conv3x3_backward, depthwise_conv3x3_forward


class PEGCache(NamedTuple):
    conv: DWConvCache
    size: tuple[int, int]


def peg_forward(x: Any, size: tuple[int, int], w: Any, b: Any | None) -> tuple[Any, PEGCache]:
    """PEG: depthwise 3x3 conv (padding 1) plus the residual.

    Args:
        x: (B, N, C) tokens, N = H*W.
        size: (H, W).
        w: (C, 1, 3, 3) depthwise weight (timm's ``pos_block.{s}.proj.0.weight``).
        b: (C,) bias.

    Returns:
        out: (B, N, C); cache for :func:`peg_backward`.
    """
    get_xp(x=x, w=w, b=b)
    B, H, W, C = check_tokens("x", x, size)
    y, conv_cache = depthwise_conv3x3_forward(x.reshape(B, H, W, C), w, b)
    y = y.reshape(B, H * W, C)
    y += x  # the residual
    return y, PEGCache(conv_cache, (H, W))


def peg_backward(dout: Any, cache: PEGCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`peg_forward`: dx = dout (residual) + conv backward.

    Returns:
        dx (B, N, C), dw (C, 1, 3, 3), db (C,).
    """
    # BEGIN SOLUTION peg_backward
    conv_cache, (H, W) = cache
    B, N, C = dout.shape
    dx4, dw, db = depthwise_conv3x3_backward(dout.reshape(B, H, W, C), conv_cache)
    dx = dx4.reshape(B, N, C)
    dx += dout
    return dx, dw, db
    # END SOLUTION
