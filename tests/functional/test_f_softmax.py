"""Tests of twins_np.functional.softmax: the stable softmax and its Jacobian-vector product."""

from __future__ import annotations

import math

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.backend import asnumpy
from twins_np.gradcheck import TOLERANCES, check_backward


def softmax_loop(x: np.ndarray, axis: int) -> np.ndarray:
    """One line at a time along ``axis``: exp(x_i - max) / sum_j exp(x_j - max)."""
    xm = np.moveaxis(x, axis, -1)
    out = np.empty_like(xm)
    for idx in np.ndindex(*xm.shape[:-1]):
        row = xm[idx]
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = sum(e)
        for j, v in enumerate(e):
            out[idx + (j,)] = v / s
    return np.moveaxis(out, -1, axis)


def softmax_vjp_loop(y: np.ndarray, dout: np.ndarray, axis: int) -> np.ndarray:
    """dx_i = sum_j dout_j dy_j/dx_i = sum_j dout_j y_j (delta_ij - y_i), the full Jacobian per line."""
    ym, dm = np.moveaxis(y, axis, -1), np.moveaxis(dout, axis, -1)
    dx = np.empty_like(ym)
    n = ym.shape[-1]
    for idx in np.ndindex(*ym.shape[:-1]):
        for i in range(n):
            dx[idx + (i,)] = sum(dm[idx + (j,)] * ym[idx + (j,)] * ((i == j) - ym[idx + (i,)]) for j in range(n))
    return np.moveaxis(dx, -1, axis)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_forward_matches_loop(xp, axis):
    x = 2.0 * np.random.default_rng(1).standard_normal((3, 4, 5))
    y, _ = F.softmax_forward(xp.asarray(x), axis=axis)
    assert rel_err(y, softmax_loop(x, axis)) < TOLERANCES["parity_f64_rel"]
    np.testing.assert_allclose(asnumpy(y).sum(axis=axis), 1.0, rtol=0, atol=1e-15)


@pytest.mark.parametrize("axis", [-1, 0])
def test_backward_matches_jacobian_loop(xp, axis):
    x = np.random.default_rng(2).standard_normal((3, 4))
    dout = np.random.default_rng(3).standard_normal((3, 4))
    y, cache = F.softmax_forward(xp.asarray(x), axis=axis)
    dx = F.softmax_backward(xp.asarray(dout), cache)
    assert rel_err(dx, softmax_vjp_loop(asnumpy(y), dout, axis)) < TOLERANCES["parity_f64_rel"]


def test_huge_logits_are_finite_and_exact():
    """The max subtraction makes logits of 1e4 safe; the values are the exact ones."""
    x = np.array(
        [
            [1e4, 0.0, -1e4],
            [1e4, 1e4, 1e4],
            [1e4, 1e4 - 1.0, 1e4 - 2.0],
            [-1e4, -1e4, -1e4 + math.log(2.0)],
        ]
    )
    y, cache = F.softmax_forward(x)
    assert np.all(np.isfinite(y))
    e1, e2 = math.exp(-1.0), math.exp(-2.0)
    z = 1.0 + e1 + e2
    expected = np.array(
        [
            [1.0, 0.0, 0.0],
            [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
            [1.0 / z, e1 / z, e2 / z],
            [0.25, 0.25, 0.5],
        ]
    )
    assert rel_err(y, expected) < TOLERANCES["parity_f64_rel"]
    dx = F.softmax_backward(np.random.default_rng(4).standard_normal(x.shape), cache)
    assert np.all(np.isfinite(dx))
    y32, _ = F.softmax_forward(x.astype(np.float32))
    assert np.all(np.isfinite(y32)) and rel_err(y32, expected) < TOLERANCES["f32_vs_f64_rel"]


def test_shift_invariance():
    x = np.random.default_rng(5).standard_normal((4, 6))
    y, _ = F.softmax_forward(x)
    y_shift, _ = F.softmax_forward(x + 123.0)
    assert rel_err(y_shift, y) < TOLERANCES["parity_f64_rel"]


def test_forward_does_not_modify_input():
    x = np.random.default_rng(6).standard_normal((4, 6))
    x0 = x.copy()
    y, cache = F.softmax_forward(x)
    F.softmax_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize(("shape", "axis"), [((4, 6), -1), ((3, 4, 5), 1), ((5, 1), -1), ((2, 3), 0)])
def test_gradcheck(xp, shape, axis):
    device = "cpu" if xp is np else "gpu"
    x = 2.0 * np.random.default_rng(7).standard_normal(shape)
    rows = check_backward(lambda a: F.softmax_forward(a, axis=axis), F.softmax_backward, [x], names=["x"], device=device)
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


def test_single_entry_axis_has_zero_gradient():
    """A softmax over one entry is the constant 1: dx is exactly 0."""
    x = np.random.default_rng(8).standard_normal((4, 1))
    y, cache = F.softmax_forward(x)
    np.testing.assert_array_equal(y, 1.0)
    np.testing.assert_array_equal(F.softmax_backward(np.random.default_rng(9).standard_normal((4, 1)), cache), 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(xp, dtype):
    x = xp.asarray(np.random.default_rng(10).standard_normal((3, 5)).astype(dtype))
    y, cache = F.softmax_forward(x)
    assert y.dtype == dtype
    dout = xp.asarray(np.random.default_rng(11).standard_normal((3, 5)).astype(dtype))
    assert F.softmax_backward(dout, cache).dtype == dtype


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize("axis", [-1, 1])
def test_parity_with_torch(dtype, tol, axis):
    torch = pytest.importorskip("torch")
    x = (3.0 * np.random.default_rng(12).standard_normal((2, 5, 7))).astype(dtype)
    dout = np.random.default_rng(13).standard_normal(x.shape).astype(dtype)
    y, cache = F.softmax_forward(x, axis=axis)
    dx = F.softmax_backward(dout, cache)

    tx = torch.tensor(x, requires_grad=True)
    ty = torch.softmax(tx, dim=axis)
    ty.backward(torch.tensor(dout))
    assert rel_err(y, ty.detach().numpy()) < TOLERANCES[tol]
    assert rel_err(dx, tx.grad.numpy()) < TOLERANCES[tol]


@pytest.mark.parametrize("dtype", [np.int32, np.float16])
def test_non_float_input_raises(dtype):
    with pytest.raises(TypeError, match="'x' must be float32 or float64"):
        F.softmax_forward(np.zeros((2, 3), dtype=dtype))
