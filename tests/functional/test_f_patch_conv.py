"""Tests of twins_np.functional.patch_conv: the conv with kernel = stride = k (patch embedding, GSA sub-sampling).

Channels-last, x of shape (B, H, W, C), with PyTorch's weight layout.
"""

from __future__ import annotations

import numpy as np
import pytest
from f_helpers import rel_err, torch_conv_nhwc

from twins_np import functional as F
from twins_np.backend import cupy_available
from twins_np.gradcheck import TOLERANCES, check_backward


def patch_args(seed: int, B: int, H: int, W: int, cin: int, cout: int, k: int):
    r = np.random.default_rng(seed)
    return r.standard_normal((B, H, W, cin)), r.standard_normal((cout, cin, k, k)), r.standard_normal(cout)


def patch_conv_loop(x, w, b):
    """One output pixel at a time: out[b, i, j, o] = b[o] + sum_{c,u,v} x[b, k i + u, k j + v, c] w[o, c, u, v]."""
    B, H, W, Cin = x.shape
    Cout, k = w.shape[0], w.shape[-1]
    out = np.zeros((B, H // k, W // k, Cout))
    for bb in range(B):
        for i in range(H // k):
            for j in range(W // k):
                for o in range(Cout):
                    s = 0.0 if b is None else b[o]
                    for c in range(Cin):
                        for u in range(k):
                            for v in range(k):
                                s += x[bb, k * i + u, k * j + v, c] * w[o, c, u, v]
                    out[bb, i, j, o] = s
    return out


PATCH_CASES = [  # (B, H, W, C_in, C_out, k)
    (2, 8, 8, 3, 5, 4),  # divisible
    (1, 9, 10, 3, 4, 4),  # floors: rows 8 and cols 8-9 dropped
    (2, 7, 5, 2, 3, 2),  # floors, non-square
    (1, 3, 3, 2, 2, 3),  # a single patch
    (1, 2, 3, 3, 2, 1),  # k = 1 is a per-pixel Linear
]


@pytest.mark.parametrize("case", PATCH_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_patch_conv_matches_loop(xp, case, with_bias):
    B, H, W, cin, cout, k = case
    x, w, b = patch_args(1, *case)
    b = b if with_bias else None
    out, _ = F.patch_conv_forward(xp.asarray(x), xp.asarray(w), None if b is None else xp.asarray(b))
    assert out.shape == (B, H // k, W // k, cout)
    assert rel_err(out, patch_conv_loop(x, w, b)) < TOLERANCES["parity_f64_rel"]


@pytest.mark.parametrize("case", PATCH_CASES[:4])
def test_patch_conv_gradcheck(xp, case):
    device = "cpu" if xp is np else "gpu"
    rows = check_backward(
        F.patch_conv_forward, F.patch_conv_backward, list(patch_args(2, *case)), names=["x", "w", "b"], device=device
    )
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_patch_conv_floor_dropped_pixels_get_exactly_zero_gradient():
    """As a 230 input at patch 4: a 9x9 map with k = 4 uses 8x8; row 8 and column 8 get dx = 0 exactly."""
    x, w, b = patch_args(3, 2, 9, 9, 3, 4, 4)
    out, cache = F.patch_conv_forward(x, w, b)
    assert out.shape == (2, 2, 2, 4)
    dx, _, _ = F.patch_conv_backward(np.random.default_rng(4).standard_normal(out.shape), cache)
    assert np.all(dx[:, 8, :, :] == 0.0) and np.all(dx[:, :, 8, :] == 0.0)
    assert np.all(dx[:, :8, :8, :] != 0.0)
    # and the forward really ignores them
    x2 = x.copy()
    x2[:, 8, :, :] = 1e6
    x2[:, :, 8, :] = -1e6
    np.testing.assert_array_equal(F.patch_conv_forward(x2, w, b)[0], out)


def test_patch_conv_backward_of_one_pixel_is_a_weight_slice():
    """Each pixel is in exactly one patch: dx at (k i + u, k j + v, c) = sum_o dout[i, j, o] w[o, c, u, v]."""
    x, w, b = patch_args(5, 1, 6, 4, 2, 3, 2)
    out, cache = F.patch_conv_forward(x, w, b)
    dout = np.random.default_rng(6).standard_normal(out.shape)
    dx, dw, db = F.patch_conv_backward(dout, cache)
    for i in range(3):
        for j in range(2):
            for u in range(2):
                for v in range(2):
                    for c in range(2):
                        ref = sum(dout[0, i, j, o] * w[o, c, u, v] for o in range(3))
                        assert abs(dx[0, 2 * i + u, 2 * j + v, c] - ref) < 1e-13
    assert rel_err(db, dout.sum(axis=(0, 1, 2))) < TOLERANCES["parity_f64_rel"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", [8, 9])
def test_patch_conv_dtype_preserved(xp, dtype, H):
    x, w, b = (xp.asarray(a.astype(dtype)) for a in patch_args(7, 2, H, 8, 3, 4, 4))
    out, cache = F.patch_conv_forward(x, w, b)
    assert out.dtype == dtype
    grads = F.patch_conv_backward(xp.asarray(np.ones(out.shape, dtype=dtype)), cache)
    for g, a in zip(grads, (x, w, b)):
        assert g.dtype == dtype and g.shape == a.shape


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize("case", [(2, 8, 8, 3, 5, 4), (1, 9, 9, 3, 4, 4), (1, 57, 57, 4, 4, 8), (2, 7, 5, 6, 6, 2)])
def test_patch_conv_parity_with_torch(dtype, tol, case):
    """stride = kernel conv2d (patch embedding, GSA sub-sampling), including floored sizes."""
    torch = pytest.importorskip("torch")
    x, w, b = (a.astype(dtype) for a in patch_args(13, *case))
    out, cache = F.patch_conv_forward(x, w, b)
    dout = np.random.default_rng(14).standard_normal(out.shape).astype(dtype)
    grads = F.patch_conv_backward(dout, cache)
    t_out, t_grads = torch_conv_nhwc(torch, x, w, b, dout, stride=case[-1])
    scale = max(float(np.abs(g).max()) for g in t_grads)
    assert rel_err(out, t_out) < TOLERANCES[tol]
    for mine, ref in zip(grads, t_grads):
        assert rel_err(mine, ref, scale) < TOLERANCES[tol]
    np.testing.assert_array_equal(t_grads[0][:, (x.shape[1] // case[-1]) * case[-1] :], 0.0)  # torch floors too


def test_patch_conv_wrong_ndim_raises():
    x, w, b = patch_args(17, 1, 8, 8, 3, 4, 4)
    with pytest.raises(ValueError, match=r"'x' must have shape \(B, H, W, C_in\)"):
        F.patch_conv_forward(x[0], w, b)


@pytest.mark.parametrize("w_shape", [(4, 2, 4, 4), (4, 3, 2, 4), (4, 3, 4)])
def test_patch_conv_weight_wrong_shape_raises(w_shape):
    x, _, b = patch_args(18, 1, 8, 8, 3, 4, 4)
    with pytest.raises(ValueError, match="'weight' must have shape"):
        F.patch_conv_forward(x, np.ones(w_shape), b)


def test_patch_conv_kernel_larger_than_map_raises():
    x, w, b = patch_args(19, 1, 3, 8, 3, 4, 4)
    with pytest.raises(ValueError, match="larger than the 3x8 map"):
        F.patch_conv_forward(x, w, b)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_patch_conv_integer_images_raise(dtype):
    x, w, b = patch_args(20, 1, 8, 8, 3, 4, 4)
    with pytest.raises(TypeError, match=r"float32 or float64.*astype"):
        F.patch_conv_forward((255 * np.abs(x)).astype(dtype), w.astype(np.float32), b.astype(np.float32))


def test_float16_raises():
    x, w, b = patch_args(21, 1, 8, 8, 3, 4, 4)
    with pytest.raises(TypeError, match="'x' must be float32 or float64, got float16"):
        F.patch_conv_forward(x.astype(np.float16), w.astype(np.float16), b.astype(np.float16))


def test_mixed_precision_raises():
    x, w, b = patch_args(22, 1, 8, 8, 3, 4, 4)
    with pytest.raises(TypeError, match="'weight' is float64 but 'x' is float32"):
        F.patch_conv_forward(x.astype(np.float32), w, b)


@pytest.mark.gpu
def test_mixed_numpy_cupy_raises():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    x, w, b = patch_args(25, 1, 8, 8, 3, 4, 4)
    with pytest.raises(TypeError, match="'weight' is a CuPy"):
        F.patch_conv_forward(x, cupy.asarray(w), b)


# --- corner padding (mmsegmentation's patch embedding) ---------------------------------------


@pytest.mark.parametrize(("H", "W", "k"), [(9, 10, 4), (7, 7, 2), (8, 8, 4), (1, 3, 4), (5, 6, 1)])
def test_corner_pad_forward_and_gradcheck(xp, H, W, k):
    x = np.random.default_rng(30).standard_normal((2, H, W, 3))
    out, cache = F.corner_pad_forward(xp.asarray(x), k)
    Hp, Wp = -(-H // k) * k, -(-W // k) * k
    out = np.asarray(out.get() if hasattr(out, "get") else out)
    assert out.shape == (2, Hp, Wp, 3)
    assert np.array_equal(out[:, :H, :W], x) and not out[:, H:].any() and not out[:, :, W:].any()
    rows = check_backward(F.corner_pad_forward, F.corner_pad_backward, [x, k], names=["x"], device="cpu" if xp is np else "gpu")
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


@pytest.mark.parity
@pytest.mark.parametrize(("H", "W", "k"), [(9, 10, 4), (7, 5, 2), (3, 13, 4)])
def test_corner_pad_then_patch_conv_parity_with_torch(H, W, k):
    """AdaptivePadding(padding="corner") + conv (mmsegmentation's PatchEmbed): F.pad right/bottom, then the conv."""
    torch = pytest.importorskip("torch")
    x, w, b = patch_args(31, 2, H, W, 3, 5, k)
    Ho, Wo = -(-H // k), -(-W // k)
    dout = np.random.default_rng(32).standard_normal((2, Ho, Wo, 5))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    pad = torch.nn.functional.pad(tx.permute(0, 3, 1, 2), [0, Wo * k - W, 0, Ho * k - H])
    tout = torch.nn.functional.conv2d(pad, tw, tb, stride=k).permute(0, 2, 3, 1)
    tout.backward(torch.tensor(dout))
    padded, pcache = F.corner_pad_forward(x, k)
    out, ccache = F.patch_conv_forward(padded, w, b)
    dpad, dw, db = F.patch_conv_backward(dout, ccache)
    dx = F.corner_pad_backward(dpad, pcache)
    assert out.shape == (2, Ho, Wo, 5)
    for mine, theirs in ((out, tout.detach().numpy()), (dx, tx.grad.numpy()), (dw, tw.grad.numpy()), (db, tb.grad.numpy())):
        assert rel_err(mine, theirs) < TOLERANCES["parity_f64_rel"]


def test_corner_pad_is_the_identity_on_multiples_and_refuses_bad_multiples():
    x = np.zeros((1, 8, 4, 2), np.float32)
    out, cache = F.corner_pad_forward(x, 4)
    assert out is x and F.corner_pad_backward(out, cache) is out
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="'multiple' must be a positive integer"):
            F.corner_pad_forward(x, bad)
