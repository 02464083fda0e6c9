"""Tests of twins_np.functional.attention: the multi-head scaled dot-product core and the head split."""

from __future__ import annotations

import math

import numpy as np
import pytest
from f_helpers import assert_grad_close, rel_err

from twins_np import functional as F
from twins_np.backend import asnumpy, cupy_available
from twins_np.gradcheck import TOLERANCES, check_backward


def qkv(seed: int, lead: tuple[int, ...], nq: int, nk: int, hd: int):
    r = np.random.default_rng(seed)
    return r.standard_normal((*lead, nq, hd)), r.standard_normal((*lead, nk, hd)), r.standard_normal((*lead, nk, hd))


def attention_loop(q, k, v, scale, mask=None):
    """Per batch index, head and query: weights = softmax(scale q.k_j), then sum_j weights_j v_j."""
    out = np.zeros(q.shape)
    nk = k.shape[-2]
    for lead in np.ndindex(*q.shape[:-2]):
        for i in range(q.shape[-2]):
            s = [scale * float(np.dot(q[lead][i], k[lead][j])) for j in range(nk)]
            m = max(s)
            e = [math.exp(t - m) for t in s]
            z = sum(e)
            for j in range(nk):
                p = e[j] / z * (1.0 if mask is None else mask[lead][i, j])
                out[lead][i] += p * v[lead][j]
    return out


# --- head split --------------------------------------------------------------------


@pytest.mark.parametrize("lead", [(), (2,), (2, 3)])
def test_split_heads_layout_and_merge_inverse(xp, lead):
    """split_heads(x)[..., h, n, j] == x[..., n, h*hd + j]; merge_heads undoes it exactly."""
    heads, hd, N = 3, 4, 5
    x = np.random.default_rng(1).standard_normal((*lead, N, heads * hd))
    s = asnumpy(F.split_heads(xp.asarray(x), heads))
    assert s.shape == (*lead, heads, N, hd)
    for idx in np.ndindex(*lead):
        for h in range(heads):
            for n in range(N):
                for j in range(hd):
                    assert s[idx + (h, n, j)] == x[idx + (n, h * hd + j)]
    np.testing.assert_array_equal(asnumpy(F.merge_heads(F.split_heads(xp.asarray(x), heads))), x)
    y = np.random.default_rng(2).standard_normal((*lead, heads, N, hd))
    np.testing.assert_array_equal(asnumpy(F.split_heads(F.merge_heads(xp.asarray(y)), heads)), y)


# --- attention core ----------------------------------------------------------------

CASES = [((2, 3), 5, 7, 4), ((1,), 4, 4, 2), ((2, 2), 3, 1, 4), ((2,), 1, 6, 3), ((), 6, 2, 5)]


@pytest.mark.parametrize(("lead", "nq", "nk", "hd"), CASES)
def test_forward_matches_loop(xp, lead, nq, nk, hd):
    q, k, v = qkv(3, lead, nq, nk, hd)
    out, cache = F.attention_forward(*(xp.asarray(a) for a in (q, k, v)))
    assert cache.scale == hd**-0.5
    assert rel_err(out, attention_loop(q, k, v, hd**-0.5)) < TOLERANCES["parity_f64_rel"]


def test_explicit_scale_is_used():
    q, k, v = qkv(4, (2,), 4, 5, 3)
    out, _ = F.attention_forward(q, k, v, scale=0.7)
    assert rel_err(out, attention_loop(q, k, v, 0.7)) < TOLERANCES["parity_f64_rel"]


def test_attention_dropout_with_fixed_mask():
    """The mask multiplies the probabilities after the softmax (timm's attn_drop)."""
    q, k, v = qkv(5, (2,), 4, 5, 3)
    mask = (np.random.default_rng(6).random((2, 4, 5)) < 0.6) / 0.6
    out, _ = F.attention_forward(q, k, v, attn_drop=0.4, drop_mask=mask)
    assert rel_err(out, attention_loop(q, k, v, 3**-0.5, mask)) < TOLERANCES["parity_f64_rel"]
    out_eval, _ = F.attention_forward(q, k, v, attn_drop=0.4, drop_mask=mask, training=False)
    assert rel_err(out_eval, attention_loop(q, k, v, 3**-0.5)) < TOLERANCES["parity_f64_rel"]


@pytest.mark.parametrize(("lead", "nq", "nk", "hd"), CASES)
def test_gradcheck(xp, lead, nq, nk, hd):
    device = "cpu" if xp is np else "gpu"
    rows = check_backward(
        F.attention_forward, F.attention_backward, list(qkv(7, lead, nq, nk, hd)), names=["q", "k", "v"], device=device
    )
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_gradcheck_with_dropout_mask():
    mask = (np.random.default_rng(8).random((2, 4, 5)) < 0.5) / 0.5
    rows = check_backward(
        lambda q, k, v: F.attention_forward(q, k, v, attn_drop=0.5, drop_mask=mask),
        F.attention_backward,
        list(qkv(9, (2,), 4, 5, 3)),
        names=["q", "k", "v"],
    )
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_single_key_gives_exactly_zero_query_gradient():
    """With one key the softmax is the constant 1: out = v for every query and dq = 0 exactly."""
    q, k, v = qkv(10, (2, 2), 5, 1, 4)
    out, cache = F.attention_forward(q, k, v)
    np.testing.assert_array_equal(out, np.broadcast_to(v, out.shape))
    dq, dk, dv = F.attention_backward(np.random.default_rng(11).standard_normal(out.shape), cache)
    np.testing.assert_array_equal(dq, 0.0)
    np.testing.assert_array_equal(dk, 0.0)
    assert np.all(dv != 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(xp, dtype):
    q, k, v = (xp.asarray(a.astype(dtype)) for a in qkv(12, (2, 3), 5, 6, 4))
    out, cache = F.attention_forward(q, k, v)
    assert out.dtype == dtype
    grads = F.attention_backward(xp.asarray(np.ones(out.shape, dtype=dtype)), cache)
    for g, a in zip(grads, (q, k, v)):
        assert g.dtype == dtype and g.shape == a.shape


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize(("nq", "nk"), [(49, 49), (20, 6), (9, 1)])
def test_parity_with_torch_sdpa(dtype, tol, scale, nq, nk):
    torch = pytest.importorskip("torch")
    q, k, v = (a.astype(dtype) for a in qkv(13, (2, 3), nq, nk, 8))
    dout = np.random.default_rng(14).standard_normal(q.shape).astype(dtype)
    out, cache = F.attention_forward(q, k, v, scale=scale)
    grads = F.attention_backward(dout, cache)

    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=scale)
    tout.backward(torch.tensor(dout))
    t_grads = [t.grad.numpy() for t in (tq, tk, tv)]
    # with a single key our dq, dk are exactly 0 and torch's are rounding noise
    scale_all = max(float(np.abs(g).max()) for g in t_grads)
    assert rel_err(out, tout.detach().numpy()) < TOLERANCES[tol]
    for mine, ref in zip(grads, t_grads):
        assert_grad_close(mine, ref, TOLERANCES[tol], scale_all)
    assert (nk == 1) == (not np.any(grads[0]))


def test_hd_mismatch_raises():
    q, k, v = qkv(15, (2,), 4, 5, 3)
    with pytest.raises(ValueError, match="do not fit"):
        F.attention_forward(q[..., :2], k, v)
    with pytest.raises(ValueError, match="do not fit"):
        F.attention_forward(q, k, v[:, :4])


def test_mixed_precision_raises():
    q, k, v = qkv(16, (2,), 4, 5, 3)
    with pytest.raises(TypeError, match="'v' is float32 but 'q' is float64"):
        F.attention_forward(q, k, v.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.int64, np.float16])
def test_non_float_input_raises(dtype):
    q, k, v = (a.astype(dtype) for a in qkv(17, (2,), 4, 5, 3))
    with pytest.raises(TypeError, match="'q' must be float32 or float64"):
        F.attention_forward(q, k, v)


@pytest.mark.gpu
def test_mixed_numpy_cupy_raises():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    q, k, v = qkv(18, (2,), 4, 5, 3)
    with pytest.raises(TypeError, match="'k' is a CuPy"):
        F.attention_forward(q, cupy.asarray(k), v)
