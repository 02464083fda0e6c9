"""Input checks shared by the functional ops.

Each helper raises ``ValueError`` or ``TypeError`` with the argument's name, what was
expected and what was received, so a student sees the problem rather than a
broadcasting error three calls deeper.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# float16 is refused on purpose: LayerNorm variances and softmax sums lose too much
# precision; bfloat16 does not exist in NumPy at all.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float(name: str, a: Any) -> None:
    """``a`` must be a float32 or float64 array."""
    dtype = getattr(a, "dtype", None)
    if dtype is None:
        raise TypeError(f"'{name}' must be an array, got {type(a).__name__}")
    if np.dtype(dtype) not in FLOAT_DTYPES:
        hint = " (convert images with x.astype(np.float32))" if np.dtype(dtype).kind in "iub" else ""
        raise TypeError(f"'{name}' must be float32 or float64, got {dtype}{hint}")


def check_same_dtype(**arrays: Any) -> None:
    """All given (non-None) arrays share one dtype (no silent float32/float64 mixing)."""
    seen = [(n, a.dtype) for n, a in arrays.items() if a is not None]
    for n, d in seen[1:]:
        if d != seen[0][1]:
            raise TypeError(
                f"'{n}' is {d} but '{seen[0][0]}' is {seen[0][1]}; cast both to one dtype "
                "(module.astype(dtype) casts all parameters)"
            )


def check_ndim(name: str, a: Any, ndim: int, layout: str) -> None:
    """``a.ndim == ndim``; ``layout`` names the axes for the message, e.g. '(B, N, C)'."""
    if a.ndim != ndim:
        raise ValueError(f"'{name}' must have shape {layout} ({ndim}-D), got shape {tuple(a.shape)}")


def check_tokens(name: str, x: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``x`` is (B, N, C) with N == H*W; returns (B, H, W, C)."""
    check_ndim(name, x, 3, "(B, N, C)")
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"'size' must be a pair (H, W), got {size!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"'size' must be positive, got (H, W) = ({H}, {W})")
    B, N, C = x.shape
    if N != H * W:
        raise ValueError(f"'{name}' has N = {N} tokens but size (H, W) = ({H}, {W}) needs H*W = {H * W}")
    return B, H, W, C


def check_heads(dim: int, num_heads: int) -> int:
    """``dim`` divisible by ``num_heads``; returns head_dim."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if dim % num_heads:
        raise ValueError(f"dim = {dim} is not divisible by num_heads = {num_heads}")
    return dim // num_heads


def check_weight(name: str, w: Any, shape: tuple[int, ...]) -> None:
    """``w.shape == shape`` exactly."""
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"'{name}' must have shape {tuple(shape)}, got {tuple(w.shape)}")


def check_finite(name: str, a: Any) -> None:
    """Optional check used by modules with ``check_finite=True``: no NaN or Inf."""
    from ..backend import get_xp

    xp = get_xp(a)
    if not bool(xp.isfinite(a).all()):
        n_nan = int(xp.isnan(a).sum())
        n_inf = int(xp.isinf(a).sum())
        raise ValueError(f"'{name}' contains {n_nan} NaN and {n_inf} Inf values")
