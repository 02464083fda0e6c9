"""Tests of twins_np.functional.lsa: locally-grouped self-attention (Twins-SVT), timm's zero-padded version."""

from __future__ import annotations

import math

import numpy as np
import pytest
from attention_inputs import lsa_params
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.backend import asnumpy, cupy_available
from twins_np.gradcheck import TOLERANCES, check_backward

NAMES = ["x", "qkv_w", "qkv_b", "proj_w", "proj_b"]


def lsa_loop(x, size, qkv_w, qkv_b, proj_w, proj_b, heads, ws, mask_padded=False):
    """Per window, head and query, from an explicitly zero-padded map.

    With ``mask_padded`` the padded tokens are left out of the keys (the masked variant timm does
    *not* use); otherwise every token of the padded window is a key and a value.
    """
    B, N, C = x.shape
    H, W = size
    hd = C // heads
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    xpad = np.zeros((B, Hp, Wp, C))
    for n in range(N):
        xpad[:, n // W, n % W, :] = x[:, n, :]
    y = np.zeros((B, H, W, C))
    for b in range(B):
        for wi in range(Hp // ws):
            for wj in range(Wp // ws):
                cells = [(wi * ws + i, wj * ws + j) for i in range(ws) for j in range(ws)]
                feats = [qkv_w @ xpad[b, r, c] + qkv_b for r, c in cells]
                keys = [t for t, (r, c) in enumerate(cells) if not mask_padded or (r < H and c < W)]
                for h in range(heads):
                    for t, (r, c) in enumerate(cells):
                        if r >= H or c >= W:
                            continue  # a padded query: cropped away
                        q = feats[t][h * hd : (h + 1) * hd]
                        s = [float(np.dot(q, feats[u][C + h * hd : C + (h + 1) * hd])) / math.sqrt(hd) for u in keys]
                        m = max(s)
                        e = [math.exp(v - m) for v in s]
                        z = sum(e)
                        for p, u in zip(e, keys):
                            y[b, r, c, h * hd : (h + 1) * hd] += p / z * feats[u][2 * C + h * hd : 2 * C + (h + 1) * hd]
    return y.reshape(B, N, C) @ proj_w.T + proj_b


# --- qkv split ---------------------------------------------------------------------


@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("lead", [(2,), (2, 3)])
def test_split_qkv_layout_and_join_inverse(xp, parts, lead):
    """split_qkv(a)[p][..., h, t, j] == a[..., t, p*C + h*hd + j]: the feature axis is [parts][heads][hd]."""
    heads, hd, T = 2, 3, 4
    C = heads * hd
    a = np.random.default_rng(1).standard_normal((*lead, T, parts * C))
    pieces = F.split_qkv(xp.asarray(a), parts, heads)
    assert len(pieces) == parts
    pieces = [asnumpy(p) for p in pieces]
    for p in range(parts):
        assert pieces[p].shape == (*lead, heads, T, hd)
        for idx in np.ndindex(*lead):
            for h in range(heads):
                for t in range(T):
                    for j in range(hd):
                        assert pieces[p][idx + (h, t, j)] == a[idx + (t, p * C + h * hd + j)]
    np.testing.assert_array_equal(asnumpy(F.join_qkv(F.split_qkv(xp.asarray(a), parts, heads))), a)


# --- forward -----------------------------------------------------------------------

SMALL = [(5, 6, 3), (5, 6, 4), (1, 1, 7), (6, 6, 3), (4, 9, 3), (3, 2, 2)]


@pytest.mark.parametrize(("H", "W", "ws"), SMALL)
def test_forward_matches_loop(xp, H, W, ws):
    args = lsa_params(2, 2, H, W, 4)
    out, _ = F.lsa_forward(xp.asarray(args[0]), (H, W), *(xp.asarray(a) for a in args[1:]), num_heads=2, ws=ws)
    ref = lsa_loop(args[0], (H, W), *args[1:], heads=2, ws=ws)
    assert rel_err(out, ref) < TOLERANCES["parity_f64_rel"]


@pytest.mark.parametrize(("H", "W", "ws"), [(5, 6, 4), (8, 8, 7), (1, 1, 7), (4, 9, 3)])
def test_padded_tokens_are_not_masked(H, W, ws):
    """On a padded map the output differs from a masked variant (by far more than rounding) and equals the unmasked loop."""
    args = lsa_params(3, 1, H, W, 4)
    out, _ = F.lsa_forward(args[0], (H, W), *args[1:], num_heads=2, ws=ws)
    masked = lsa_loop(args[0], (H, W), *args[1:], heads=2, ws=ws, mask_padded=True)
    assert rel_err(out, lsa_loop(args[0], (H, W), *args[1:], heads=2, ws=ws)) < TOLERANCES["parity_f64_rel"]
    assert rel_err(out, masked) > 1e-2


def test_divisible_map_has_nothing_to_mask():
    args = lsa_params(4, 1, 6, 6, 4)
    out, _ = F.lsa_forward(args[0], (6, 6), *args[1:], num_heads=2, ws=3)
    masked = lsa_loop(args[0], (6, 6), *args[1:], heads=2, ws=3, mask_padded=True)
    assert rel_err(out, masked) < TOLERANCES["parity_f64_rel"]


def test_padded_keys_and_values_are_the_qkv_bias():
    """Padding comes before the qkv Linear, so a padded token's k and v are b_k and b_v."""
    C, heads, ws = 4, 2, 4
    x, qkv_w, qkv_b, proj_w, proj_b = lsa_params(5, 1, 5, 6, C)
    _, cache = F.lsa_forward(x, (5, 6), qkv_w, qkv_b, proj_w, proj_b, num_heads=heads, ws=ws)
    k, v = cache.attn.k, cache.attn.v  # (B, nW, heads, T, hd)
    # the last window (bottom right) holds padded slots in row 1 (row 5 of the map) onwards
    pad_slot = 1 * ws + 0  # map row 5, column 4: padded
    for h in range(heads):
        np.testing.assert_allclose(k[0, -1, h, pad_slot], qkv_b[C + 2 * h : C + 2 * h + 2], rtol=0, atol=0)
        np.testing.assert_allclose(v[0, -1, h, pad_slot], qkv_b[2 * C + 2 * h : 2 * C + 2 * h + 2], rtol=0, atol=0)


# --- backward ----------------------------------------------------------------------


@pytest.mark.parametrize(("H", "W", "ws"), [(5, 6, 3), (5, 6, 4), (1, 1, 7), (6, 6, 3), (3, 2, 2)])
def test_gradcheck(xp, H, W, ws):
    device = "cpu" if xp is np else "gpu"
    x, *params = lsa_params(6, 2, H, W, 4)
    rows = check_backward(
        F.lsa_forward, F.lsa_backward, [x, (H, W), *params, 2, ws], wrt=[0, 2, 3, 4, 5], names=NAMES, device=device
    )
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("H", "W", "ws"), [(5, 6, 4), (7, 7, 7)])
def test_dtype_preserved(xp, dtype, H, W, ws):
    x, *params = (xp.asarray(a.astype(dtype)) for a in lsa_params(9, 2, H, W, 4))
    out, cache = F.lsa_forward(x, (H, W), *params, num_heads=2, ws=ws)
    assert out.dtype == dtype
    grads = F.lsa_backward(xp.asarray(np.random.default_rng(10).standard_normal(out.shape).astype(dtype)), cache)
    assert len(grads) == 5
    for g, a in zip(grads, (x, *params)):
        assert g.dtype == dtype and g.shape == a.shape


def test_float32_close_to_float64():
    args = lsa_params(11, 1, 8, 8, 8)
    out64, _ = F.lsa_forward(args[0], (8, 8), *args[1:], num_heads=2, ws=7)
    out32, _ = F.lsa_forward(args[0].astype(np.float32), (8, 8), *(a.astype(np.float32) for a in args[1:]), num_heads=2, ws=7)
    assert rel_err(out32, out64) < TOLERANCES["f32_vs_f64_rel"]


# --- parity with timm's LocallyGroupedAttn ----------------------------------------


def timm_lsa(torch, args, size, heads, ws, dout):
    """Run timm's LocallyGroupedAttn with the same weights; return out and grads in NAMES order."""
    from timm.models.twins import LocallyGroupedAttn

    x, qkv_w, qkv_b, proj_w, proj_b = args
    dtype = torch.from_numpy(x).dtype
    m = LocallyGroupedAttn(x.shape[-1], num_heads=heads, ws=ws).to(dtype)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in zip(["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"], args[1:])})
    tx = torch.tensor(x, requires_grad=True)
    out = m(tx, size)
    out.backward(torch.tensor(dout))
    grads = [tx.grad, m.qkv.weight.grad, m.qkv.bias.grad, m.proj.weight.grad, m.proj.bias.grad]
    return out.detach().numpy(), [g.numpy() for g in grads]


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize(
    ("B", "H", "W"),
    [(1, 56, 56), (2, 25, 25), (2, 8, 8), (2, 16, 24), (2, 3, 3), (1, 57, 57), (2, 1, 1)],
    ids=["56x56", "25x25-pad3", "8x8-pad6", "16x24-asym", "3x3-one-window", "57x57-pad6", "1x1"],
)
def test_parity_with_timm(dtype, tol, B, H, W):
    """The map sizes of TWINS_SPEC section 3 (stage grids at inputs 224, 100, 32, 64x96, 230), C = 16, ws = 7."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    args = [a.astype(dtype) for a in lsa_params(12, B, H, W, 16)]
    out, cache = F.lsa_forward(args[0], (H, W), *args[1:], num_heads=2, ws=7)
    dout = np.random.default_rng(13).standard_normal(out.shape).astype(dtype)
    grads = F.lsa_backward(dout, cache)
    t_out, t_grads = timm_lsa(torch, args, (H, W), 2, 7, dout)
    scale = max(float(np.abs(g).max()) for g in t_grads)
    assert rel_err(out, t_out) < TOLERANCES[tol]
    for name, mine, ref in zip(NAMES, grads, t_grads):
        assert rel_err(mine, ref, scale) < TOLERANCES[tol], name


@pytest.mark.parity
def test_masked_variant_differs_from_timm():
    """What the spec's table says: masking the pad moves the output far from timm on a padded map."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    args = lsa_params(14, 1, 8, 8, 4)
    t_out, _ = timm_lsa(torch, args, (8, 8), 2, 7, np.zeros((1, 64, 4)))
    masked = lsa_loop(args[0], (8, 8), *args[1:], heads=2, ws=7, mask_padded=True)
    assert rel_err(masked, t_out) > 1e-2


# --- bad inputs --------------------------------------------------------------------


def _call(x=None, size=(5, 6), heads=2, ws=3, **over):
    args = lsa_params(15, 1, 5, 6, 4)
    p = dict(zip(["qkv_w", "qkv_b", "proj_w", "proj_b"], args[1:]))
    p.update(over)
    return F.lsa_forward(args[0] if x is None else x, size, num_heads=heads, ws=ws, **p)


def test_heads_not_dividing_channels_raises():
    with pytest.raises(ValueError, match="dim = 4 is not divisible by num_heads = 3"):
        _call(heads=3)


def test_token_count_mismatch_raises():
    with pytest.raises(ValueError, match=r"N = 30 tokens but size \(H, W\) = \(5, 5\) needs H\*W = 25"):
        _call(size=(5, 5))


def test_wrong_ndim_raises():
    with pytest.raises(ValueError, match=r"'x' must have shape \(B, N, C\)"):
        _call(x=np.zeros((1, 5, 6, 4)))


@pytest.mark.parametrize("ws", [0, -2, 1.5])
def test_bad_window_size_raises(ws):
    with pytest.raises(ValueError, match="window size ws must be a positive integer"):
        _call(ws=ws)


@pytest.mark.parametrize(("name", "shape"), [("qkv_w", (12, 3)), ("qkv_w", (8, 4)), ("proj_w", (4, 5))])
def test_weight_wrong_shape_raises(name, shape):
    with pytest.raises(ValueError, match=f"'{name}' must have shape"):
        _call(**{name: np.zeros(shape)})


def test_integer_input_raises():
    with pytest.raises(TypeError, match="float32 or float64"):
        _call(x=np.ones((1, 30, 4), dtype=np.int64))


def test_float16_raises():
    args = [a.astype(np.float16) for a in lsa_params(16, 1, 5, 6, 4)]
    with pytest.raises(TypeError, match="got float16"):
        F.lsa_forward(args[0], (5, 6), *args[1:], num_heads=2, ws=3)


def test_mixed_precision_raises():
    with pytest.raises(TypeError, match="is float64 but 'x' is float32"):
        _call(x=np.ones((1, 30, 4), dtype=np.float32))


@pytest.mark.gpu
def test_mixed_numpy_cupy_raises():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    with pytest.raises(TypeError, match="CuPy"):
        _call(x=cupy.ones((1, 30, 4)))


# --- the masked variant (mmsegmentation's LSA) ------------------------------------------------

MASKED = [(9, 10, 4), (5, 7, 3), (6, 5, 3)]  # both pads > 0; only the rows padded; only the columns


@pytest.mark.parametrize(("H", "W", "ws"), MASKED)
def test_masked_lsa_matches_loop(H, W, ws):
    """pad_mask="padded" leaves the padded tokens out of every real query's keys (exp(-1000) is 0 in
    float64); "mmseg" does so only where both pads are positive, and is timm's unmasked LSA otherwise."""
    x, *params = lsa_params(40, 2, H, W, 4)
    masked = lsa_loop(x, (H, W), *params, 2, ws, mask_padded=True)
    unmasked = lsa_loop(x, (H, W), *params, 2, ws)
    out, _ = F.lsa_forward(x, (H, W), *params, num_heads=2, ws=ws, pad_mask="padded")
    assert rel_err(out, masked) < 1e-12
    out, _ = F.lsa_forward(x, (H, W), *params, num_heads=2, ws=ws, pad_mask="mmseg")
    pad_b, pad_r = F.window_pads((H, W), ws)
    assert rel_err(out, masked if pad_b and pad_r else unmasked) < 1e-12
    assert rel_err(masked, unmasked) > 1e-3  # the mask matters on these maps


@pytest.mark.parametrize("rule", ["mmseg", "padded"])
@pytest.mark.parametrize(("H", "W", "ws"), MASKED)
def test_masked_lsa_gradcheck(xp, rule, H, W, ws):
    """The mask is a constant added to the scores: the backward is unchanged, and finite differences agree."""
    device = "cpu" if xp is np else "gpu"
    x, *params = lsa_params(41, 2, H, W, 4)
    rows = check_backward(
        F.lsa_forward, F.lsa_backward, [x, (H, W), *params, 2, ws, 0.0, None, True, rule], wrt=[0, 2, 3, 4, 5],
        names=NAMES, device=device,
    )  # fmt: skip
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


@pytest.mark.parity
@pytest.mark.parametrize(("H", "W", "ws"), [(9, 10, 4), (5, 7, 3), (18, 14, 7), (5, 4, 7)])
def test_mmseg_lsa_parity_with_torch(H, W, ws):
    """Against mmsegmentation's LocallyGroupedSelfAttention (restated in tests/mmseg_reference.py): output and every gradient."""
    torch = pytest.importorskip("torch")
    import mmseg_reference as ref

    x, qkv_w, qkv_b, proj_w, proj_b = lsa_params(42, 2, H, W, 4)
    m = ref.LocallyGroupedSelfAttention(4, 2, ws).double()
    with torch.no_grad():
        for p, v in ((m.qkv.weight, qkv_w), (m.qkv.bias, qkv_b), (m.proj.weight, proj_w), (m.proj.bias, proj_b)):
            p.copy_(torch.tensor(v))
    tx = torch.tensor(x, requires_grad=True)
    tout = m(tx, (H, W))
    dout = np.random.default_rng(43).standard_normal(tuple(tout.shape))
    tout.backward(torch.tensor(dout))
    out, cache = F.lsa_forward(x, (H, W), qkv_w, qkv_b, proj_w, proj_b, num_heads=2, ws=ws, pad_mask="mmseg")
    grads = F.lsa_backward(dout, cache)
    theirs = [tx.grad, m.qkv.weight.grad, m.qkv.bias.grad, m.proj.weight.grad, m.proj.bias.grad]
    assert rel_err(out, tout.detach().numpy()) < TOLERANCES["parity_f64_rel"]
    for name, mine, t in zip(NAMES, grads, theirs):
        assert rel_err(mine, t.numpy()) < TOLERANCES["parity_f64_rel"], name


def test_masked_lsa_keeps_float32():
    x, *params = (a.astype(np.float32) for a in lsa_params(44, 1, 5, 7, 4))
    out, cache = F.lsa_forward(x, (5, 7), *params, num_heads=2, ws=3, pad_mask="padded")
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in F.lsa_backward(np.ones_like(out), cache))
