"""Global sub-sampled attention (GSA), Twins section 3.2 (PVT's spatial reduction).

Every token is a query; the keys and values come from a sub-sampled summary of the
map, so the cost is N * Ns instead of N^2:

    q  = Linear_q(x)                                 (B, N, C) -> heads
    s  = LayerNorm(conv_{k=s=sr}(x as B,H,W,C))      (B, Ns, C), Ns = (H//sr)(W//sr)   [sr > 1]
    s  = x                                           [sr == 1: plain global MHSA, no LN]
    k, v = Linear_kv(s)                              (B, Ns, 2C) -> heads
    out = Linear_proj(attention(q, k, v))            (B, N, C)

The number of queries stays N, so the output has the input's size. The sub-sampling
conv floors, so trailing rows/columns of a map not divisible by sr feed no key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..backend import get_xp
from ._checks import check_heads, check_tokens, check_weight
from .attention import AttentionCache, attention_backward, attention_forward, merge_heads, split_heads
from .layernorm import LayerNormCache, layernorm_backward, layernorm_forward
from .linear import LinearCache, linear_backward, linear_forward
from .lsa import join_qkv, split_qkv
from .subsample import SUBSAMPLE_PARAMS, SubsampleCache, subsample_backward, subsample_forward


class GSACache(NamedTuple):
    q: LinearCache
    sr: SubsampleCache | None  # None when sr == 1
    norm: LayerNormCache | None
    kv: LinearCache
    attn: AttentionCache
    proj: LinearCache
    num_heads: int
    size: tuple[int, int]
    sr_ratio: int


def gsa_forward(
    x: Any,
    size: tuple[int, int],
    q_w: Any,
    q_b: Any,
    kv_w: Any,
    kv_b: Any,
    proj_w: Any,
    proj_b: Any,
    num_heads: int,
    sr_ratio: int = 1,
    sr_params: Sequence[Any] = (),
    norm_w: Any | None = None,
    norm_b: Any | None = None,
    norm_eps: float = 1e-5,
    attn_drop: float = 0.0,
    rng: np.random.Generator | None = None,
    training: bool = True,
    sr_mode: str = "conv",
) -> tuple[Any, GSACache]:
    """Global sub-sampled attention.

    Args:
        x: (B, N, C) tokens, N = H*W.
        size: (H, W).
        q_w (C, C), q_b (C,); kv_w (2C, C), kv_b (2C,); proj_w (C, C), proj_b (C,).
        num_heads: heads; C must be divisible by it.
        sr_ratio: sub-sampling ratio; 1 means keys/values are all N tokens.
        sr_params: the sub-sampling function's parameters (sr > 1 only), a tuple in the order
            of ``SUBSAMPLE_PARAMS[sr_mode]``: ``(sr_w (C, C, sr, sr), sr_b (C,))`` for
            timm's conv, ``()`` for average pooling, ``(dw_w (C, 1, sr, sr), dw_b (C,),
            pw_w (C, C), pw_b (C,))`` for the separable one; see
            :mod:`twins_np.functional.subsample`.
        norm_w, norm_b (C,): LayerNorm after the sub-sampling, eps ``norm_eps`` (1e-5 in timm).
        attn_drop, rng, training: dropout on the attention probabilities.
        sr_mode: the sub-sampling function (sr > 1): ``"conv"`` (timm's), ``"avg"`` or ``"sep"``.

    Returns:
        out: (B, N, C); cache for :func:`gsa_backward`.
    """
    # every array's device first, named as here (the sub-sampling's by SUBSAMPLE_PARAMS)
    sr_named = dict(zip(SUBSAMPLE_PARAMS.get(sr_mode, ()), sr_params)) if sr_ratio != 1 else {}
    get_xp(x=x, q_w=q_w, q_b=q_b, kv_w=kv_w, kv_b=kv_b, proj_w=proj_w, proj_b=proj_b, **sr_named, norm_w=norm_w, norm_b=norm_b)
    B, H, W, C = check_tokens("x", x, size)
    scale = float(check_heads(C, num_heads)) ** -0.5
    check_weight("q_w", q_w, (C, C))
    check_weight("kv_w", kv_w, (2 * C, C))
    check_weight("proj_w", proj_w, (C, C))
    if int(sr_ratio) != sr_ratio or sr_ratio < 1:
        raise ValueError(f"sr_ratio must be a positive integer, got {sr_ratio!r}")
    q, q_cache = linear_forward(x, q_w, q_b)
    sr_cache = norm_cache = None
    if sr_ratio > 1:
        if sr_mode not in SUBSAMPLE_PARAMS:
            raise ValueError(f"sub-sampling mode must be one of {tuple(SUBSAMPLE_PARAMS)}, got {sr_mode!r}")
        names = SUBSAMPLE_PARAMS[sr_mode]
        if norm_w is None or norm_b is None or len(sr_params) != len(names) or (names and sr_params[0] is None):
            what = ", ".join((*([f"sr_params = ({', '.join(names)})"] if names else []), "norm_w", "norm_b"))
            raise ValueError(f"gsa with sr_ratio > 1 needs {what} (sr_mode {sr_mode!r})")
        if sr_ratio > H or sr_ratio > W:
            raise ValueError(
                f"GSA sub-sampling ratio sr = {sr_ratio} is larger than the {H}x{W} map: "
                f"no key would remain (use a larger input or a smaller sr_ratio)"
            )
        if sr_mode == "conv":
            check_weight("sr_w", sr_params[0], (C, C, sr_ratio, sr_ratio))
        s, sr_cache = subsample_forward(x.reshape(B, H, W, C), sr_mode, sr_ratio, tuple(sr_params))
        s, norm_cache = layernorm_forward(s.reshape(B, -1, C), norm_w, norm_b, norm_eps)
    else:
        s = x
    kv, kv_cache = linear_forward(s, kv_w, kv_b)  # (B, Ns, 2C)
    k, v = split_qkv(kv, 2, num_heads)  # (B, heads, Ns, hd)
    o, attn_cache = attention_forward(split_heads(q, num_heads), k, v, scale, attn_drop, rng, training=training)
    out, proj_cache = linear_forward(merge_heads(o), proj_w, proj_b)
    cache = GSACache(q_cache, sr_cache, norm_cache, kv_cache, attn_cache, proj_cache, num_heads, (H, W), int(sr_ratio))
    return out, cache


def gsa_backward(dout: Any, cache: GSACache) -> tuple[Any, ...]:
    """Gradients of :func:`gsa_forward`, one per array argument, in the forward's order.

    x feeds two paths (queries, and the keys/values summary), so dx is their sum.

    Returns:
        dx (B, N, C), dq_w (C, C), dq_b (C,), dkv_w (2C, C), dkv_b (2C,), dproj_w (C, C),
        dproj_b (C,), dsr_params (a tuple in ``sr_params``' order; ``()`` when sr = 1),
        dnorm_w (C,), dnorm_b (C,) (None when sr = 1: there is no norm).
    """
    # BEGIN SOLUTION gsa_backward
    q_cache, sr_cache, norm_cache, kv_cache, attn_cache, proj_cache, heads, (H, W), sr = cache
    do, dproj_w, dproj_b = linear_backward(dout, proj_cache)
    dq, dk, dv = attention_backward(split_heads(do, heads), attn_cache)
    ds, dkv_w, dkv_b = linear_backward(join_qkv([dk, dv]), kv_cache)
    dx, dq_w, dq_b = linear_backward(merge_heads(dq), q_cache)
    dsr: tuple[Any, ...] = ()
    dnorm_w = dnorm_b = None
    if sr_cache is not None and norm_cache is not None:
        B, C = ds.shape[0], ds.shape[-1]
        ds, dnorm_w, dnorm_b = layernorm_backward(ds, norm_cache)
        dx4, dsr = subsample_backward(ds.reshape(B, H // sr, W // sr, C), sr_cache)
        dx += dx4.reshape(B, H * W, C)
    else:
        dx += ds  # sr == 1: x itself was the key/value source
    return dx, dq_w, dq_b, dkv_w, dkv_b, dproj_w, dproj_b, dsr, dnorm_w, dnorm_b
    # END SOLUTION
