"""Tests of twins_np.functional.conv2d: the general k x k convolution (stride, zero padding).

Channels-last, x of shape (B, H, W, C_in), with PyTorch's weight layout (C_out, C_in, k, k).
Shapes are odd on purpose (7x11, 13x5, odd channel counts), and the cases include strides
that leave the last rows of the padded map unread (they must get zero gradient).
"""

from __future__ import annotations

import numpy as np
import pytest
from f_helpers import rel_err

import twins_np.functional.conv2d as conv2d_module
from twins_np import functional as F
from twins_np.gradcheck import TOLERANCES, check_backward


def conv_args(seed: int, B: int, H: int, W: int, cin: int, cout: int, k: int):
    r = np.random.default_rng(seed)
    return r.standard_normal((B, H, W, cin)), r.standard_normal((cout, cin, k, k)), r.standard_normal(cout)


def conv_loop(x, w, b, stride, padding):
    """One output pixel and tap at a time; taps outside the map read zero."""
    B, H, W, Cin = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    out = np.zeros((B, Ho, Wo, Cout))
    for bb in range(B):
        for i in range(Ho):
            for j in range(Wo):
                for o in range(Cout):
                    s = 0.0 if b is None else b[o]
                    for u in range(k):
                        for v in range(k):
                            ii, jj = stride * i + u - padding, stride * j + v - padding
                            if 0 <= ii < H and 0 <= jj < W:
                                s += float(np.dot(x[bb, ii, jj, :], w[o, :, u, v]))
                    out[bb, i, j, o] = s
    return out


# (B, H, W, C_in, C_out, k, stride, padding)
CASES = [
    pytest.param(2, 7, 11, 3, 5, 3, 1, 1, id="3x3-s1-p1-7x11"),
    pytest.param(2, 7, 11, 3, 5, 3, 2, 1, id="3x3-s2-p1-7x11"),
    pytest.param(1, 13, 5, 5, 3, 3, 2, 0, id="3x3-s2-p0-13x5-unread-row"),
    pytest.param(2, 13, 5, 3, 7, 1, 1, 0, id="1x1-13x5"),
    pytest.param(1, 7, 11, 3, 5, 1, 2, 0, id="1x1-s2"),
    pytest.param(1, 7, 11, 3, 5, 5, 3, 2, id="5x5-s3-p2"),
    pytest.param(2, 6, 6, 3, 4, 2, 1, 0, id="2x2-s1-even"),
    pytest.param(1, 3, 2, 3, 3, 3, 1, 2, id="pad-larger-than-map"),
    pytest.param(1, 3, 3, 2, 3, 3, 1, 0, id="one-window"),
]


@pytest.mark.parametrize("B,H,W,cin,cout,k,s,p", CASES)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_conv2d_matches_loop(xp, B, H, W, cin, cout, k, s, p, with_bias):
    x, w, b = conv_args(1, B, H, W, cin, cout, k)
    b = b if with_bias else None
    out, _ = F.conv2d_forward(xp.asarray(x), xp.asarray(w), None if b is None else xp.asarray(b), s, p)
    ref = conv_loop(x, w, b, s, p)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < TOLERANCES["parity_f64_rel"]


@pytest.mark.parametrize("B,H,W,cin,cout,k,s,p", CASES)
def test_conv2d_gradcheck(xp, B, H, W, cin, cout, k, s, p):
    device = "cpu" if xp is np else "gpu"
    rows = check_backward(
        lambda x, w, b: F.conv2d_forward(x, w, b, s, p),
        F.conv2d_backward,
        list(conv_args(2, B, H, W, cin, cout, k)),
        names=["x", "w", "b"],
        device=device,
    )
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_conv2d_gradcheck_without_bias():
    x, w, _ = conv_args(3, 1, 5, 6, 3, 2, 3)
    rows = check_backward(lambda x, w: F.conv2d_forward(x, w, None, 2, 1), lambda d, c: F.conv2d_backward(d, c)[:2], [x, w])
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_conv2d_db_is_the_sum_of_dout_without_bias():
    """db is the sum of dout whether or not the forward had a bias (the module drops it)."""
    x, w, _ = conv_args(4, 2, 5, 5, 3, 4, 3)
    out, cache = F.conv2d_forward(x, w, None, 1, 1)
    dout = np.random.default_rng(5).standard_normal(out.shape)
    _, _, db = F.conv2d_backward(dout, cache)
    assert rel_err(db, dout.sum(axis=(0, 1, 2))) < TOLERANCES["parity_f64_rel"]


def test_unread_rows_get_exactly_zero_gradient():
    """12x6 map, k = 3, stride 2, no padding: windows start at rows 0, 2, ..., 8 (Ho = 5)
    and columns 0, 2 (Wo = 2), so row 11 and column 5 are never read (PyTorch's floor)."""
    x, w, b = conv_args(6, 1, 12, 6, 2, 3, 3)
    out, cache = F.conv2d_forward(x, w, b, 2, 0)
    assert out.shape == (1, 5, 2, 3)
    dx, _, _ = F.conv2d_backward(np.random.default_rng(7).standard_normal(out.shape), cache)
    assert np.all(dx[:, 11] == 0.0) and np.all(dx[:, :, 5] == 0.0)
    assert np.all(dx[:, :11, :5] != 0.0)


def test_1x1_stride1_is_a_linear_over_channels():
    x, w, b = conv_args(8, 2, 7, 11, 5, 3, 1)
    out, _ = F.conv2d_forward(x, w, b)
    lin, _ = F.linear_forward(x, w[:, :, 0, 0], b)
    assert rel_err(out, lin) < TOLERANCES["parity_f64_rel"]


def test_image_blocks_give_the_same_result(monkeypatch):
    """Both passes work on a few images at a time; one image per block changes nothing."""
    x, w, b = conv_args(9, 3, 7, 11, 3, 5, 3)
    out, cache = F.conv2d_forward(x, w, b, 2, 1)
    dout = np.random.default_rng(10).standard_normal(out.shape)
    grads = F.conv2d_backward(dout, cache)
    monkeypatch.setattr(conv2d_module, "_COLS_BYTES", 1)
    assert [(s.start, s.stop) for s in conv2d_module._image_blocks(x, 4, 6, 3)] == [(0, 1), (1, 2), (2, 3)]
    out1, cache1 = F.conv2d_forward(x, w, b, 2, 1)
    assert rel_err(out1, out) < 1e-14
    for g1, g in zip(F.conv2d_backward(dout, cache1), grads):
        assert rel_err(g1, g) < 1e-14


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (1, 1, 0)], ids=["3x3", "1x1"])
def test_conv2d_dtype_preserved(xp, dtype, k, s, p):
    x, w, b = (xp.asarray(a.astype(dtype)) for a in conv_args(11, 2, 7, 5, 3, 4, k))
    out, cache = F.conv2d_forward(x, w, b, s, p)
    assert out.dtype == dtype
    grads = F.conv2d_backward(xp.asarray(np.ones(out.shape, dtype=dtype)), cache)
    for g, a in zip(grads, (x, w, b)):
        assert g.dtype == dtype and g.shape == a.shape


def test_float32_close_to_float64():
    x, w, b = conv_args(12, 2, 7, 11, 3, 5, 3)
    out64, _ = F.conv2d_forward(x, w, b, 1, 1)
    out32, _ = F.conv2d_forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), 1, 1)
    assert rel_err(out32, out64) < TOLERANCES["f32_vs_f64_rel"]


@pytest.mark.parity
@pytest.mark.parametrize("B,H,W,cin,cout,k,s,p", CASES)
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")], ids=["f64", "f32"])
def test_conv2d_parity_with_torch(B, H, W, cin, cout, k, s, p, dtype, tol):
    torch = pytest.importorskip("torch")
    x, w, b = (a.astype(dtype) for a in conv_args(13, B, H, W, cin, cout, k))
    out, cache = F.conv2d_forward(x, w, b, s, p)
    dout = np.random.default_rng(14).standard_normal(out.shape).astype(dtype)
    dx, dw, db = F.conv2d_backward(dout, cache)

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = torch.nn.functional.conv2d(tx.permute(0, 3, 1, 2), tw, tb, stride=s, padding=p).permute(0, 2, 3, 1)
    tout.backward(torch.tensor(dout))
    for mine, ref in [(out, tout), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)]:
        assert mine.shape == tuple(ref.shape)
        assert rel_err(mine, ref.detach().numpy()) < TOLERANCES[tol]


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kwargs", "exc", "match"),
    [
        ((1, 5, 5, 3), (4, 2, 3, 3), {}, ValueError, r"x has C_in = 3 channels .* expects C_in = 2"),
        ((1, 5, 5, 3), (4, 3, 3, 3), dict(padding=-1), ValueError, r"padding must be an integer >= 0, got -1"),
        ((1, 5, 5, 3), (4, 3, 3, 3), dict(stride=0), ValueError, r"stride must be an integer >= 1, got 0"),
        ((1, 5, 5, 3), (4, 3, 3, 3), dict(stride=1.5), ValueError, r"stride must be an integer >= 1, got 1.5"),
        ((1, 2, 5, 3), (4, 3, 5, 5), dict(padding=1), ValueError, r"kernel_size 5 is larger than the padded input 4x7"),
        ((5, 5, 3), (4, 3, 3, 3), {}, ValueError, r"'x' must have shape \(B, H, W, C_in\) \(4-D\)"),
        ((1, 5, 5, 3), (4, 3, 3, 2), {}, ValueError, r"square k x k kernel"),
        ((1, 5, 5, 3), (4, 3, 3), {}, ValueError, r"'weight' must have shape \(C_out, C_in, k, k\)"),
    ],
    ids=["channels", "padding", "stride0", "stride-float", "kernel-too-large", "x-3d", "non-square", "weight-3d"],
)
def test_conv2d_bad_input(x_shape, w_shape, kwargs, exc, match):
    r = np.random.default_rng(0)
    with pytest.raises(exc, match=match):
        F.conv2d_forward(r.standard_normal(x_shape), r.standard_normal(w_shape), None, **kwargs)


def test_conv2d_bad_bias_and_dtypes():
    x, w, b = conv_args(15, 1, 5, 5, 3, 4, 3)
    with pytest.raises(ValueError, match=r"'bias' must have shape \(4,\), got \(3,\)"):
        F.conv2d_forward(x, w, b[:3])
    with pytest.raises(TypeError, match=r"'weight' is float32 but 'x' is float64"):
        F.conv2d_forward(x, w.astype(np.float32), None)
    with pytest.raises(TypeError, match=r"'x' must be float32 or float64, got int64"):
        F.conv2d_forward(x.astype(np.int64), w, b)


def test_conv2d_backward_checks_dout_shape():
    x, w, b = conv_args(16, 1, 5, 5, 3, 4, 3)
    _, cache = F.conv2d_forward(x, w, b, 2, 1)
    with pytest.raises(ValueError, match=r"dout must have the forward's output shape \(1, 3, 3, 4\), got \(1, 5, 5, 4\)"):
        F.conv2d_backward(np.zeros((1, 5, 5, 4)), cache)
