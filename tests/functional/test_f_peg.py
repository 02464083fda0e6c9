"""Tests of twins_np.functional.peg: the PEG, x + depthwise 3x3 conv of the token map."""

from __future__ import annotations

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.gradcheck import TOLERANCES, check_backward


def make_args(seed: int, B: int, H: int, W: int, C: int):
    r = np.random.default_rng(seed)
    return r.standard_normal((B, H * W, C)), 0.5 * r.standard_normal((C, 1, 3, 3)), r.standard_normal(C)


def peg_loop(x, size, w, b):
    """Token n = h*W + w; each output token adds its 3x3 neighbourhood (zero outside) per channel."""
    B, N, C = x.shape
    H, W = size
    out = x.copy()
    for bb in range(B):
        for n in range(N):
            i, j = divmod(n, W)
            for c in range(C):
                s = b[c]
                for u in range(3):
                    for v in range(3):
                        ii, jj = i + u - 1, j + v - 1
                        if 0 <= ii < H and 0 <= jj < W:
                            s += x[bb, ii * W + jj, c] * w[c, 0, u, v]
                out[bb, n, c] += s
    return out


SIZES = [(5, 6), (1, 1), (2, 1), (1, 7), (4, 4)]


@pytest.mark.parametrize("size", SIZES)
def test_forward_matches_loop(xp, size):
    x, w, b = make_args(1, 2, *size, 3)
    out, cache = F.peg_forward(xp.asarray(x), size, xp.asarray(w), xp.asarray(b))
    assert cache.size == size
    assert rel_err(out, peg_loop(x, size, w, b)) < TOLERANCES["parity_f64_rel"]


def test_forward_does_not_modify_input():
    x, w, b = make_args(2, 1, 5, 6, 3)
    x0 = x.copy()
    out, cache = F.peg_forward(x, (5, 6), w, b)
    F.peg_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("size", SIZES)
def test_gradcheck(xp, size):
    device = "cpu" if xp is np else "gpu"
    x, w, b = make_args(3, 2, *size, 3)
    rows = check_backward(F.peg_forward, F.peg_backward, [x, size, w, b], wrt=[0, 2, 3], names=["x", "w", "b"], device=device)
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_zero_conv_is_identity_plus_bias():
    """With a zero kernel the PEG is x + b, and dx = dout (the residual alone)."""
    x, _, b = make_args(4, 2, 3, 4, 5)
    out, cache = F.peg_forward(x, (3, 4), np.zeros((5, 1, 3, 3)), b)
    np.testing.assert_array_equal(out, x + b)
    dout = np.random.default_rng(5).standard_normal(out.shape)
    np.testing.assert_array_equal(F.peg_backward(dout, cache)[0], dout)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(xp, dtype):
    x, w, b = (xp.asarray(a.astype(dtype)) for a in make_args(6, 2, 5, 6, 3))
    out, cache = F.peg_forward(x, (5, 6), w, b)
    assert out.dtype == dtype
    grads = F.peg_backward(xp.asarray(np.ones(out.shape, dtype=dtype)), cache)
    for g, a in zip(grads, (x, w, b)):
        assert g.dtype == dtype and g.shape == a.shape


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize("size", [(14, 14), (7, 7), (16, 24), (1, 1)])
def test_parity_with_timm_posconv(dtype, tol, size):
    torch = pytest.importorskip("torch")
    twins = pytest.importorskip("timm.models.twins")
    C = 8
    x, w, b = (a.astype(dtype) for a in make_args(7, 2, *size, C))
    out, cache = F.peg_forward(x, size, w, b)
    dout = np.random.default_rng(8).standard_normal(out.shape).astype(dtype)
    grads = F.peg_backward(dout, cache)

    m = twins.PosConv(C, C).to(torch.from_numpy(x).dtype)
    m.load_state_dict({"proj.0.weight": torch.from_numpy(w), "proj.0.bias": torch.from_numpy(b)})
    tx = torch.tensor(x, requires_grad=True)
    tout = m(tx, size)
    tout.backward(torch.tensor(dout))
    t_grads = [tx.grad.numpy(), m.proj[0].weight.grad.numpy(), m.proj[0].bias.grad.numpy()]
    scale = max(float(np.abs(g).max()) for g in t_grads)
    assert rel_err(out, tout.detach().numpy()) < TOLERANCES[tol]
    for mine, ref in zip(grads, t_grads):
        assert rel_err(mine, ref, scale) < TOLERANCES[tol]


def test_token_count_mismatch_raises():
    x, w, b = make_args(9, 1, 5, 6, 3)
    with pytest.raises(ValueError, match=r"N = 30 tokens but size \(H, W\) = \(6, 6\)"):
        F.peg_forward(x, (6, 6), w, b)


def test_weight_wrong_shape_raises():
    x, _, b = make_args(10, 1, 5, 6, 3)
    with pytest.raises(ValueError, match=r"'weight' must have shape \(3, 1, 3, 3\)"):
        F.peg_forward(x, (5, 6), np.zeros((3, 3, 3, 3)), b)


def test_integer_input_raises():
    _, w, b = make_args(11, 1, 5, 6, 3)
    with pytest.raises(TypeError, match="float32 or float64"):
        F.peg_forward(np.ones((1, 30, 3), dtype=np.int32), (5, 6), w, b)


def test_mixed_precision_raises():
    x, w, b = make_args(12, 1, 5, 6, 3)
    with pytest.raises(TypeError, match="'weight' is float32 but 'x' is float64"):
        F.peg_forward(x, (5, 6), w.astype(np.float32), b)
