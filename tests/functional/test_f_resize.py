"""Tests of twins_np.functional.resize: bilinear and nearest resizing, and nearest 2x upsampling.

Parity is against ``torch.nn.functional.interpolate`` (NCHW there, channels-last here) at
odd sizes and non-integer ratios, up and down, for the output and the input gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.backend import asnumpy
from twins_np.gradcheck import TOLERANCES, check_backward

# (H, W) -> (Ho, Wo): up, down, mixed, non-integer ratios, identity, 1-pixel maps
SIZES = [((7, 11), (20, 9)), ((13, 13), (4, 6)), ((3, 5), (6, 10)), ((5, 7), (5, 7)), ((1, 4), (3, 1)), ((12, 16), (25, 33))]
SIZE_IDS = [f"{a[0]}x{a[1]}->{b[0]}x{b[1]}" for a, b in SIZES]


def bilinear_loop(x, size):
    """torch's rule written per output pixel: src = max((dst + 0.5) * in / out - 0.5, 0)."""
    B, H, W, C = x.shape
    Ho, Wo = size

    def taps(n_in, n_out, i):
        s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(s)), n_in - 1)
        lam = s - i0
        return [(i0, 1.0 - lam), (min(i0 + 1, n_in - 1), lam)]

    out = np.zeros((B, Ho, Wo, C))
    for i in range(Ho):
        for j in range(Wo):
            for p, wp in taps(H, Ho, i):
                for q, wq in taps(W, Wo, j):
                    out[:, i, j] += wp * wq * x[:, p, q]
    return out


def _torch_interp(torch, x, dout, **kw):
    tx = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    to = torch.nn.functional.interpolate(tx, **kw)
    to.backward(torch.tensor(np.ascontiguousarray(dout.transpose(0, 3, 1, 2))))
    return to.detach().numpy().transpose(0, 2, 3, 1), tx.grad.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize(("hw", "size"), SIZES, ids=SIZE_IDS)
def test_bilinear_matches_loop(xp, hw, size):
    x = np.random.default_rng(0).standard_normal((2, *hw, 3))
    out, _ = F.bilinear_resize_forward(xp.asarray(x), size)
    assert out.shape == (2, *size, 3)
    assert rel_err(out, bilinear_loop(x, size)) < TOLERANCES["parity_f64_rel"]


def test_bilinear_rows_sum_to_one_and_identity():
    a = F.resize.bilinear_matrix(np, 7, 20, np.float64)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert np.all(a >= 0.0)
    x = np.random.default_rng(1).standard_normal((1, 5, 7, 2))
    out, _ = F.bilinear_resize_forward(x, (5, 7))
    assert rel_err(out, x) == 0.0


@pytest.mark.parametrize(("hw", "size"), SIZES[:3], ids=SIZE_IDS[:3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_gradcheck(xp, hw, size, mode):
    fwd = F.bilinear_resize_forward if mode == "bilinear" else F.nearest_resize_forward
    rows = check_backward(
        lambda x: fwd(x, size),
        F.resize_backward,
        [np.random.default_rng(2).standard_normal((2, *hw, 3))],
        names=["x"],
        device="cpu" if xp is np else "gpu",
    )
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize(("hw", "size"), SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_backward_is_the_adjoint_of_the_forward(xp, hw, size, mode):
    """A check of the backward without a reference gradient: resizing is linear, so
    <forward(x), d> = <x, backward(d)> for every x and d; at every size of SIZES (up, down,
    identity, 1-pixel maps)."""
    r = np.random.default_rng(11)
    x, d = r.standard_normal((2, *hw, 3)), r.standard_normal((2, *size, 3))
    fwd = F.bilinear_resize_forward if mode == "bilinear" else F.nearest_resize_forward
    out, cache = fwd(xp.asarray(x), size)
    dx = asnumpy(F.resize_backward(xp.asarray(d), cache))
    assert dx.shape == x.shape
    lhs, rhs = np.vdot(asnumpy(out), d), np.vdot(x, dx)
    assert abs(lhs - rhs) < 1e-13 * np.abs(x).sum() * np.abs(d).sum()
    assert np.abs(dx).max() > 0.1  # not trivially zero


def test_gradcheck_upsample2x(xp):
    rows = check_backward(
        F.nearest_upsample2x_forward,
        F.nearest_upsample2x_backward,
        [np.random.default_rng(3).standard_normal((2, 3, 5, 4))],
        names=["x"],
        device="cpu" if xp is np else "gpu",
    )
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


def test_upsample2x_is_blocks_and_backward_sums_blocks():
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 4))
    out, cache = F.nearest_upsample2x_forward(x)
    for u in (0, 1):
        for v in (0, 1):
            assert np.array_equal(out[:, u::2, v::2], x)
    d = np.random.default_rng(5).standard_normal(out.shape)
    dx = F.nearest_upsample2x_backward(d, cache)
    assert rel_err(dx, d[:, 0::2, 0::2] + d[:, 0::2, 1::2] + d[:, 1::2, 0::2] + d[:, 1::2, 1::2]) < 1e-15
    # the general nearest path at 2x gives the same map
    out2, _ = F.nearest_resize_forward(x, (6, 10))
    assert np.array_equal(out, out2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(xp, dtype):
    x = xp.asarray(np.random.default_rng(6).standard_normal((1, 5, 6, 2)).astype(dtype))
    for fwd, bwd, args in [
        (F.bilinear_resize_forward, F.resize_backward, ((9, 4),)),
        (F.nearest_resize_forward, F.resize_backward, ((9, 4),)),
        (F.nearest_upsample2x_forward, F.nearest_upsample2x_backward, ()),
    ]:
        out, cache = fwd(x, *args)
        assert out.dtype == dtype
        assert bwd(xp.ones_like(out), cache).dtype == dtype


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize(("hw", "size"), SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_parity_with_torch_size(dtype, tol, hw, size, mode):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(7)
    x = r.standard_normal((2, *hw, 3)).astype(dtype)
    d = r.standard_normal((2, *size, 3)).astype(dtype)
    fwd = F.bilinear_resize_forward if mode == "bilinear" else F.nearest_resize_forward
    out, cache = fwd(x, size)
    dx = F.resize_backward(d, cache)
    kw = dict(align_corners=False) if mode == "bilinear" else {}
    t_out, t_dx = _torch_interp(torch, x, d, size=size, mode=mode, **kw)
    assert rel_err(out, t_out) <= TOLERANCES[tol]
    assert rel_err(dx, t_dx) <= TOLERANCES[tol]


@pytest.mark.parity
@pytest.mark.parametrize("scale", [2, 0.5, 1.5, (0.7, 2.5)])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_parity_with_torch_scale_factor(scale, mode):
    """With scale_factor, torch maps coordinates with 1 / s, not H / Ho; so does twins-np."""
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(8)
    x = r.standard_normal((2, 7, 9, 3))
    fwd = F.bilinear_resize_forward if mode == "bilinear" else F.nearest_resize_forward
    out, cache = fwd(x, scale_factor=scale)
    d = r.standard_normal(out.shape)
    kw = dict(align_corners=False) if mode == "bilinear" else {}
    t_out, t_dx = _torch_interp(torch, x, d, scale_factor=scale, mode=mode, **kw)
    assert out.shape == t_out.shape
    assert rel_err(out, t_out) <= TOLERANCES["parity_f64_rel"]
    assert rel_err(F.resize_backward(d, cache), t_dx) <= TOLERANCES["parity_f64_rel"]


@pytest.mark.parity
def test_parity_upsample2x_with_torch():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(9)
    x = r.standard_normal((2, 5, 3, 4))
    out, cache = F.nearest_upsample2x_forward(x)
    d = r.standard_normal(out.shape)
    t_out, t_dx = _torch_interp(torch, x, d, scale_factor=2, mode="nearest")
    assert rel_err(out, t_out) == 0.0
    assert rel_err(F.nearest_upsample2x_backward(d, cache), t_dx) <= TOLERANCES["parity_f64_rel"]


def test_bad_size_raises():
    x = np.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match=r"'size' must be a pair of positive integers"):
        F.bilinear_resize_forward(x, (0, 3))
    with pytest.raises(ValueError, match=r"'size' must be a pair of integers"):
        F.bilinear_resize_forward(x, 5)
    with pytest.raises(ValueError, match=r"exactly one of 'size' and 'scale_factor'"):
        F.nearest_resize_forward(x)
    with pytest.raises(ValueError, match=r"makes the 4x4 map empty"):
        F.bilinear_resize_forward(x, scale_factor=0.1)


def test_bad_map_raises():
    with pytest.raises(ValueError, match=r"'x' must have shape \(B, H, W, C\)"):
        F.bilinear_resize_forward(np.zeros((4, 4, 2)), (3, 3))
    with pytest.raises(TypeError, match=r"'x' must be float32 or float64, got uint8"):
        F.nearest_upsample2x_forward(np.zeros((1, 4, 4, 2), dtype=np.uint8))


def test_inputs_unchanged():
    x = np.random.default_rng(10).standard_normal((1, 3, 4, 2))
    x0 = x.copy()
    out, cache = F.bilinear_resize_forward(x, (5, 2))
    F.resize_backward(np.ones_like(out), cache)
    assert np.array_equal(asnumpy(x), x0)


# --- adaptive average pooling (UPerNet's pyramid pooling) -----------------------------------

# (H, W) -> (Ho, Wo): the PPM's 1, 2, 3, 6 on maps they do not divide, larger outputs, identity
POOLS = [((16, 16), (6, 6)), ((16, 22), (3, 3)), ((7, 5), (2, 3)), ((5, 4), (6, 6)), ((9, 13), (1, 1)), ((4, 6), (4, 6))]
POOL_IDS = [f"{a[0]}x{a[1]}->{b[0]}x{b[1]}" for a, b in POOLS]


def adaptive_pool_loop(x, size):
    """torch's bins written out: output (i, j) averages rows floor(i H / Ho) .. ceil((i+1) H / Ho) - 1, same for columns."""
    B, H, W, C = x.shape
    Ho, Wo = size
    out = np.zeros((B, Ho, Wo, C))
    for i in range(Ho):
        r0, r1 = (i * H) // Ho, -((-(i + 1) * H) // Ho)
        for j in range(Wo):
            c0, c1 = (j * W) // Wo, -((-(j + 1) * W) // Wo)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize(("hw", "size"), POOLS, ids=POOL_IDS)
def test_adaptive_pool_matches_loop(xp, hw, size):
    x = np.random.default_rng(20).standard_normal((2, *hw, 3))
    out, _ = F.adaptive_avg_pool_forward(xp.asarray(x), size)
    assert rel_err(asnumpy(out), adaptive_pool_loop(x, size)) < 1e-13


@pytest.mark.parametrize(("hw", "size"), POOLS, ids=POOL_IDS)
def test_adaptive_pool_gradcheck(xp, hw, size):
    device = "cpu" if xp is np else "gpu"
    x = np.random.default_rng(21).standard_normal((2, *hw, 2))
    rows = check_backward(F.adaptive_avg_pool_forward, F.adaptive_avg_pool_backward, [x, size], names=["x"], device=device)
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


@pytest.mark.parity
@pytest.mark.parametrize(("hw", "size"), POOLS, ids=POOL_IDS)
def test_adaptive_pool_parity_with_torch(hw, size):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(22)
    x, dout = r.standard_normal((2, *hw, 3)), r.standard_normal((2, *size, 3))
    tx = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    to = torch.nn.functional.adaptive_avg_pool2d(tx, size)
    to.backward(torch.tensor(np.ascontiguousarray(dout.transpose(0, 3, 1, 2))))
    out, cache = F.adaptive_avg_pool_forward(x, size)
    dx = F.adaptive_avg_pool_backward(dout, cache)
    assert rel_err(out, to.detach().numpy().transpose(0, 2, 3, 1)) < TOLERANCES["parity_f64_rel"]
    assert rel_err(dx, tx.grad.numpy().transpose(0, 2, 3, 1)) < TOLERANCES["parity_f64_rel"]


def test_adaptive_pool_keeps_float32_and_refuses_bad_sizes():
    x = np.ones((1, 5, 4, 2), np.float32)
    out, cache = F.adaptive_avg_pool_forward(x, 3)
    assert out.dtype == np.float32 and out.shape == (1, 3, 3, 2) and np.all(out == 1.0)
    assert F.adaptive_avg_pool_backward(np.ones_like(out), cache).dtype == np.float32
    with pytest.raises(ValueError, match="pair of positive integers"):
        F.adaptive_avg_pool_forward(x, (0, 2))


@pytest.mark.parametrize(("hw", "size"), SIZES, ids=SIZE_IDS)
def test_bilinear_taps_equal_the_matrix_product(hw, size):
    """The forward reads the two taps per row; the backward uses the matrices: both are the same map."""
    from twins_np.functional.resize import _apply

    x = np.random.default_rng(23).standard_normal((2, *hw, 3))
    out, cache = F.bilinear_resize_forward(x, size)
    assert rel_err(out, _apply(x, cache.a_h, cache.a_w)) < 1e-15
