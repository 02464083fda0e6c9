"""Locally-grouped self-attention (LSA), Twins-SVT section 3.2.

Tokens attend only to the tokens of their own ws x ws window:

    x (B, N, C) -> pad + partition  -> windows (B, nW, T, C), T = ws*ws
                -> qkv Linear        -> (B, nW, T, 3C) -> q, k, v (B, nW, heads, T, hd)
                -> attention core    -> (B, nW, heads, T, hd) -> merge heads (B, nW, T, C)
                -> reverse + crop    -> (B, N, C)
                -> proj Linear       -> (B, N, C)

The backward runs the same chain in reverse, each step's backward next to the
forward it undoes. By default padded tokens are keys/values too (not masked), as in timm;
``pad_mask="mmseg"`` adds mmsegmentation's additive mask to the scores
(:func:`twins_np.functional.window_pad_mask`), a constant that leaves the backward as it is.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..backend import get_xp
from ._checks import check_heads, check_weight
from .attention import (
    AttentionCache,
    attention_backward,
    attention_forward,
    merge_heads,
    split_heads,
)
from .linear import LinearCache, linear_backward, linear_forward
from .windows import (
    WindowCache,
    window_pad_mask,
    window_partition_backward,
    window_partition_forward,
    window_reverse_backward,
    window_reverse_forward,
)


class LSACache(NamedTuple):
    partition: WindowCache
    qkv: LinearCache
    attn: AttentionCache
    reverse: WindowCache
    proj: LinearCache
    num_heads: int


def split_qkv(qkv: Any, parts: int, num_heads: int) -> list[Any]:
    """(..., T, parts*C) -> ``parts`` arrays (..., heads, T, hd).

    The feature axis is laid out [parts][heads][hd], as timm's qkv / kv Linears.
    """
    *lead, T, F = qkv.shape
    hd = F // (parts * num_heads)
    x = qkv.reshape(*lead, T, parts, num_heads, hd)
    n = len(lead)
    # (..., T, parts, heads, hd) -> (parts, ..., heads, T, hd)
    axes = (n + 1, *range(n), n + 2, n, n + 3)
    x = x.transpose(axes)
    return [x[i] for i in range(parts)]


def join_qkv(grads: list[Any]) -> Any:
    """Inverse of :func:`split_qkv` for gradients: [(..., heads, T, hd)] -> (..., T, parts*C)."""
    xp = get_xp(*grads)
    g = xp.stack(grads)  # (parts, ..., heads, T, hd)
    n = g.ndim - 4  # number of leading batch axes
    # (parts, ..., heads, T, hd) -> (..., T, parts, heads, hd)
    axes = (*range(1, n + 1), n + 2, 0, n + 1, n + 3)
    g = g.transpose(axes)
    return g.reshape(*g.shape[:-3], -1)


def lsa_forward(
    x: Any,
    size: tuple[int, int],
    qkv_w: Any,
    qkv_b: Any,
    proj_w: Any,
    proj_b: Any,
    num_heads: int,
    ws: int,
    attn_drop: float = 0.0,
    rng: np.random.Generator | None = None,
    training: bool = True,
    pad_mask: str | None = None,
) -> tuple[Any, LSACache]:
    """Locally-grouped self-attention.

    Args:
        x: (B, N, C) tokens, N = H*W.
        size: (H, W).
        qkv_w: (3C, C), qkv_b: (3C,)  — timm's ``attn.qkv``.
        proj_w: (C, C), proj_b: (C,)  — timm's ``attn.proj``.
        num_heads: heads; C must be divisible by it.
        ws: window size (7 in Twins-SVT).
        attn_drop, rng, training: dropout on the attention probabilities.
        pad_mask: None (timm: padded tokens are ordinary keys), or a rule of
            :func:`twins_np.functional.window_pad_mask` (``"mmseg"``, ``"padded"``) whose
            additive mask keeps real queries off padded keys.

    Returns:
        out: (B, N, C); cache for :func:`lsa_backward`.
    """
    get_xp(x=x, qkv_w=qkv_w, qkv_b=qkv_b, proj_w=proj_w, proj_b=proj_b)  # every device, before any work
    C = x.shape[-1]
    scale = float(check_heads(C, num_heads)) ** -0.5
    check_weight("qkv_w", qkv_w, (3 * C, C))
    check_weight("proj_w", proj_w, (C, C))
    win, part_cache = window_partition_forward(x, size, ws)  # (B, nW, T, C)
    qkv, qkv_cache = linear_forward(win, qkv_w, qkv_b)  # (B, nW, T, 3C)
    q, k, v = split_qkv(qkv, 3, num_heads)  # (B, nW, heads, T, hd)
    mask = None if pad_mask is None else window_pad_mask(size, ws, pad_mask, get_xp(x), x.dtype)  # (nW, 1, T, T)
    o, attn_cache = attention_forward(q, k, v, scale, attn_drop, rng, training=training, attn_mask=mask)
    o = merge_heads(o)  # (B, nW, T, C)
    y, rev_cache = window_reverse_forward(o, size, ws)  # (B, N, C): padded queries cropped
    out, proj_cache = linear_forward(y, proj_w, proj_b)
    return out, LSACache(part_cache, qkv_cache, attn_cache, rev_cache, proj_cache, num_heads)


def lsa_backward(dout: Any, cache: LSACache) -> tuple[Any, Any, Any, Any, Any]:
    """Gradients of :func:`lsa_forward`, each step undone in reverse order.

    Returns:
        dx (B, N, C), dqkv_w (3C, C), dqkv_b (3C,), dproj_w (C, C), dproj_b (C,).
    """
    # BEGIN SOLUTION lsa_backward
    part_cache, qkv_cache, attn_cache, rev_cache, proj_cache, num_heads = cache
    dy, dproj_w, dproj_b = linear_backward(dout, proj_cache)
    do = window_reverse_backward(dy, rev_cache)  # cropped (padded) queries get 0
    dq, dk, dv = attention_backward(split_heads(do, num_heads), attn_cache)
    dqkv = join_qkv([dq, dk, dv])
    dwin, dqkv_w, dqkv_b = linear_backward(dqkv, qkv_cache)
    dx = window_partition_backward(dwin, part_cache)  # the pad's backward is a slice
    return dx, dqkv_w, dqkv_b, dproj_w, dproj_b
    # END SOLUTION
