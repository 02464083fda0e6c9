"""Launchers of the fused CUDA kernels in this folder (CuPy arrays only).

Each function mirrors one readable NumPy/CuPy function, its twin, and returns what the twin
returns, cache included, so a fused forward can be followed by either backward:

===========================  ================================================================
launcher                     twin
===========================  ================================================================
gelu_forward / _backward     twins_np.functional.activation.gelu_forward / gelu_backward
layernorm_forward / _bwd     twins_np.functional.layernorm.layernorm_forward / _backward
softmax_forward / _backward  twins_np.functional.softmax.softmax_forward / _backward (last axis)
dwconv3x3_forward / _bwd     twins_np.functional.depthwise_conv.depthwise_conv3x3_forward / _backward
adamw_update                 twins_np.optim.AdamW._update
===========================  ================================================================

The kernels are compiled on first use through :func:`twins_np.backend.cuda_function` (the
backend stays the only module that imports CuPy). They are off by default:
``twins_np.backend.fused_kernels(True)`` switches them on once a GPU run has proven them
(``tests/test_kernels.py`` compares every kernel with its twin).

The CPU kernels (numba, ``*_cpu.py``) have the same names and signatures in
:mod:`twins_np.kernels.cpu`; :func:`for_array` hands out the set for an array's device.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

from ..backend import cuda_function, get_xp, is_cupy_array


def for_array(a: Any) -> ModuleType:
    """The fused kernels for ``a``'s device, all under the same names and signatures.

    A CuPy array gets the CUDA launchers of this module; a NumPy array gets the numba kernels
    of :mod:`twins_np.kernels.cpu`, imported here on first use so that ``import twins_np``
    never imports numba. Whether a kernel runs at all is ``twins_np.backend.use_fused``'s call.
    """
    if is_cupy_array(a):
        return sys.modules[__name__]
    from . import cpu

    return cpu


_THREADS = 256  # threads per block for the elementwise kernels (a multiple of 32)
_MAX_BLOCKS = 65535  # grid-stride loops cover the rest


def _suffix(a: Any) -> str:
    if a.dtype == np.float32:
        return "f32"
    if a.dtype == np.float64:
        return "f64"
    raise TypeError(f"the fused kernels take float32 or float64 arrays, got {a.dtype}")


def _scalar(a: Any, value: float) -> Any:
    """A kernel's scalar argument, in the arrays' dtype (CuPy passes it by value)."""
    return a.dtype.type(value)


def _grid(n: int) -> tuple[int]:
    return (max(1, min(_MAX_BLOCKS, -(-n // _THREADS))),)


def _row_threads(n: int) -> tuple[int]:
    """Threads for one block per row of n entries: whole warps, at most 256."""
    return (min(256, max(32, -(-n // 32) * 32)),)


# --- GELU -------------------------------------------------------------------------------


def gelu_forward(x: Any) -> tuple[Any, Any]:
    """(y, cdf) = (x Phi(x), Phi(x)) in one pass; x contiguous."""
    xp = get_xp(x)
    x = xp.ascontiguousarray(x)
    y, cdf = xp.empty_like(x), xp.empty_like(x)
    cuda_function("gelu.cu", f"gelu_forward_{_suffix(x)}")(_grid(x.size), (_THREADS,), (x, y, cdf, np.int64(x.size)))
    return y, cdf


def gelu_backward(dout: Any, x: Any, cdf: Any) -> Any:
    """dout (Phi(x) + x phi(x))."""
    xp = get_xp(dout=dout, x=x)
    dout = xp.ascontiguousarray(dout)
    dx = xp.empty_like(dout)
    kernel = cuda_function("gelu.cu", f"gelu_backward_{_suffix(dout)}")
    kernel(_grid(dout.size), (_THREADS,), (dout, x, cdf, dx, np.int64(dout.size)))
    return dx


# --- LayerNorm --------------------------------------------------------------------------


def layernorm_forward(x: Any, gamma: Any, beta: Any, eps: float) -> tuple[Any, Any, Any]:
    """(y, xhat, inv_std) with x's shape, x's shape and (..., 1)."""
    xp = get_xp(x=x, gamma=gamma, beta=beta)
    C = x.shape[-1]
    x2 = xp.ascontiguousarray(x).reshape(-1, C)
    rows = x2.shape[0]
    y, xhat = xp.empty_like(x2), xp.empty_like(x2)
    inv_std = xp.empty((rows, 1), dtype=x.dtype)
    if rows:
        kernel = cuda_function("layernorm.cu", f"layernorm_forward_{_suffix(x)}")
        kernel((rows,), _row_threads(C), (x2, xp.ascontiguousarray(gamma), xp.ascontiguousarray(beta), _scalar(x, eps), y, xhat,
                                           inv_std, np.int32(C)))  # fmt: skip
    return y.reshape(x.shape), xhat.reshape(x.shape), inv_std.reshape(*x.shape[:-1], 1)


def layernorm_backward_dx(dout: Any, xhat: Any, inv_std: Any, gamma: Any) -> Any:
    """dx = inv_std (g - mean(g) - xhat mean(g xhat)), g = dout gamma, per row."""
    xp = get_xp(dout=dout, xhat=xhat)
    C = dout.shape[-1]
    d2 = xp.ascontiguousarray(dout).reshape(-1, C)
    rows = d2.shape[0]
    dx = xp.empty_like(d2)
    if rows:
        kernel = cuda_function("layernorm.cu", f"layernorm_backward_{_suffix(dout)}")
        kernel((rows,), _row_threads(C), (d2, xp.ascontiguousarray(xhat).reshape(-1, C), xp.ascontiguousarray(inv_std),
                                           xp.ascontiguousarray(gamma), dx, np.int32(C)))  # fmt: skip
    return dx.reshape(dout.shape)


# --- softmax ----------------------------------------------------------------------------


def softmax_forward(x: Any) -> Any:
    """Softmax over the last axis."""
    xp = get_xp(x)
    n = x.shape[-1]
    x2 = xp.ascontiguousarray(x).reshape(-1, n)
    y = xp.empty_like(x2)
    if x2.shape[0] and n:
        cuda_function("softmax.cu", f"softmax_forward_{_suffix(x)}")((x2.shape[0],), _row_threads(n), (x2, y, np.int32(n)))
    return y.reshape(x.shape)


def softmax_backward(dout: Any, y: Any) -> Any:
    """y (dout - sum(dout y)) over the last axis."""
    xp = get_xp(dout=dout, y=y)
    n = y.shape[-1]
    d2, y2 = xp.ascontiguousarray(dout).reshape(-1, n), xp.ascontiguousarray(y).reshape(-1, n)
    dx = xp.empty_like(d2)
    if d2.shape[0] and n:
        kernel = cuda_function("softmax.cu", f"softmax_backward_{_suffix(dout)}")
        kernel((d2.shape[0],), _row_threads(n), (d2, y2, dx, np.int32(n)))
    return dx.reshape(y.shape)


# --- 3x3 depthwise conv (the PEG) -------------------------------------------------------


def dwconv3x3_forward(x: Any, w: Any, b: Any | None) -> tuple[Any, Any]:
    """(out, xpad): x (B, H, W, C), w (C, 1, 3, 3), b (C,) or None."""
    xp = get_xp(x=x, weight=w, bias=b)
    B, H, W, C = x.shape
    x = xp.ascontiguousarray(x)
    wc = xp.ascontiguousarray(w).reshape(C, 9)
    out = xp.empty_like(x)
    xpad = xp.zeros((B, H + 2, W + 2, C), dtype=x.dtype)
    bias = xp.ascontiguousarray(b) if b is not None else wc  # any pointer: has_bias = 0 keeps it unread
    args = (x, wc, bias, np.int32(b is not None), out, xpad, np.int32(B), np.int32(H), np.int32(W), np.int32(C))
    cuda_function("dwconv3x3.cu", f"dwconv3x3_forward_{_suffix(x)}")(_grid(x.size), (_THREADS,), args)
    return out, xpad


def dwconv3x3_backward(dout: Any, xpad: Any, w: Any) -> tuple[Any, Any, Any]:
    """(dx, dw, db) as the twin returns them."""
    xp = get_xp(dout=dout, xpad=xpad, weight=w)
    B, H, W, C = dout.shape
    dout = xp.ascontiguousarray(dout)
    wc = xp.ascontiguousarray(w).reshape(C, 9)
    dims = (np.int32(B), np.int32(H), np.int32(W), np.int32(C))
    dx = xp.empty_like(dout)
    kernel = cuda_function("dwconv3x3.cu", f"dwconv3x3_backward_input_{_suffix(dout)}")
    kernel(_grid(dout.size), (_THREADS,), (dout, wc, dx, *dims))
    dw_img = xp.empty((B, 3, 3, C), dtype=dout.dtype)
    cuda_function("dwconv3x3.cu", f"dwconv3x3_backward_weight_{_suffix(dout)}")(
        _grid(dw_img.size), (_THREADS,), (dout, xp.ascontiguousarray(xpad), dw_img, *dims)
    )
    dw = dw_img.sum(axis=0).transpose(2, 0, 1).reshape(C, 1, 3, 3)
    db = dout.reshape(-1, C).sum(axis=0)
    return dx, dw, db


# --- AdamW ------------------------------------------------------------------------------


def adamw_update(p: Any, g: Any, m: Any, v: Any, *, lr: float, beta1: float, beta2: float, eps: float, wd: float, t: int) -> None:
    """One AdamW step of one parameter, in place in p, m and v (all contiguous, one dtype)."""
    get_xp(param=p, grad=g, exp_avg=m, exp_avg_sq=v)
    for name, a in (("param", p), ("grad", g), ("exp_avg", m), ("exp_avg_sq", v)):
        if not a.flags.c_contiguous or a.dtype != p.dtype:
            raise ValueError(f"adamw_update: '{name}' must be C-contiguous with the parameter's dtype")
    s = lambda value: _scalar(p, value)  # noqa: E731
    args = (p, g, m, v, np.int64(p.size), s(1.0 - lr * wd), s(beta1), s(beta2), s(lr / (1.0 - beta1**t)),
            s((1.0 - beta2**t) ** 0.5), s(eps))  # fmt: skip
    cuda_function("adamw.cu", f"adamw_update_{_suffix(p)}")(_grid(p.size), (_THREADS,), args)
