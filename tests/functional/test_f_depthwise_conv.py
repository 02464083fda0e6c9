"""Tests of twins_np.functional.depthwise_conv: the PEG's 3x3 depthwise conv (stride 1, padding 1).

Channels-last, x of shape (B, H, W, C), with PyTorch's weight layout (C, 1, 3, 3).
"""

from __future__ import annotations

import numpy as np
import pytest
from f_helpers import rel_err, torch_conv_nhwc

from twins_np import functional as F
from twins_np.backend import cupy_available
from twins_np.gradcheck import TOLERANCES, check_backward


def dw_args(seed: int, B: int, H: int, W: int, C: int):
    r = np.random.default_rng(seed)
    return r.standard_normal((B, H, W, C)), r.standard_normal((C, 1, 3, 3)), r.standard_normal(C)


def dw_conv_loop(x, w, b):
    """One pixel and tap at a time, taps outside the map read zero (padding 1)."""
    B, H, W, C = x.shape
    out = np.zeros_like(x)
    for bb in range(B):
        for i in range(H):
            for j in range(W):
                for c in range(C):
                    s = 0.0 if b is None else b[c]
                    for u in range(3):
                        for v in range(3):
                            ii, jj = i + u - 1, j + v - 1
                            if 0 <= ii < H and 0 <= jj < W:
                                s += x[bb, ii, jj, c] * w[c, 0, u, v]
                    out[bb, i, j, c] = s
    return out


DW_CASES = [(2, 5, 6, 3), (1, 1, 1, 2), (1, 2, 1, 3), (1, 4, 4, 1)]


@pytest.mark.parametrize("case", DW_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_depthwise_matches_loop(xp, case, with_bias):
    x, w, b = dw_args(8, *case)
    b = b if with_bias else None
    out, _ = F.depthwise_conv3x3_forward(xp.asarray(x), xp.asarray(w), None if b is None else xp.asarray(b))
    assert rel_err(out, dw_conv_loop(x, w, b)) < TOLERANCES["parity_f64_rel"]


@pytest.mark.parametrize("case", DW_CASES)
def test_depthwise_gradcheck(xp, case):
    device = "cpu" if xp is np else "gpu"
    rows = check_backward(
        F.depthwise_conv3x3_forward, F.depthwise_conv3x3_backward, list(dw_args(9, *case)), names=["x", "w", "b"], device=device
    )
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_depthwise_single_pixel_uses_only_the_centre_tap():
    """On a 1x1 map every tap but the centre reads padding: dW is zero there."""
    x, w, b = dw_args(10, 2, 1, 1, 3)
    out, cache = F.depthwise_conv3x3_forward(x, w, b)
    np.testing.assert_allclose(out, x * w[:, 0, 1, 1] + b, rtol=1e-15)
    _, dw, _ = F.depthwise_conv3x3_backward(np.random.default_rng(11).standard_normal(out.shape), cache)
    centre = np.zeros((3, 1, 3, 3), dtype=bool)
    centre[:, :, 1, 1] = True
    assert np.all(dw[~centre] == 0.0) and np.all(dw[centre] != 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_dtype_preserved(xp, dtype):
    x, w, b = (xp.asarray(a.astype(dtype)) for a in dw_args(12, 2, 5, 6, 3))
    out, cache = F.depthwise_conv3x3_forward(x, w, b)
    assert out.dtype == dtype
    grads = F.depthwise_conv3x3_backward(xp.asarray(np.ones(out.shape, dtype=dtype)), cache)
    for g, a in zip(grads, (x, w, b)):
        assert g.dtype == dtype and g.shape == a.shape


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize("case", [(2, 5, 6, 3), (1, 1, 1, 4), (1, 14, 14, 8)])
def test_depthwise_parity_with_torch(dtype, tol, case):
    """groups = C, padding = 1: the PEG's conv."""
    torch = pytest.importorskip("torch")
    x, w, b = (a.astype(dtype) for a in dw_args(15, *case))
    out, cache = F.depthwise_conv3x3_forward(x, w, b)
    dout = np.random.default_rng(16).standard_normal(out.shape).astype(dtype)
    grads = F.depthwise_conv3x3_backward(dout, cache)
    t_out, t_grads = torch_conv_nhwc(torch, x, w, b, dout, padding=1, groups=case[-1])
    scale = max(float(np.abs(g).max()) for g in t_grads)
    assert rel_err(out, t_out) < TOLERANCES[tol]
    for mine, ref in zip(grads, t_grads):
        assert rel_err(mine, ref, scale) < TOLERANCES[tol]


@pytest.mark.parametrize("w_shape", [(3, 3, 3), (4, 1, 3, 3), (3, 1, 5, 5), (3, 3, 3, 3)])
def test_depthwise_weight_wrong_shape_raises(w_shape):
    x, _, b = dw_args(23, 1, 4, 4, 3)
    with pytest.raises(ValueError, match=r"'weight' must have shape \(3, 1, 3, 3\)"):
        F.depthwise_conv3x3_forward(x, np.ones(w_shape), b)


def test_depthwise_wrong_ndim_raises():
    x, w, b = dw_args(24, 1, 4, 4, 3)
    with pytest.raises(ValueError, match=r"'x' must have shape \(B, H, W, C\)"):
        F.depthwise_conv3x3_forward(x.reshape(1, 16, 3), w, b)


def test_float16_raises():
    x, w, b = dw_args(21, 1, 4, 4, 3)
    with pytest.raises(TypeError, match="'x' must be float32 or float64, got float16"):
        F.depthwise_conv3x3_forward(x.astype(np.float16), w.astype(np.float16), b.astype(np.float16))


def test_mixed_precision_raises():
    x, w, b = dw_args(22, 1, 4, 4, 3)
    with pytest.raises(TypeError, match="'bias' is float32 but 'x' is float64"):
        F.depthwise_conv3x3_forward(x, w, b.astype(np.float32))


@pytest.mark.gpu
def test_mixed_numpy_cupy_raises():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    x, w, b = dw_args(25, 1, 4, 4, 3)
    with pytest.raises(TypeError, match="'x' is a NumPy"):
        F.depthwise_conv3x3_forward(x, cupy.asarray(w), cupy.asarray(b))
