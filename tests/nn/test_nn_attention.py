"""LocallyGroupedAttn (LSA) and GlobalSubSampleAttn (GSA) against timm's modules.

Sizes are the token grids Twins meets (TWINS_SPEC.md section 3), one stage at a time
with few channels: no LSA padding (56x56), padding (25x25, 12x12), heavy padding (8x8:
6 pad rows and columns), a single window mostly made of padding (3x3: 40 of 49 tokens,
1x1: 48 of 49), asymmetric padding (16x24, 8x12), and 57x57 (pad 6, and the sr = 8
conv floors to 7x7). GSA runs with sr 8, 4, 2 and 1 (full MHSA), down to one key and
one token.

Each parity test randomises every timm parameter (biases included), loads the same
arrays into twins-np through ``load_state_dict``, and compares output, input gradient
and every parameter gradient for a random upstream gradient.

Error measure: rel = max|ours - timm| / max(max|timm|, floor), per array. The
output and the input gradient use floor = 0 (they are compared to their own scale).
A parameter gradient uses floor = 10 * eps(dtype) * scale / tol, where scale is the
largest parameter-gradient magnitude of the module and tol the tolerance in use: it
is compared to its own scale too, except that one that is zero in theory is held to
an absolute error of 10 units in the last place of the module's largest gradient.
This matters with a single GSA key: the softmax is then constant, q gets an exactly
zero gradient in twins-np and a rounding residue (~1 ulp of the largest gradient) in
torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from twins_np.gradcheck import TOLERANCES
from twins_np.nn import GlobalSubSampleAttn, LocallyGroupedAttn

DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]
STD = 0.2  # parameter noise: N(0, 0.2), LayerNorm gammas 1 + N(0, 0.2)
FLOOR_ULPS = 10.0


def _timm_twins() -> Any:
    """timm's Twins module (and torch), or a clean skip when they are not installed."""
    pytest.importorskip("torch")
    return pytest.importorskip("timm.models.twins")


# ---- parity helpers -------------------------------------------------------------------
def _tol(dtype: Any) -> float:
    return TOLERANCES["parity_f64_rel"] if dtype == np.float64 else TOLERANCES["parity_f32_rel"]


def _torch_module(m: Any, dtype: Any, seed: int = 0) -> Any:
    """Cast ``m`` to ``dtype`` and overwrite every parameter with seeded noise."""
    torch = pytest.importorskip("torch")
    m = m.to(torch.float64 if dtype == np.float64 else torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            for name, p in mod.named_parameters(recurse=False):
                noise = STD * torch.randn(p.shape, generator=g, dtype=p.dtype)
                is_gamma = isinstance(mod, torch.nn.LayerNorm) and name == "weight"
                p.copy_(1.0 + noise if is_gamma else noise)
    return m


def _copy_weights(tm: Any, ours: Any) -> None:
    """Load the torch module's parameters; names, their order and shapes must agree."""
    ref = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    own = ours.state_dict()
    assert list(own) == list(ref), f"parameter names differ:\n ours {list(own)}\n torch {list(ref)}"
    for k, v in ref.items():
        assert own[k].shape == v.shape, f"{k}: ours {own[k].shape}, torch {v.shape}"
    ours.load_state_dict(ref)


def _run(
    tm: Any, ours: Any, x: np.ndarray, *args: Any, tcall: Callable | None = None, seed: int = 1
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Forward + backward through both with one random upstream gradient.

    Returns two dicts ``{"out", "dx", "grad <name>"...}``: torch's and ours. A module
    returning ``(tokens, (H, W))`` (PatchEmbed) is compared on the tokens, after
    checking that both report the same size.
    """
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    out_t, out = (tcall or tm)(xt, *args), ours(x, *args)
    if isinstance(out, tuple):
        assert tuple(out[1]) == tuple(out_t[1]), f"output size {out[1]}, torch {out_t[1]}"
        out, out_t = out[0], out_t[0]
    dout = np.random.default_rng(seed).standard_normal(out.shape).astype(x.dtype)
    out_t.backward(torch.tensor(dout))
    dx = ours.backward(dout)
    ref = {"out": out_t.detach().numpy(), "dx": xt.grad.numpy()}
    ref.update({f"grad {k}": p.grad.numpy() for k, p in tm.named_parameters()})
    got = {"out": out, "dx": dx}
    got.update({f"grad {k}": p.grad for k, p in ours.named_parameters()})
    return ref, got


def _assert_parity(ref: dict[str, np.ndarray], got: dict[str, Any], dtype: Any) -> None:
    """Every array within the dtype's parity tolerance (see the module docstring)."""
    tol = _tol(dtype)
    scale = max(float(np.abs(v).max()) for k, v in ref.items() if k.startswith("grad "))
    floor = FLOOR_ULPS * float(np.finfo(dtype).eps) * scale / tol
    errs = {}
    for k, b in ref.items():
        a = got[k]
        assert a is not None, f"{k}: twins-np has no value (no gradient accumulated?)"
        assert a.shape == b.shape, f"{k}: shape {a.shape}, torch {b.shape}"
        assert a.dtype == dtype, f"{k}: dtype {a.dtype}, expected {np.dtype(dtype)}"
        own = float(np.abs(b).max())
        errs[k] = float(np.abs(a - b).max()) / max(own, floor if k.startswith("grad ") else 0.0, 1e-300)
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e < tol}
    assert not bad, f"rel errors above {tol:g}: {bad}"


def _tokens(B: int, H: int, W: int, C: int, dtype: Any, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, H * W, C)).astype(dtype)


# ---- LSA -----------------------------------------------------------------------------------
# (H, W, C, heads, ws); the id says which padding path it takes.
LSA_CASES = [
    pytest.param(56, 56, 32, 2, 7, id="56x56-nopad"),
    pytest.param(25, 25, 32, 4, 7, id="25x25-pad3x3"),
    pytest.param(12, 12, 64, 4, 7, id="12x12-pad2x2"),
    pytest.param(8, 8, 32, 2, 7, id="8x8-pad6x6"),
    pytest.param(3, 3, 32, 2, 7, id="3x3-one-window-40pad"),
    pytest.param(1, 1, 16, 2, 7, id="1x1-one-token-48pad"),
    pytest.param(16, 24, 32, 2, 7, id="16x24-padb5-padr4"),
    pytest.param(8, 12, 32, 4, 7, id="8x12-padb6-padr2"),
    pytest.param(57, 57, 16, 2, 7, id="57x57-pad6"),
    pytest.param(10, 6, 16, 2, 4, id="10x6-ws4-padb2-padr2"),
]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,W,C,heads,ws", LSA_CASES)
def test_lsa_matches_timm(dtype, H, W, C, heads, ws):
    tm = _torch_module(_timm_twins().LocallyGroupedAttn(C, heads, ws=ws), dtype)
    ours = LocallyGroupedAttn(C, heads, ws=ws, dtype=dtype)
    _copy_weights(tm, ours)
    _assert_parity(*_run(tm, ours, _tokens(2, H, W, C, dtype), (H, W)), dtype)


def test_lsa_padded_tokens_are_not_masked():
    """A 1x1 map in a 7x7 window: one real token and 48 zero-padded ones.

    The padded tokens pass through the qkv Linear, so they are keys k = b_k and values
    v = b_v that take part in the softmax (timm does not mask them). Per head:
        out_h = (e^{s_r} v_r + 48 e^{s_p} b_v) / (e^{s_r} + 48 e^{s_p}),
        s_r = q.k_r / sqrt(hd),  s_p = q.b_k / sqrt(hd).
    A masked implementation would return v_r alone, which differs by O(1) here.
    """
    C, heads = 16, 2
    hd = C // heads
    m = LocallyGroupedAttn(C, heads, ws=7, rng=0, dtype=np.float64)
    r = np.random.default_rng(1)
    for p in m.parameters():  # all random: at init v_r ~ b_v would hide the difference
        p.data = 0.3 * r.standard_normal(p.shape)
    x = r.standard_normal((1, 1, C))
    q, k, v = np.split(x[0, 0] @ m.qkv.weight.data.T + m.qkv.bias.data, 3)
    b_k, b_v = m.qkv.bias.data[C : 2 * C], m.qkv.bias.data[2 * C :]
    o = np.empty(C)
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        s_r, s_p = q[sl] @ k[sl] / np.sqrt(hd), q[sl] @ b_k[sl] / np.sqrt(hd)
        o[sl] = (np.exp(s_r) * v[sl] + 48 * np.exp(s_p) * b_v[sl]) / (np.exp(s_r) + 48 * np.exp(s_p))
    expected = o @ m.proj.weight.data.T + m.proj.bias.data
    masked = v @ m.proj.weight.data.T + m.proj.bias.data
    out = m(x, (1, 1))[0, 0]
    assert float(np.abs(out - expected).max()) < TOLERANCES["parity_f64_rel"] * float(np.abs(expected).max())
    assert float(np.abs(out - masked).max()) > 0.1


def test_lsa_refuses_ws_1_and_names_gsa():
    with pytest.raises(ValueError, match="GlobalSubSampleAttn"):
        LocallyGroupedAttn(32, 2, ws=1)


@pytest.mark.parametrize("cls", [LocallyGroupedAttn, GlobalSubSampleAttn])
def test_dim_not_divisible_by_heads_raises(cls):
    kw = {"ws": 7} if cls is LocallyGroupedAttn else {"sr_ratio": 2}
    with pytest.raises(ValueError, match="not divisible by num_heads = 3"):
        cls(32, 3, **kw)


# ---- GSA -----------------------------------------------------------------------------------
# (H, W, C, heads, sr); the id says how many keys the sub-sampling leaves.
GSA_CASES = [
    pytest.param(56, 56, 32, 2, 8, id="56x56-sr8-49keys"),
    pytest.param(28, 28, 32, 2, 4, id="28x28-sr4-49keys"),
    pytest.param(14, 14, 64, 4, 2, id="14x14-sr2-49keys"),
    pytest.param(7, 7, 64, 4, 1, id="7x7-sr1-full-mhsa"),
    pytest.param(25, 25, 32, 2, 8, id="25x25-sr8-9keys"),
    pytest.param(12, 12, 32, 4, 4, id="12x12-sr4-9keys"),
    pytest.param(8, 8, 32, 2, 8, id="8x8-sr8-one-key"),
    pytest.param(57, 57, 16, 2, 8, id="57x57-sr8-floors-49keys"),
    pytest.param(16, 24, 32, 2, 8, id="16x24-sr8-6keys"),
    pytest.param(8, 12, 32, 2, 4, id="8x12-sr4-6keys"),
    pytest.param(3, 3, 32, 2, 2, id="3x3-sr2-floors-one-key"),
    pytest.param(5, 3, 32, 2, 1, id="5x3-sr1"),
    pytest.param(1, 1, 32, 2, 1, id="1x1-sr1-one-token"),
]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,W,C,heads,sr", GSA_CASES)
def test_gsa_matches_timm(dtype, H, W, C, heads, sr):
    tm = _torch_module(_timm_twins().GlobalSubSampleAttn(C, heads, sr_ratio=sr), dtype)
    ours = GlobalSubSampleAttn(C, heads, sr_ratio=sr, dtype=dtype)
    _copy_weights(tm, ours)
    _assert_parity(*_run(tm, ours, _tokens(2, H, W, C, dtype), (H, W)), dtype)


@pytest.mark.parametrize("sr,keys", [(1, []), (2, ["sr.weight", "sr.bias", "norm.weight", "norm.bias"])])
def test_gsa_sub_sampling_parameters_exist_only_for_sr_above_1(sr, keys):
    m = GlobalSubSampleAttn(32, 2, sr_ratio=sr)
    assert list(m.state_dict()) == ["q.weight", "q.bias", "kv.weight", "kv.bias", "proj.weight", "proj.bias", *keys]
    if sr > 1:
        assert m.state_dict()["sr.weight"].shape == (32, 32, sr, sr)
        assert m.norm is not None and m.norm.eps == 1e-5


def test_gsa_with_one_key_has_zero_query_gradient():
    """One key: the softmax is identically 1, so q's parameters get exactly zero gradient."""
    m = GlobalSubSampleAttn(16, 2, sr_ratio=8, rng=0, dtype=np.float64)
    x = _tokens(2, 8, 8, 16, np.float64)
    out = m(x, (8, 8))
    m.backward(np.random.default_rng(1).standard_normal(out.shape))
    assert not m.q.weight.grad.any() and not m.q.bias.grad.any()
    assert m.kv.weight.grad[16:].any()  # v still learns


@pytest.mark.parametrize("sr", [0, -2, 1.5])
def test_gsa_refuses_bad_sr(sr):
    with pytest.raises(ValueError, match="sr_ratio"):
        GlobalSubSampleAttn(32, 2, sr_ratio=sr)
