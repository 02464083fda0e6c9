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

Error measure: see tests/nn/nn_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity import DTYPES
from nn_parity import assert_parity as _assert_parity
from nn_parity import copy_weights as _copy_weights
from nn_parity import run as _run
from nn_parity import timm_twins as _timm_twins
from nn_parity import tokens as _tokens
from nn_parity import torch_module as _torch_module

from twins_np.gradcheck import TOLERANCES
from twins_np.nn import GlobalSubSampleAttn, LocallyGroupedAttn

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
