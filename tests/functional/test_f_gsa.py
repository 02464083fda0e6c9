"""Tests of twins_np.functional.gsa: global sub-sampled attention (q from every token, k/v from a floored sr-conv + LN)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from attention_inputs import gsa_call, gsa_params
from f_helpers import assert_grad_close, rel_err

from twins_np import functional as F
from twins_np.backend import cupy_available
from twins_np.gradcheck import TOLERANCES, check_backward

BASE = ["q_w", "q_b", "kv_w", "kv_b", "proj_w", "proj_b"]
SR = ["sr_w", "sr_b", "norm_w", "norm_b"]


def by_name(g: tuple) -> dict:
    """gsa_backward's tuple (the forward's argument order) as {argument name: gradient}."""
    dx, dq_w, dq_b, dkv_w, dkv_b, dproj_w, dproj_b, dsr, dnorm_w, dnorm_b = g
    out = dict(x=dx, q_w=dq_w, q_b=dq_b, kv_w=dkv_w, kv_b=dkv_b, proj_w=dproj_w, proj_b=dproj_b)
    if dsr:
        out.update(sr_w=dsr[0], sr_b=dsr[1], norm_w=dnorm_w, norm_b=dnorm_b)
    return out


def gsa_loop(p: dict, size, heads: int, sr: int, eps: float = 1e-5):
    """Per query with explicitly sub-sampled keys: conv per output pixel, LayerNorm per row, softmax per head."""
    x = p["x"]
    B, N, C = x.shape
    H, W = size
    hd = C // heads
    out = np.zeros((B, N, C))
    for b in range(B):
        if sr > 1:
            src = []
            for i in range(H // sr):
                for j in range(W // sr):
                    s = p["sr_b"].copy()
                    for u in range(sr):
                        for v in range(sr):
                            s += p["sr_w"][:, :, u, v] @ x[b, (sr * i + u) * W + sr * j + v]
                    mean = sum(s) / C
                    var = sum((t - mean) ** 2 for t in s) / C
                    src.append(p["norm_w"] * (s - mean) / math.sqrt(var + eps) + p["norm_b"])
        else:
            src = [x[b, n] for n in range(N)]
        kv = [p["kv_w"] @ s + p["kv_b"] for s in src]
        for n in range(N):
            q = p["q_w"] @ x[b, n] + p["q_b"]
            o = np.zeros(C)
            for h in range(heads):
                sl = slice(h * hd, (h + 1) * hd)
                # kv rows are [k; v]: the key of head h is f[h*hd:(h+1)*hd], its value f[C + h*hd : C + (h+1)*hd]
                sc = [float(np.dot(q[sl], f[sl])) / math.sqrt(hd) for f in kv]
                m = max(sc)
                e = [math.exp(t - m) for t in sc]
                z = sum(e)
                for w_, f in zip(e, kv):
                    o[sl] += w_ / z * f[C + h * hd : C + (h + 1) * hd]
            out[b, n] = p["proj_w"] @ o + p["proj_b"]
    return out


# (H, W, sr): plain MHSA, a floored conv (7x5 / 2 -> 3x2), a single key (7x5 / 4 -> 1x1), a single token
CASES = [(7, 5, 1), (7, 5, 2), (7, 5, 4), (1, 1, 1), (5, 6, 2), (4, 4, 4)]


@pytest.mark.parametrize(("H", "W", "sr"), CASES)
def test_forward_matches_loop(xp, H, W, sr):
    p = gsa_params(1, 2, H, W, 4, sr)
    out, cache = gsa_call(p, (H, W), 2, sr, xp=xp)
    assert rel_err(out, gsa_loop(p, (H, W), 2, sr)) < TOLERANCES["parity_f64_rel"]
    assert cache.attn.k.shape[-2] == (H // sr) * (W // sr)  # number of keys: floored


@pytest.mark.parametrize(("H", "W", "sr"), CASES)
def test_gradcheck(xp, H, W, sr):
    device = "cpu" if xp is np else "gpu"
    p = gsa_params(2, 2, H, W, 4, sr)
    names = ["x"] + BASE + (SR if sr > 1 else [])

    def fwd(x, *params):
        sub = dict(sr_params=params[6:8], norm_w=params[8], norm_b=params[9]) if sr > 1 else {}
        return F.gsa_forward(x, (H, W), *params[:6], num_heads=2, sr_ratio=sr, **sub)

    rows = check_backward(fwd, F.gsa_backward, [p[n] for n in names], names=names, device=device)
    assert [r.name for r in rows] == names
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_sr_one_has_no_conv_and_no_norm():
    p = gsa_params(3, 1, 3, 4, 4, 1)
    _, cache = gsa_call(p, (3, 4), 2, 1)
    assert cache.sr is None and cache.norm is None
    g = F.gsa_backward(np.random.default_rng(4).standard_normal((1, 12, 4)), cache)
    assert len(g) == 10 and g[7] == () and g[8] is None and g[9] is None  # no sub-sampling, no norm


def test_single_key_gives_zero_query_gradient():
    """7x5 with sr 4 leaves one key: attention is constant, so q_w, q_b and the key rows of kv_w get exactly 0."""
    p = gsa_params(5, 2, 7, 5, 4, 4)
    out, cache = gsa_call(p, (7, 5), 2, 4)
    g = by_name(F.gsa_backward(np.random.default_rng(6).standard_normal(out.shape), cache))
    np.testing.assert_array_equal(g["q_w"], 0.0)
    np.testing.assert_array_equal(g["q_b"], 0.0)
    # the key is as useless as the queries (k rows of kv: 0); the value carries everything
    np.testing.assert_array_equal(g["kv_w"][:4], 0.0)
    assert np.all(g["kv_w"][4:] != 0.0)
    assert np.max(np.abs(out - out[:, :1])) < 1e-14 * np.max(np.abs(out))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sr", [1, 2])
def test_dtype_preserved(xp, dtype, sr):
    p = gsa_params(9, 2, 5, 6, 4, sr)
    out, cache = gsa_call(p, (5, 6), 2, sr, dtype=dtype, xp=xp)
    assert out.dtype == dtype
    g = by_name(F.gsa_backward(xp.asarray(np.random.default_rng(10).standard_normal(out.shape).astype(dtype)), cache))
    assert set(g) == {"x", *BASE, *(SR if sr > 1 else [])}
    for name, grad in g.items():
        assert grad.dtype == dtype and grad.shape == p[name].shape, name


# --- parity with timm's GlobalSubSampleAttn ---------------------------------------


def timm_gsa(torch, p: dict, size, heads: int, sr: int, dout):
    from timm.models.twins import GlobalSubSampleAttn

    keys = {
        "q_w": "q.weight",
        "q_b": "q.bias",
        "kv_w": "kv.weight",
        "kv_b": "kv.bias",
        "proj_w": "proj.weight",
        "proj_b": "proj.bias",
    }
    keys.update({"sr_w": "sr.weight", "sr_b": "sr.bias", "norm_w": "norm.weight", "norm_b": "norm.bias"})
    x = p["x"]
    m = GlobalSubSampleAttn(x.shape[-1], num_heads=heads, sr_ratio=sr).to(torch.from_numpy(x).dtype)
    m.load_state_dict({keys[k]: torch.from_numpy(v) for k, v in p.items() if k != "x"})
    tx = torch.tensor(x, requires_grad=True)
    out = m(tx, size)
    out.backward(torch.tensor(dout))
    params = dict(m.named_parameters())
    grads = {"x": tx.grad.numpy()} | {k: params[keys[k]].grad.numpy() for k in p if k != "x"}
    return out.detach().numpy(), grads


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize(
    ("B", "H", "W", "sr"),
    [(1, 56, 56, 8), (1, 57, 57, 8), (2, 28, 28, 4), (2, 25, 25, 8), (2, 16, 24, 8), (2, 8, 8, 8), (2, 7, 7, 1), (2, 1, 1, 1)],
    ids=["56-sr8", "57-sr8-floors", "28-sr4", "25-sr8-9keys", "16x24-sr8", "8-sr8-1key", "7-sr1", "1x1-sr1"],
)
def test_parity_with_timm(dtype, tol, B, H, W, sr):
    """Stage maps of TWINS_SPEC section 3 at inputs 224, 230, 100, 64x96, 32; C = 16."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    p = {k: v.astype(dtype) for k, v in gsa_params(11, B, H, W, 16, sr).items()}
    out, cache = gsa_call(p, (H, W), 2, sr)
    dout = np.random.default_rng(12).standard_normal(out.shape).astype(dtype)
    g = by_name(F.gsa_backward(dout, cache))
    t_out, t_g = timm_gsa(torch, p, (H, W), 2, sr, dout)
    assert set(g) == set(t_g)
    scale = max(float(np.abs(v).max()) for v in t_g.values())
    assert rel_err(out, t_out) < TOLERANCES[tol]
    for name in t_g:
        assert_grad_close(g[name], t_g[name], TOLERANCES[tol], scale)


# --- bad inputs --------------------------------------------------------------------


def test_sr_larger_than_map_raises():
    p = gsa_params(13, 1, 7, 5, 4, 8)
    with pytest.raises(ValueError, match="sr = 8 is larger than the 7x5 map"):
        gsa_call(p, (7, 5), 2, 8)


@pytest.mark.parametrize("sr", [0, -1, 1.5])
def test_bad_sr_ratio_raises(sr):
    p = gsa_params(14, 1, 5, 6, 4, 1)
    with pytest.raises(ValueError, match="sr_ratio must be a positive integer"):
        gsa_call(p, (5, 6), 2, sr)


def test_sr_without_conv_weights_raises():
    p = gsa_params(15, 1, 5, 6, 4, 1)
    with pytest.raises(ValueError, match=r"needs sr_params = \(sr_w, sr_b\), norm_w, norm_b"):
        gsa_call(p, (5, 6), 2, 2)


@pytest.mark.parametrize(("name", "shape"), [("q_w", (4, 5)), ("kv_w", (4, 4)), ("proj_w", (8, 4)), ("sr_w", (4, 4, 3, 3))])
def test_weight_wrong_shape_raises(name, shape):
    p = gsa_params(16, 1, 6, 6, 4, 2)
    p[name] = np.zeros(shape)
    with pytest.raises(ValueError, match=f"'{name}' must have shape"):
        gsa_call(p, (6, 6), 2, 2)


def test_heads_not_dividing_channels_raises():
    with pytest.raises(ValueError, match="dim = 4 is not divisible by num_heads = 3"):
        gsa_call(gsa_params(17, 1, 5, 6, 4, 1), (5, 6), 3, 1)


def test_token_count_mismatch_raises():
    with pytest.raises(ValueError, match=r"N = 30 tokens but size \(H, W\) = \(6, 6\) needs H\*W = 36"):
        gsa_call(gsa_params(18, 1, 5, 6, 4, 1), (6, 6), 2, 1)


def test_wrong_ndim_raises():
    p = gsa_params(19, 1, 5, 6, 4, 1)
    p["x"] = p["x"].reshape(1, 5, 6, 4)
    with pytest.raises(ValueError, match=r"'x' must have shape \(B, N, C\)"):
        gsa_call(p, (5, 6), 2, 1)


def test_integer_and_float16_inputs_raise():
    p = gsa_params(20, 1, 5, 6, 4, 2)
    with pytest.raises(TypeError, match="got int64"):
        gsa_call({**p, "x": np.ones((1, 30, 4), dtype=np.int64)}, (5, 6), 2, 2)
    with pytest.raises(TypeError, match="got float16"):
        gsa_call(p, (5, 6), 2, 2, dtype=np.float16)


def test_mixed_precision_raises():
    p = gsa_params(21, 1, 6, 6, 4, 2)
    p["sr_w"] = p["sr_w"].astype(np.float32)
    with pytest.raises(TypeError, match="'weight' is float32 but 'x' is float64"):
        gsa_call(p, (6, 6), 2, 2)


@pytest.mark.gpu
def test_mixed_numpy_cupy_raises():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    p = gsa_params(22, 1, 6, 6, 4, 2)
    p["kv_w"] = cupy.asarray(p["kv_w"])
    # GSA's own argument is named, before anything is computed (not its inner Linear's 'weight')
    with pytest.raises(TypeError, match=r"'kv_w' is a CuPy \(GPU\) array but 'x' is a NumPy \(CPU\) array"):
        gsa_call(p, (6, 6), 2, 2)
