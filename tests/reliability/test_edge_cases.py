"""Numerical edge cases: saturated softmax and attention, constant LayerNorm rows, extreme
logits in the loss, single-token maps, batch sizes 1 and 64, half precision, the smallest
image each model accepts.

References are written out here (closed forms, or SciPy's stable softmax/logsumexp) in
float64; errors are max|a - b| / max|b| against ``TOLERANCES``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.special import softmax as sp_softmax

import twins_np
import twins_np.functional as F
from twins_np.gradcheck import TOLERANCES, check_module
from twins_np.models import MODEL_CONFIGS
from twins_np.nn import Block, GlobalSubSampleAttn, LayerNorm, LocallyGroupedAttn, Module, PosConv

F64 = TOLERANCES["parity_f64_rel"]
F32 = TOLERANCES["f32_vs_f64_rel"]


def rel(a, b) -> float:
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(np.asarray(a, dtype=np.float64) - b).max() / max(float(np.abs(b).max()), 1e-300))


def _randomize(module: Module, seed: int) -> Module:
    """Every parameter redrawn (float64): no zero biases or unit gammas to hide a bug."""
    rng = np.random.default_rng(seed)
    module.astype(np.float64)
    for _, p in module.named_parameters():
        p.data = (0.5 if p.data.ndim == 1 else 0.3) * rng.standard_normal(p.shape)
    return module


# --- softmax and attention with huge scores ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_of_pm_1e4_logits_is_finite_and_exact(dtype):
    x = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    y, cache = F.softmax_forward(x)
    expected = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert y.dtype == dtype and np.isfinite(y).all()
    assert rel(y, expected) < (F64 if dtype == np.float64 else F32)
    dout = np.random.default_rng(0).standard_normal(x.shape).astype(dtype)
    dx = F.softmax_backward(dout, cache)
    assert np.isfinite(dx).all()
    assert np.all(dx[0] == 0.0), "a saturated (one-hot) row has an exactly zero Jacobian"


def test_attention_with_huge_scores_matches_reference():
    """Scores of size ~1e4: the output is a convex combination of v rows, exactly as SciPy's stable softmax says."""
    rng = np.random.default_rng(1)
    q, k = 100.0 * rng.standard_normal((2, 3, 5, 4)), 100.0 * rng.standard_normal((2, 3, 7, 4))
    v = rng.standard_normal((2, 3, 7, 4))
    out, cache = F.attention_forward(q, k, v, scale=1.0)
    scores = q @ k.swapaxes(-1, -2)
    assert np.abs(scores).max() > 1e4
    probs = sp_softmax(scores, axis=-1)
    assert rel(out, probs @ v) < F64
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = F.attention_backward(dout, cache)
    assert all(np.isfinite(g).all() for g in (dq, dk, dv))
    dP = dout @ v.swapaxes(-1, -2)
    dS = probs * (dP - (dP * probs).sum(axis=-1, keepdims=True))
    assert rel(dv, probs.swapaxes(-1, -2) @ dout) < F64
    assert rel(dq, dS @ k) < F64 and rel(dk, dS.swapaxes(-1, -2) @ q) < F64
    one_hot = probs.max(axis=-1) == 1.0  # (2, 3, 5): rows whose softmax saturated to exactly one-hot
    assert one_hot.mean() > 0.5, "scores this large saturate most rows"
    assert not dq[one_hot].any(), "a saturated row passes no gradient to its query"


def test_attention_with_equal_huge_scores_is_uniform():
    q = np.full((1, 2, 4), 100.0, np.float32)
    k = np.full((1, 5, 4), 100.0, np.float32)
    v = np.random.default_rng(2).standard_normal((1, 5, 4)).astype(np.float32)
    out, _ = F.attention_forward(q, k, v, scale=1.0)  # every score is 4e4
    assert rel(out, np.broadcast_to(v.mean(axis=1, keepdims=True), out.shape)) < F32


# --- LayerNorm of a constant row --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.0, 1.0, -2.5, 1024.0])
def test_layernorm_constant_row_gives_beta_and_finite_gradient(dtype, value):
    """A constant row has zero variance: xhat = 0 (eps keeps 1/sqrt(var + eps) finite), so y = beta.

    The values are dyadic, so the row mean is exact and y equals beta bit for bit; the
    gradient is dx = (g - mean(g)) / sqrt(eps) with g = dout * gamma (the xhat term vanishes).
    """
    C, eps = 16, 1e-6
    rng = np.random.default_rng(3)
    ln = LayerNorm(C, eps=eps, dtype=dtype)
    ln.weight.data = (1.0 + 0.5 * rng.standard_normal(C)).astype(dtype)
    ln.bias.data = rng.standard_normal(C).astype(dtype)
    x = np.full((2, 3, C), value, dtype=dtype)
    y = ln(x)
    np.testing.assert_array_equal(y, np.broadcast_to(ln.bias.data, y.shape))
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = ln.backward(dout)
    g = dout.astype(np.float64) * ln.weight.data
    expected = (g - g.mean(axis=-1, keepdims=True)) / np.sqrt(eps)
    assert dx.dtype == dtype and np.isfinite(dx).all()
    assert rel(dx, expected) < (F64 if dtype == np.float64 else F32)
    assert not ln.weight.grad.any(), "dgamma = sum dout * xhat = 0"
    assert rel(ln.bias.grad, dout.reshape(-1, C).sum(axis=0)) < (F64 if dtype == np.float64 else F32)


def test_layernorm_gradcheck_at_a_constant_row():
    ln = LayerNorm(8, eps=1e-6, dtype=np.float64)
    ln.weight.data = 1.0 + 0.5 * np.random.default_rng(4).standard_normal(8)
    ln.bias.data = np.random.default_rng(5).standard_normal(8)
    check_module(ln, np.full((3, 8), 0.75), mode="full")


# --- cross entropy with extreme logits -------------------------------------------------------


def _ce_reference(z: np.ndarray, labels: np.ndarray, eps: float) -> tuple[float, np.ndarray]:
    """float64 loss and dlogits: log-softmax via logsumexp, so no log(0) for saturated rows."""
    B, K = z.shape
    t = np.full((B, K), eps / K)
    t[np.arange(B), labels] += 1.0 - eps
    log_p = z - logsumexp(z, axis=1, keepdims=True)
    return float(-(t * log_p).sum() / B), (np.exp(log_p) - t) / B


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_with_extreme_logits_is_finite_and_matches_float64(dtype, label_smoothing):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0], [1e4, 1e4, -1e4]])
    labels = np.array([0, 0, 2, 1])
    loss, cache = F.cross_entropy_forward(z.astype(dtype), labels, label_smoothing)
    dz = F.cross_entropy_backward(1.0, cache)
    ref_loss, ref_dz = _ce_reference(z, labels, label_smoothing)
    tol = F64 if dtype == np.float64 else F32
    assert np.isfinite(loss) and np.isfinite(dz).all() and dz.dtype == dtype
    assert abs(loss - ref_loss) / abs(ref_loss) < tol, (loss, ref_loss)
    assert rel(dz, ref_dz) < tol


def test_cross_entropy_with_1e30_logits_stays_finite():
    z = np.array([[1e30, -1e30], [-1e30, 1e30]])
    loss, cache = F.cross_entropy_forward(z, np.array([0, 0]), 0.1)
    ref_loss, ref_dz = _ce_reference(z, np.array([0, 0]), 0.1)
    assert np.isfinite(loss) and abs(loss - ref_loss) / ref_loss < F64
    assert rel(F.cross_entropy_backward(1.0, cache), ref_dz) < F64


def test_gelu_at_extreme_inputs():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    y, cache = F.gelu_forward(x)
    np.testing.assert_array_equal(y, [0.0, 0.0, 0.0, 50.0, 1e4])
    np.testing.assert_array_equal(F.gelu_backward(np.ones_like(x), cache), [0.0, 0.0, 0.5, 1.0, 1.0])


# --- half precision -----------------------------------------------------------------------------


def _h(*shape):
    return np.ones(shape, np.float16)


HALF = {
    "softmax_forward": lambda: F.softmax_forward(_h(2, 3)),
    "layernorm_forward": lambda: F.layernorm_forward(_h(2, 3), _h(3), _h(3)),
    "linear_forward": lambda: F.linear_forward(_h(2, 3), _h(4, 3)),
    "gelu_forward": lambda: F.gelu_forward(_h(3)),
    "attention_forward": lambda: F.attention_forward(_h(1, 2, 4), _h(1, 3, 4), _h(1, 3, 4)),
    "LocallyGroupedAttn": lambda: LocallyGroupedAttn(8, 2, ws=2, rng=0)(_h(1, 4, 8), (2, 2)),
    "GlobalSubSampleAttn": lambda: GlobalSubSampleAttn(8, 2, sr_ratio=2, rng=0)(_h(1, 4, 8), (2, 2)),
    "PosConv": lambda: PosConv(8, 8, rng=0)(_h(1, 4, 8), (2, 2)),
    "Block": lambda: Block(8, 2, ws=2, rng=0)(_h(1, 4, 8), (2, 2)),
    "Twins.forward": lambda: twins_np.create_model("twins_svt_teach32")(_h(1, 3, 32, 32)),
}


@pytest.mark.parametrize("entry", list(HALF))
def test_float16_is_refused_with_the_reason(entry):
    with pytest.raises(TypeError, match=r"got float16 \(half precision is refused: LayerNorm variances and softmax sums"):
        HALF[entry]()


def test_astype_float16_is_refused_with_the_reason():
    with pytest.raises(TypeError, match=r"float16 is not supported: LayerNorm and softmax"):
        twins_np.create_model("twins_svt_teach32").astype(np.float16)


# --- single-token maps -------------------------------------------------------------------------


def _lsa_1x1_reference(lsa: LocallyGroupedAttn, x: np.ndarray) -> np.ndarray:
    """The one real token and 48 zero pad tokens form one 7x7 window; pads are keys/values, not masked."""
    B, _, C = x.shape
    heads, hd = lsa.num_heads, C // lsa.num_heads
    win = np.zeros((B, 49, C))
    win[:, 0] = x[:, 0]
    qkv = win @ lsa.qkv.weight.data.T + lsa.qkv.bias.data  # pads give qkv = bias
    q, k, v = (qkv[..., i * C : (i + 1) * C].reshape(B, 49, heads, hd).transpose(0, 2, 1, 3) for i in range(3))
    p = sp_softmax(q[:, :, :1] @ k.swapaxes(-1, -2) * hd**-0.5, axis=-1)  # only query 0 is kept
    o = (p @ v).transpose(0, 2, 1, 3).reshape(B, 1, C)
    return o @ lsa.proj.weight.data.T + lsa.proj.bias.data


def test_lsa_on_a_1x1_map_with_ws_7_attends_over_48_pad_tokens():
    lsa = _randomize(LocallyGroupedAttn(8, 2, ws=7, rng=0), seed=6)
    x = np.random.default_rng(7).standard_normal((3, 1, 8))
    assert F.window_pads((1, 1), 7) == (6, 6)
    assert rel(lsa(x, (1, 1)), _lsa_1x1_reference(lsa, x)) < F64
    check_module(lsa, x, (1, 1), mode="full")


@pytest.mark.parity
def test_lsa_1x1_ws_7_matches_timm():
    torch = pytest.importorskip("torch")
    twins = pytest.importorskip("timm.models.twins")
    lsa = _randomize(LocallyGroupedAttn(8, 2, ws=7, rng=0), seed=8)
    theirs = twins.LocallyGroupedAttn(8, 2, ws=7).double()
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in lsa.state_dict().items()})
    x = np.random.default_rng(9).standard_normal((2, 1, 8))
    dout = np.random.default_rng(10).standard_normal((2, 1, 8))
    xt = torch.tensor(x, requires_grad=True)
    out_t = theirs(xt, (1, 1))
    out_t.backward(torch.from_numpy(dout))
    assert rel(lsa(x, (1, 1)), out_t.detach().numpy()) < F64
    assert rel(lsa.backward(dout), xt.grad.numpy()) < F64
    for name, p in theirs.named_parameters():
        assert rel(dict(lsa.named_parameters())[name].grad, p.grad.numpy()) < F64, name


def test_gsa_on_a_1x1_map_is_proj_of_v_and_q_gets_exactly_zero_gradient():
    """One key: the softmax is the constant 1, so out = proj(v(x)) and q plays no part."""
    gsa = _randomize(GlobalSubSampleAttn(8, 4, sr_ratio=1, rng=0), seed=11)
    x = np.random.default_rng(12).standard_normal((2, 1, 8))
    dout = np.random.default_rng(13).standard_normal((2, 1, 8))
    Wv, bv = gsa.kv.weight.data[8:], gsa.kv.bias.data[8:]
    Wp, bp = gsa.proj.weight.data, gsa.proj.bias.data
    v = x @ Wv.T + bv
    assert rel(gsa(x, (1, 1)), v @ Wp.T + bp) < F64
    dx = gsa.backward(dout)
    dv = dout @ Wp
    assert rel(dx, dv @ Wv) < F64
    assert rel(gsa.proj.weight.grad, (dout.reshape(-1, 8).T @ v.reshape(-1, 8))) < F64
    assert rel(gsa.kv.weight.grad[8:], dv.reshape(-1, 8).T @ x.reshape(-1, 8)) < F64
    assert not gsa.kv.weight.grad[:8].any(), "keys of a single-key softmax get no gradient"
    assert not gsa.q.weight.grad.any() and not gsa.q.bias.grad.any()


def test_peg_on_a_1x1_map_uses_only_the_centre_tap():
    peg = _randomize(PosConv(6, 6, rng=0), seed=14)
    x = np.random.default_rng(15).standard_normal((2, 1, 6))
    w, b = peg.proj[0].weight.data, peg.proj[0].bias.data
    assert rel(peg(x, (1, 1)), x + x * w[:, 0, 1, 1] + b) < F64


# --- batch size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ws", [3, 1], ids=["lsa_block", "gsa_block"])
def test_block_batch_of_64_equals_64_batches_of_1(ws):
    """Samples do not interact: outputs stack, parameter gradients add up over the batch."""
    blk = _randomize(Block(8, 2, mlp_ratio=2.0, sr_ratio=2, ws=ws, rng=0), seed=16)
    size = (5, 6)
    x = np.random.default_rng(17).standard_normal((64, 30, 8))
    dout = np.random.default_rng(18).standard_normal(x.shape)
    out = blk(x, size)
    dx = blk.backward(dout)
    grads = {n: p.grad.copy() for n, p in blk.named_parameters()}

    blk.zero_grad()
    outs, dxs = [], []
    for i in range(64):
        outs.append(blk(x[i : i + 1], size))
        dxs.append(blk.backward(dout[i : i + 1]))  # parameter gradients accumulate over the loop
    assert rel(out, np.concatenate(outs)) < F64
    assert rel(dx, np.concatenate(dxs)) < F64
    for n, p in blk.named_parameters():
        assert rel(p.grad, grads[n]) < F64, n


# --- the smallest image a model accepts ------------------------------------------------------------


def _min_side(cfg: dict) -> int:
    """max over stages of sr_s * (product of patch sizes up to s): independent of the model code."""
    stride, need = 1, 0
    for s, sr in enumerate(cfg["sr_ratios"]):
        stride *= cfg["patch_size"] if s == 0 else 2
        need = max(need, sr * stride)
    return need


# the smallest side for a few configs, worked out by hand: patch 4 and sr 8 at stage 1 -> 32;
# patch 2 and sr 4 -> 8; patch 4 and sr 4 -> 16 (the later stages need no more)
MIN_SIDE = {
    "twins_svt_small": 32,
    "twins_svt_teach32": 8,
    "twins_pcpvt_teach32": 8,
    "twins_svt_teach64": 16,
    "twins_pcpvt_teach64": 16,
}


@pytest.mark.parametrize("name", list(MIN_SIDE))
def test_smallest_accepted_image_runs_and_one_pixel_less_is_refused(name):
    m = _min_side(MODEL_CONFIGS[name])
    assert m == MIN_SIDE[name]
    model = twins_np.create_model(name, num_classes=3).eval()
    x = np.random.default_rng(19).standard_normal((1, 3, m, m + 5)).astype(np.float32)
    assert np.isfinite(model(x)).all()
    for h, w in ((m - 1, m), (m, m - 1)):
        with pytest.raises(ValueError, match=rf"input image {h}x{w} is too small .* smallest input it accepts is {m}x{m}"):
            model(np.zeros((1, 3, h, w), np.float32))
