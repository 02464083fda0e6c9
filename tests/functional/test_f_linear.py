"""Tests of twins_np.functional.linear: y = x W^T + b over the last axis, W stored (D_out, D_in)."""

from __future__ import annotations

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.backend import cupy_available
from twins_np.gradcheck import TOLERANCES, check_backward

D_IN, D_OUT = 4, 5


def make_args(seed: int = 0, lead: tuple[int, ...] = (2, 3)):
    r = np.random.default_rng(seed)
    return r.standard_normal((*lead, D_IN)), r.standard_normal((D_OUT, D_IN)), r.standard_normal(D_OUT)


def linear_loop(x, w, b):
    """out[..., o] = b[o] + sum_i x[..., i] w[o, i], one output entry at a time."""
    x2 = x.reshape(-1, x.shape[-1])
    out = np.zeros((x2.shape[0], w.shape[0]))
    for n in range(x2.shape[0]):
        for o in range(w.shape[0]):
            s = 0.0 if b is None else b[o]
            for i in range(w.shape[1]):
                s += x2[n, i] * w[o, i]
            out[n, o] = s
    return out.reshape(*x.shape[:-1], w.shape[0])


@pytest.mark.parametrize("lead", [(7,), (2, 3), (2, 1, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_matches_loop(xp, lead, with_bias):
    x, w, b = make_args(1, lead)
    b = b if with_bias else None
    out, _ = F.linear_forward(xp.asarray(x), xp.asarray(w), None if b is None else xp.asarray(b))
    assert out.shape == (*lead, D_OUT)
    assert rel_err(out, linear_loop(x, w, b)) < TOLERANCES["parity_f64_rel"]


def test_forward_does_not_modify_inputs():
    x, w, b = make_args(2)
    copies = [a.copy() for a in (x, w, b)]
    F.linear_forward(x, w, b)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("lead", [(6,), (2, 3)])
def test_gradcheck(xp, lead):
    device = "cpu" if xp is np else "gpu"
    rows = check_backward(F.linear_forward, F.linear_backward, list(make_args(3, lead)), names=["x", "w", "b"], device=device)
    assert [r.name for r in rows] == ["x", "w", "b"]
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_gradcheck_without_bias():
    x, w, _ = make_args(4)
    rows = check_backward(lambda x_, w_: F.linear_forward(x_, w_, None), F.linear_backward, [x, w], names=["x", "w"])
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(xp, dtype):
    x, w, b = (xp.asarray(a.astype(dtype)) for a in make_args(5))
    out, cache = F.linear_forward(x, w, b)
    assert out.dtype == dtype
    dout = xp.asarray(np.random.default_rng(6).standard_normal(out.shape).astype(dtype))
    grads = F.linear_backward(dout, cache)
    assert len(grads) == 3
    for g, a in zip(grads, (x, w, b)):
        assert g.dtype == dtype and g.shape == a.shape


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
def test_parity_with_torch(dtype, tol):
    torch = pytest.importorskip("torch")
    x, w, b = (a.astype(dtype) for a in make_args(7, (3, 4)))
    out, cache = F.linear_forward(x, w, b)
    dout = np.random.default_rng(8).standard_normal(out.shape).astype(dtype)
    dx, dw, db = F.linear_backward(dout, cache)

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = torch.nn.functional.linear(tx, tw, tb)
    tout.backward(torch.tensor(dout))
    scale = max(float(np.abs(t.grad.numpy()).max()) for t in (tx, tw, tb))
    assert rel_err(out, tout.detach().numpy()) < TOLERANCES[tol]
    for mine, t in zip((dx, dw, db), (tx, tw, tb)):
        assert rel_err(mine, t.grad.numpy(), scale) < TOLERANCES[tol]


def test_wrong_feature_count_raises():
    x, w, b = make_args(9)
    with pytest.raises(ValueError, match="input features"):
        F.linear_forward(x, np.ones((D_OUT, D_IN + 1)), b)


def test_weight_wrong_ndim_raises():
    x, _, _ = make_args(9)
    with pytest.raises(ValueError, match="weight shape"):
        F.linear_forward(x, np.ones(D_IN), None)


@pytest.mark.parametrize("bias_shape", [(D_OUT + 1,), (1,), (D_OUT, 1)])
def test_bias_wrong_shape_raises(bias_shape):
    """A bias that is not (D_out,) must be refused by name, not broadcast (db would get the wrong shape)."""
    x, w, _ = make_args(9)
    with pytest.raises(ValueError, match="bias"):
        F.linear_forward(x, w, np.ones(bias_shape))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.float16])
def test_non_float_input_raises(dtype):
    x, w, b = make_args(10)
    with pytest.raises(TypeError, match="'x' must be float32 or float64"):
        F.linear_forward(x.astype(dtype), w.astype(np.float32), b.astype(np.float32))


def test_mixed_precision_raises():
    x, w, b = make_args(11)
    with pytest.raises(TypeError, match="'weight' is float64 but 'x' is float32"):
        F.linear_forward(x.astype(np.float32), w, b)
    with pytest.raises(TypeError, match="'bias' is float32"):
        F.linear_forward(x, w, b.astype(np.float32))


@pytest.mark.gpu
def test_mixed_numpy_cupy_raises():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    x, w, b = make_args(12)
    with pytest.raises(TypeError, match="'weight' is a CuPy"):
        F.linear_forward(x, cupy.asarray(w), b)
