"""Tests of twins_np.functional.layernorm: LayerNorm over the last axis (eps 1e-6 and 1e-5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.backend import asnumpy, cupy_available
from twins_np.gradcheck import TOLERANCES, check_backward

C = 6


def make_args(seed: int = 0, shape: tuple[int, ...] = (2, 3, C)):
    """x with a per-row offset and spread; random gamma (not 1) and beta (not 0)."""
    r = np.random.default_rng(seed)
    x = 2.0 * r.standard_normal(shape) + r.standard_normal(shape[:-1] + (1,))
    return x, 1.0 + 0.5 * r.standard_normal(shape[-1]), r.standard_normal(shape[-1])


def layernorm_loop(x, gamma, beta, eps):
    """Per row: mean, biased variance, normalise, then gamma * xhat + beta."""
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = [float(v) for v in x[idx]]
        n = len(row)
        mean = sum(row) / n
        var = sum((v - mean) ** 2 for v in row) / n
        inv = 1.0 / math.sqrt(var + eps)
        for c in range(n):
            out[idx + (c,)] = gamma[c] * (row[c] - mean) * inv + beta[c]
    return out


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
@pytest.mark.parametrize("shape", [(2, 3, C), (5, C), (1, 1, 1, C)])
def test_forward_matches_loop(xp, eps, shape):
    x, g, b = make_args(1, shape)
    y, cache = F.layernorm_forward(xp.asarray(x), xp.asarray(g), xp.asarray(b), eps)
    assert rel_err(y, layernorm_loop(x, g, b, eps)) < TOLERANCES["parity_f64_rel"]
    assert cache._fields == ("xhat", "inv_std", "gamma")


def test_eps_is_used():
    x, g, b = make_args(2)
    x = 1e-3 * x  # variance ~1e-6, the size of eps, so eps matters
    y5, _ = F.layernorm_forward(x, g, b, 1e-5)
    y6, _ = F.layernorm_forward(x, g, b, 1e-6)
    assert rel_err(y5, layernorm_loop(x, g, b, 1e-5)) < TOLERANCES["parity_f64_rel"]
    assert np.max(np.abs(y5 - y6)) > 1e-2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_row_gives_beta(xp, dtype):
    """var = 0: xhat = 0 / sqrt(eps) = 0 exactly, so the output is beta with no NaN."""
    _, g, b = make_args(3)
    x = np.full((2, 4, C), 7.25)
    x[1] = -3.5
    y, cache = F.layernorm_forward(*(xp.asarray(a.astype(dtype)) for a in (x, g, b)))
    y = asnumpy(y)
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y, np.broadcast_to(b.astype(dtype), y.shape))
    dx, dg, db = F.layernorm_backward(xp.asarray(np.random.default_rng(4).standard_normal(x.shape).astype(dtype)), cache)
    assert all(np.all(np.isfinite(asnumpy(a))) for a in (dx, dg, db))


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
@pytest.mark.parametrize("shape", [(2, 3, C), (4, 1)])
def test_gradcheck(xp, eps, shape):
    device = "cpu" if xp is np else "gpu"
    rows = check_backward(
        lambda x, g, b: F.layernorm_forward(x, g, b, eps),
        F.layernorm_backward,
        list(make_args(5, shape)),
        names=["x", "gamma", "beta"],
        device=device,
    )
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_dx_is_orthogonal_to_ones_and_xhat():
    """The mean and variance terms make dx sum to 0 per row and (with eps = 0) be orthogonal to xhat.

    With eps > 0, sum(xhat^2) = C var / (var + eps) is not exactly C, so only eps = 0 gives an exact identity.
    """
    x, g, b = make_args(6)
    y, cache = F.layernorm_forward(x, g, b, 0.0)
    dx, _, _ = F.layernorm_backward(np.random.default_rng(7).standard_normal(x.shape), cache)
    assert np.max(np.abs(dx.sum(axis=-1))) < 1e-12 * np.max(np.abs(dx)) * C
    assert np.max(np.abs((dx * cache.xhat).sum(axis=-1))) < 1e-12 * np.max(np.abs(dx)) * C


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(xp, dtype):
    x, g, b = (xp.asarray(a.astype(dtype)) for a in make_args(8))
    y, cache = F.layernorm_forward(x, g, b, 1e-6)
    assert y.dtype == dtype
    grads = F.layernorm_backward(xp.asarray(np.random.default_rng(9).standard_normal(y.shape).astype(dtype)), cache)
    for grad, a in zip(grads, (x, g, b)):
        assert grad.dtype == dtype and grad.shape == a.shape


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_parity_with_torch(dtype, tol, eps):
    torch = pytest.importorskip("torch")
    x, g, b = (a.astype(dtype) for a in make_args(10, (2, 7, 16)))
    dout = np.random.default_rng(11).standard_normal(x.shape).astype(dtype)
    y, cache = F.layernorm_forward(x, g, b, eps)
    grads = F.layernorm_backward(dout, cache)

    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, g, b))
    ty = torch.nn.functional.layer_norm(tx, (16,), tg, tb, eps)
    ty.backward(torch.tensor(dout))
    scale = max(float(np.abs(t.grad.numpy()).max()) for t in (tx, tg, tb))
    assert rel_err(y, ty.detach().numpy()) < TOLERANCES[tol]
    for mine, t in zip(grads, (tx, tg, tb)):
        assert rel_err(mine, t.grad.numpy(), scale) < TOLERANCES[tol]


@pytest.mark.parametrize("which", ["gamma", "beta"])
def test_wrong_affine_shape_raises(which):
    x, g, b = make_args(12)
    if which == "gamma":
        g = np.ones(C + 1)
    else:
        b = np.ones((1, C))
    with pytest.raises(ValueError, match="gamma/beta have shapes"):
        F.layernorm_forward(x, g, b)


@pytest.mark.parametrize("dtype", [np.int64, np.float16])
def test_non_float_input_raises(dtype):
    x, g, b = make_args(13)
    with pytest.raises(TypeError, match="'x' must be float32 or float64"):
        F.layernorm_forward(x.astype(dtype), g, b)


def test_mixed_precision_raises():
    x, g, b = make_args(14)
    with pytest.raises(TypeError, match="'gamma' is float32 but 'x' is float64"):
        F.layernorm_forward(x, g.astype(np.float32), b)


@pytest.mark.gpu
def test_mixed_numpy_cupy_raises():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    x, g, b = make_args(15)
    with pytest.raises(TypeError, match="'beta' is a CuPy"):
        F.layernorm_forward(x, g, cupy.asarray(b))
