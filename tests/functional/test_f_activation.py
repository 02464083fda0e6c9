"""Tests of twins_np.functional.activation: the exact (erf) GELU, x * Phi(x)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.gradcheck import TOLERANCES, check_backward


def sample(seed: int = 0, shape: tuple[int, ...] = (3, 4, 5)) -> np.ndarray:
    # spread 3: both tails, where Phi saturates and erf is least forgiving
    return 3.0 * np.random.default_rng(seed).standard_normal(shape)


def gelu_loop(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in np.ndindex(*x.shape):
        out[i] = x[i] * 0.5 * (1.0 + math.erf(x[i] / math.sqrt(2.0)))
    return out


def gelu_grad_loop(x: np.ndarray) -> np.ndarray:
    """d/dx [x Phi(x)] = Phi(x) + x phi(x), entry by entry."""
    out = np.empty_like(x)
    for i in np.ndindex(*x.shape):
        cdf = 0.5 * (1.0 + math.erf(x[i] / math.sqrt(2.0)))
        pdf = math.exp(-0.5 * x[i] ** 2) / math.sqrt(2.0 * math.pi)
        out[i] = cdf + x[i] * pdf
    return out


def test_forward_matches_loop(xp):
    x = sample(1)
    out, _ = F.gelu_forward(xp.asarray(x))
    assert rel_err(out, gelu_loop(x)) < TOLERANCES["parity_f64_rel"]


def test_backward_matches_loop(xp):
    x = sample(2)
    dout = np.random.default_rng(3).standard_normal(x.shape)
    _, cache = F.gelu_forward(xp.asarray(x))
    dx = F.gelu_backward(xp.asarray(dout), cache)
    assert rel_err(dx, dout * gelu_grad_loop(x)) < TOLERANCES["parity_f64_rel"]


def test_known_values():
    """GELU(0) = 0, GELU(x) -> x for large x and -> 0 for very negative x."""
    out, _ = F.gelu_forward(np.array([0.0, 40.0, -40.0, 1.0]))
    assert out[0] == 0.0 and out[1] == 40.0 and out[2] == 0.0
    assert abs(out[3] - 0.8413447460685429) < 1e-15  # Phi(1)


def test_gradcheck(xp):
    device = "cpu" if xp is np else "gpu"
    rows = check_backward(F.gelu_forward, F.gelu_backward, [sample(4, (4, 6))], names=["x"], device=device)
    assert rows[0].checked == 24
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(xp, dtype):
    x = xp.asarray(sample(5).astype(dtype))
    out, cache = F.gelu_forward(x)
    assert out.dtype == dtype
    dx = F.gelu_backward(xp.asarray(np.ones(x.shape, dtype=dtype)), cache)
    assert dx.dtype == dtype


def test_float32_close_to_float64():
    x = sample(6)
    out64, _ = F.gelu_forward(x)
    out32, _ = F.gelu_forward(x.astype(np.float32))
    assert rel_err(out32, out64) < TOLERANCES["f32_vs_f64_rel"]


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
def test_parity_with_torch(dtype, tol):
    torch = pytest.importorskip("torch")
    x = sample(7, (5, 8)).astype(dtype)
    out, cache = F.gelu_forward(x)
    dout = np.random.default_rng(8).standard_normal(x.shape).astype(dtype)
    dx = F.gelu_backward(dout, cache)

    tx = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.gelu(tx, approximate="none")
    tout.backward(torch.tensor(dout))
    assert rel_err(out, tout.detach().numpy()) < TOLERANCES[tol]
    assert rel_err(dx, tx.grad.numpy()) < TOLERANCES[tol]


def test_differs_from_tanh_approximation():
    """The exact form is used: the tanh approximation differs by ~1e-4 near |x| = 2."""
    x = np.linspace(-3.0, 3.0, 61)
    out, _ = F.gelu_forward(x)
    tanh = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    assert np.max(np.abs(out - tanh)) > 1e-5


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.float16])
def test_non_float_input_raises(dtype):
    with pytest.raises(TypeError, match="'x' must be float32 or float64"):
        F.gelu_forward(np.ones((2, 3), dtype=dtype))


def test_non_array_raises():
    with pytest.raises(TypeError, match="must be an array"):
        F.gelu_forward([1.0, 2.0])


# --- ReLU ------------------------------------------------------------------------------


def test_relu_forward_and_backward_match_loop(xp):
    x = sample(9, (2, 7, 11, 3))
    dout = np.random.default_rng(10).standard_normal(x.shape)
    out, cache = F.relu_forward(xp.asarray(x))
    dx = F.relu_backward(xp.asarray(dout), cache)
    ref_out, ref_dx = np.empty_like(x), np.empty_like(x)
    for i in np.ndindex(*x.shape):
        ref_out[i] = x[i] if x[i] > 0 else 0.0
        ref_dx[i] = dout[i] if x[i] > 0 else 0.0
    assert rel_err(out, ref_out) == 0.0 and rel_err(dx, ref_dx) == 0.0


def test_relu_at_zero_and_negative():
    """Gradient 0 at x = 0 (PyTorch's choice); negative inputs give +0.0, NaN stays NaN."""
    out, cache = F.relu_forward(np.array([0.0, -2.0, 3.0, np.nan]))
    assert np.array_equal(out[:3], [0.0, 0.0, 3.0]) and not np.signbit(out[1]) and np.isnan(out[3])
    assert np.array_equal(F.relu_backward(np.array([5.0, 5.0, 5.0, 5.0]), cache), [0.0, 0.0, 5.0, 0.0])


def test_relu_gradcheck(xp):
    device = "cpu" if xp is np else "gpu"
    rows = check_backward(F.relu_forward, F.relu_backward, [sample(11, (3, 5, 7))], names=["x"], device=device)
    assert rows[0].checked == 105
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_dtype_preserved(xp, dtype):
    x = xp.asarray(sample(12).astype(dtype))
    out, cache = F.relu_forward(x)
    assert out.dtype == dtype
    assert F.relu_backward(xp.asarray(np.ones(x.shape, dtype=dtype)), cache).dtype == dtype


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
def test_relu_parity_with_torch(dtype, tol):
    torch = pytest.importorskip("torch")
    x = sample(13, (2, 7, 11, 5)).astype(dtype)
    out, cache = F.relu_forward(x)
    dout = np.random.default_rng(14).standard_normal(x.shape).astype(dtype)
    dx = F.relu_backward(dout, cache)
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.relu(tx)
    tout.backward(torch.tensor(dout))
    assert rel_err(out, tout.detach().numpy()) < TOLERANCES[tol]
    assert rel_err(dx, tx.grad.numpy()) < TOLERANCES[tol]


def test_relu_bad_input():
    with pytest.raises(TypeError, match="'x' must be float32 or float64, got int64"):
        F.relu_forward(np.arange(4))
    _, cache = F.relu_forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dout must have the forward's shape \(2, 3\), got \(3, 2\)"):
        F.relu_backward(np.ones((3, 2)), cache)
