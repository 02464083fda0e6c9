"""Multi-head scaled dot-product attention, the core shared by LSA and GSA.

Notation: q (..., heads, Nq, hd), k and v (..., heads, Nk, hd); any leading axes
(batch, windows) are a batch. scale = hd ** -0.5.

    S = scale * q k^T [+ M]    (..., heads, Nq, Nk); M an optional additive mask (a constant)
    P = softmax(S, axis=-1)
    out = P v                  (..., heads, Nq, hd)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..backend import get_xp
from ._checks import check_dout, check_float, check_same_dtype
from .dropout import DropoutCache, dropout_backward, dropout_forward
from .softmax import SoftmaxCache, softmax_backward, softmax_forward


class AttentionCache(NamedTuple):
    q: Any
    k: Any
    v: Any
    probs: Any  # P after attention dropout (what multiplied v)
    softmax: SoftmaxCache  # holds P before dropout
    drop: DropoutCache
    scale: float


def split_heads(x: Any, num_heads: int) -> Any:
    """(..., N, heads*hd) -> (..., heads, N, hd); channel c = h*hd + j belongs to head h."""
    *lead, N, C = x.shape
    x = x.reshape(*lead, N, num_heads, C // num_heads)
    return x.swapaxes(-3, -2)


def merge_heads(x: Any) -> Any:
    """(..., heads, N, hd) -> (..., N, heads*hd), the inverse of :func:`split_heads`."""
    *lead, heads, N, hd = x.shape
    return x.swapaxes(-3, -2).reshape(*lead, N, heads * hd)


def attention_forward(
    q: Any,
    k: Any,
    v: Any,
    scale: float | None = None,
    attn_drop: float = 0.0,
    rng: np.random.Generator | None = None,
    drop_mask: Any | None = None,
    training: bool = True,
    attn_mask: Any | None = None,
) -> tuple[Any, AttentionCache]:
    """softmax(scale q k^T + attn_mask) v over the last two axes.

    Args:
        q: (..., Nq, hd) queries.  k: (..., Nk, hd) keys.  v: (..., Nk, hd) values.
        scale: defaults to hd ** -0.5.
        attn_drop: dropout on the attention probabilities (timm's attn_drop).
        rng, drop_mask, training: see :func:`twins_np.functional.dropout_forward`.
        attn_mask: None, or an additive mask broadcastable to the scores (..., Nq, Nk), added
            after the scale and before the softmax (mmsegmentation's LSA adds -1000 where a
            query and a key lie on different sides of the padding). It is a constant: it
            gets no gradient, and the backward needs nothing from it (dS passes through
            the sum unchanged; see docs/derivations/masked_lsa.md).

    Returns:
        out: (..., Nq, hd); cache for :func:`attention_backward`.
    """
    get_xp(q=q, k=k, v=v, attn_mask=attn_mask)
    check_float("q", q)
    check_same_dtype(q=q, k=k, v=v)
    if q.shape[-1] != k.shape[-1] or k.shape != v.shape:
        raise ValueError(
            f"attention: q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} do not "
            "fit: need q (..., Nq, hd), k and v (..., Nk, hd)"
        )
    if scale is None:
        scale = float(q.shape[-1]) ** -0.5
    scores = q @ k.swapaxes(-1, -2)
    scores *= scale
    if attn_mask is not None:
        if getattr(attn_mask, "dtype", None) != scores.dtype:
            got = getattr(attn_mask, "dtype", type(attn_mask).__name__)
            raise TypeError(f"attention: attn_mask must have the scores' dtype {scores.dtype}, got {got}")
        scores += attn_mask
    probs, sm_cache = softmax_forward(scores, axis=-1)
    probs_d, drop_cache = dropout_forward(probs, attn_drop, rng, drop_mask, training)
    out = probs_d @ v
    return out, AttentionCache(q, k, v, probs_d, sm_cache, drop_cache, scale)


def attention_backward(dout: Any, cache: AttentionCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`attention_forward`.

    Math:
        dv = P^T dout,   dP = dout v^T,   dS = softmax_backward(dP)  (= P * (dP - rowsum(dP * P)))
        dq = scale dS k,   dk = scale dS^T q

    Returns:
        dq, dk, dv with the shapes of q, k, v.
    """
    check_dout(dout, cache.q)
    # BEGIN SOLUTION attention_backward
    q, k, v, probs_d, sm_cache, drop_cache, scale = cache
    dv = probs_d.swapaxes(-1, -2) @ dout
    dprobs = dropout_backward(dout @ v.swapaxes(-1, -2), drop_cache)
    dscores = softmax_backward(dprobs, sm_cache)
    dscores *= scale
    dq = dscores @ k
    dk = dscores.swapaxes(-1, -2) @ q
    return dq, dk, dv
    # END SOLUTION
