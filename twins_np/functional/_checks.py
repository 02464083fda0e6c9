"""Input checks shared by the functional ops.

Each helper raises ``ValueError`` or ``TypeError`` with the argument's name, what was
expected and what was received, so a student sees the problem rather than a
broadcasting error three calls deeper.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_xp

# float16 is refused on purpose: LayerNorm variances and softmax sums lose too much
# precision; bfloat16 does not exist in NumPy at all.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float(name: str, a: Any) -> None:
    """``a`` must be a float32 or float64 NumPy/CuPy array.

    Refused, each with a message that says why: non-arrays (lists), arrays of other
    libraries (a ``torch.Tensor``), integer and bool arrays (images as uint8 must be
    converted and scaled explicitly, never cast behind the user's back), float16
    (half precision) and anything else that is not float32/float64.
    """
    dtype = getattr(a, "dtype", None)
    if dtype is None:
        raise TypeError(
            f"'{name}' must be an array (NumPy or CuPy), got {type(a).__name__} (use np.asarray({name}, dtype=np.float32))"
        )
    try:
        dt = np.dtype(dtype)
    except TypeError:
        # e.g. a torch.Tensor: its dtype (torch.float32, torch.bfloat16) is not a NumPy dtype
        kind = f"{type(a).__module__}.{type(a).__name__}"
        raise TypeError(
            f"'{name}' must be an array (NumPy or CuPy), got a {kind} of dtype {dtype}; convert it first, "
            "e.g. tensor.detach().cpu().float().numpy()"
        ) from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"'{name}' must be float32 or float64, got {dt}{_dtype_hint(name, dt)}")


def _dtype_hint(name: str, dt: np.dtype) -> str:
    """Why a dtype is refused and what to do instead (appended to check_float's message)."""
    if dt.kind in "iub":
        return f" (convert images with {name}.astype(np.float32); integer arrays are never cast silently)"
    if dt == np.float16 or "bfloat16" in dt.name:
        return (
            " (half precision is refused: LayerNorm variances and softmax sums lose too much precision "
            f"in 16 bits; use {name}.astype(np.float32))"
        )
    return ""


def check_same_dtype(**arrays: Any) -> None:
    """All given (non-None) arrays share one dtype (no silent float32/float64 mixing)."""
    seen = [(n, a.dtype) for n, a in arrays.items() if a is not None]
    for n, d in seen[1:]:
        if d != seen[0][1]:
            raise TypeError(
                f"'{n}' is {d} but '{seen[0][0]}' is {seen[0][1]}; cast both to one dtype "
                "(module.astype(dtype) casts all parameters); twins-np never upcasts silently"
            )


def check_dout(dout: Any, forward_array: Any, name: str = "dout") -> Any:
    """The upstream gradient on the device of the forward's arrays; returns their array module.

    Called by every backward before its first operation, with any array of the forward's
    cache: a NumPy ``dout`` against a CuPy cache (or the reverse) is refused with the
    argument named, instead of failing inside the first product with CuPy's own message.
    """
    return get_xp(cache=forward_array, **{name: dout})


def check_ndim(name: str, a: Any, ndim: int, layout: str) -> None:
    """``a.ndim == ndim``; ``layout`` names the axes for the message, e.g. '(B, N, C)'."""
    if a.ndim != ndim:
        raise ValueError(f"'{name}' must have shape {layout} ({ndim}-D), got shape {tuple(a.shape)}")


def check_tokens(name: str, x: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``x`` is (B, N, C) with N == H*W; returns (B, H, W, C)."""
    check_ndim(name, x, 3, "(B, N, C)")
    try:
        H, W = (int(s) for s in size)
        integral = all(int(s) == s for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"'size' must be a pair of integers (H, W), got {size!r}") from None
    if not integral:
        raise ValueError(f"'size' must be a pair of integers (H, W), got {size!r}")
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
    xp = get_xp(a)
    if not bool(xp.isfinite(a).all()):
        n_nan = int(xp.isnan(a).sum())
        n_inf = int(xp.isinf(a).sum())
        raise ValueError(f"'{name}' contains {n_nan} NaN and {n_inf} Inf values")


def check_channels(module: str, x: Any, dim: int) -> None:
    """Tokens (..., C) given to a module built for ``dim`` channels."""
    C = x.shape[-1] if getattr(x, "ndim", 0) else None
    if C != dim:
        raise ValueError(
            f"{module} was built for dim = {dim} channels, but x has C = {C} (shape {tuple(getattr(x, 'shape', ()))})"
        )
