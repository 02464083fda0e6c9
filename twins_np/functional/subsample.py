"""The sub-sampling function of GSA: how the key/value summary of the map is made.

Twins (Table 9) compares three ways to summarise each sr x sr window into one token;
timm's Twins (and the default here) uses the first:

- ``"conv"``: a dense strided conv, kernel = stride = sr (params ``sr_w`` (C, C, sr, sr),
  ``sr_b``), C^2 sr^2 multiply-adds per summary token;
- ``"avg"``: average pooling over each window, no parameters;
- ``"sep"``: depthwise-separable, a depthwise strided conv (``dw_w`` (C, 1, sr, sr),
  ``dw_b``) then a pointwise Linear (``pw_w`` (C, C), ``pw_b``): C sr^2 + C^2 per token.

All three work channels-last, x (B, H, W, C) -> (B, H // sr, W // sr, C), and floor.
Their parameters travel as one tuple in the order of :data:`SUBSAMPLE_PARAMS` (conv:
``(sr_w, sr_b)``; avg: ``()``; sep: ``(dw_w, dw_b, pw_w, pw_b)``), and the backward returns
their gradients as a tuple in the same order, as every twins-np backward does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_xp
from .linear import linear_backward, linear_forward
from .patch_conv import (
    avg_pool_backward,
    avg_pool_forward,
    depthwise_patch_conv_backward,
    depthwise_patch_conv_forward,
    patch_conv_backward,
    patch_conv_forward,
)

SUBSAMPLE_MODES = ("conv", "avg", "sep")
# the names of each mode's parameters, in the order subsample_forward takes them
SUBSAMPLE_PARAMS: dict[str, tuple[str, ...]] = {"conv": ("sr_w", "sr_b"), "avg": (), "sep": ("dw_w", "dw_b", "pw_w", "pw_b")}


class SubsampleCache(NamedTuple):
    mode: str
    caches: tuple[Any, ...]


def subsample_forward(x: Any, mode: str, sr: int, params: tuple[Any, ...]) -> tuple[Any, SubsampleCache]:
    """Summarise each sr x sr window of x (B, H, W, C) into one token.

    Args:
        x: (B, H, W, C).
        mode: ``"conv"``, ``"avg"`` or ``"sep"``.
        sr: window = stride.
        params: the mode's parameters in :data:`SUBSAMPLE_PARAMS` order: ``(sr_w (C, C, sr, sr),
            sr_b (C,))`` for conv, ``()`` for avg, ``(dw_w (C, 1, sr, sr), dw_b (C,), pw_w (C, C),
            pw_b (C,))`` for sep.

    Returns:
        s: (B, H // sr, W // sr, C); cache for :func:`subsample_backward`.
    """
    if mode not in SUBSAMPLE_MODES:
        raise ValueError(f"sub-sampling mode must be one of {SUBSAMPLE_MODES}, got {mode!r}")
    names = SUBSAMPLE_PARAMS[mode]
    if not isinstance(params, (tuple, list)) or len(params) != len(names):
        got = f"{len(params)} arrays" if isinstance(params, (tuple, list)) else type(params).__name__
        raise ValueError(f"sub-sampling mode {mode!r} takes the parameters ({', '.join(names)}), got {got}")
    get_xp(x=x, **dict(zip(names, params)))  # every device, named, before any work
    if mode == "conv":
        sr_w, sr_b = params
        s, conv_cache = patch_conv_forward(x, sr_w, sr_b)
        return s, SubsampleCache(mode, (conv_cache,))
    if mode == "avg":
        s, pool_cache = avg_pool_forward(x, sr)
        return s, SubsampleCache(mode, (pool_cache,))
    dw_w, dw_b, pw_w, pw_b = params
    h, c1 = depthwise_patch_conv_forward(x, dw_w, dw_b)
    s, c2 = linear_forward(h, pw_w, pw_b)
    return s, SubsampleCache(mode, (c1, c2))


def subsample_backward(ds: Any, cache: SubsampleCache) -> tuple[Any, tuple[Any, ...]]:
    """Gradients of :func:`subsample_forward`: (dx (B, H, W, C), the parameters' gradients in their order)."""
    mode, caches = cache
    if mode == "conv":
        dx, dw, db = patch_conv_backward(ds, caches[0])
        return dx, (dw, db)
    if mode == "avg":
        return avg_pool_backward(ds, caches[0]), ()
    dh, dpw, dpb = linear_backward(ds, caches[1])
    dx, ddw, ddb = depthwise_patch_conv_backward(dh, caches[0])
    return dx, (ddw, ddb, dpw, dpb)
