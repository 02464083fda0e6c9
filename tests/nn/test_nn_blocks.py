"""PosConv (the PEG), PatchEmbed and Block against timm's modules; drop path; CuPy vs NumPy.

Sizes are the token grids Twins meets (TWINS_SPEC.md section 3), one stage at a time
with few channels: no LSA padding (56x56), padding (25x25, 12x12), heavy padding (8x8),
a single mostly-padded window (3x3, 1x1), asymmetric padding (16x24, 8x12), 57x57
(pad 6; the sr = 8 conv floors to 7x7), full MHSA at sr = 1 (7x7) and a single token.
PatchEmbed also covers inputs whose size the conv floors (230 -> 57, 57 -> 28).

Each parity test randomises every timm parameter (biases and LayerNorm affine
included), loads the same arrays into twins-np through ``load_state_dict``, and
compares output, input gradient and every parameter gradient for a random upstream
gradient.

Error measure: see tests/nn/nn_parity.py.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest
from nn_parity import DTYPES, STD
from nn_parity import assert_parity as _assert_parity
from nn_parity import copy_weights as _copy_weights
from nn_parity import run as _run
from nn_parity import timm_twins as _timm_twins
from nn_parity import tokens as _tokens
from nn_parity import torch_module as _torch_module

import twins_np
from twins_np.backend import asnumpy, cupy_available, is_cupy_array, to_device
from twins_np.gradcheck import TOLERANCES
from twins_np.nn import Block, DropPath, Identity, PatchEmbed, PosConv

# ---- PosConv ------------------------------------------------------------------------------
POS_CASES = [
    pytest.param(56, 56, 32, id="56x56"),
    pytest.param(25, 25, 32, id="25x25"),
    pytest.param(57, 57, 16, id="57x57"),
    pytest.param(16, 24, 32, id="16x24"),
    pytest.param(8, 12, 64, id="8x12"),
    pytest.param(3, 3, 32, id="3x3"),
    pytest.param(1, 1, 32, id="1x1"),
]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,W,C", POS_CASES)
def test_posconv_matches_timm(dtype, H, W, C):
    tm = _torch_module(_timm_twins().PosConv(C, C), dtype)
    ours = PosConv(C, C, dtype=dtype)
    _copy_weights(tm, ours)
    _assert_parity(*_run(tm, ours, _tokens(2, H, W, C, dtype), (H, W)), dtype)


def test_posconv_refuses_stride_2_and_non_depthwise():
    with pytest.raises(ValueError, match="stride"):
        PosConv(32, 32, stride=2)
    with pytest.raises(ValueError, match="in_chans"):
        PosConv(16, 32)


# ---- PatchEmbed ---------------------------------------------------------------------------
# (B, C_in, H, W, patch, C)
PATCH_CASES = [
    pytest.param(2, 3, 32, 32, 4, 32, id="p4-32x32"),
    pytest.param(2, 3, 230, 230, 4, 32, id="p4-230x230-floors-to-57"),
    pytest.param(2, 16, 57, 57, 2, 32, id="p2-57x57-floors-to-28"),
    pytest.param(2, 3, 64, 96, 4, 32, id="p4-64x96-nonsquare"),
    pytest.param(2, 32, 15, 9, 2, 64, id="p2-15x9-floors-to-7x4"),
    pytest.param(1, 3, 4, 4, 4, 16, id="p4-4x4-one-patch"),
]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,c_in,H,W,p,C", PATCH_CASES)
def test_patch_embed_matches_timm(dtype, B, c_in, H, W, p, C):
    # timm's constructor insists on a divisible img_size; its forward takes any size
    tm = _torch_module(_timm_twins().PatchEmbed((H // p * p, W // p * p), p, c_in, C), dtype)
    ours = PatchEmbed((H, W), p, c_in, C, dtype=dtype)
    _copy_weights(tm, ours)
    x = np.random.default_rng(0).standard_normal((B, c_in, H, W)).astype(dtype)
    ref, got = _run(tm, ours, x)
    assert got["out"].shape == (B, (H // p) * (W // p), C)
    _assert_parity(ref, got, dtype)
    # the pixels the conv floors away get exactly zero gradient
    dx = got["dx"]
    assert not dx[:, :, H // p * p :, :].any() and not dx[:, :, :, W // p * p :].any()


def test_patch_embed_rejects_wrong_channels_and_small_images():
    m = PatchEmbed(32, 4, 3, 16)
    with pytest.raises(ValueError, match=r"3 input channels.*\(1, 4, 32, 32\)"):
        m(np.zeros((1, 4, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="3x8 is smaller than the patch size 4"):
        m(np.zeros((1, 3, 3, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        m(np.zeros((3, 32, 32), dtype=np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        m(np.zeros((1, 3, 32, 32), dtype=np.uint8))


# ---- Block ----------------------------------------------------------------------------------
# (H, W, C, heads, ws, sr, mlp_ratio): ws = 7 is an SVT LSA block, ws = 1 a GSA block.
BLOCK_CASES = [
    pytest.param(56, 56, 32, 2, 7, 1, 4, id="lsa-56x56-nopad"),
    pytest.param(25, 25, 32, 4, 7, 1, 4, id="lsa-25x25-pad3"),
    pytest.param(12, 12, 32, 2, 7, 1, 8, id="lsa-12x12-pad2-mlp8"),
    pytest.param(8, 8, 32, 2, 7, 1, 4, id="lsa-8x8-pad6"),
    pytest.param(3, 3, 32, 2, 7, 1, 4, id="lsa-3x3-40pad"),
    pytest.param(1, 1, 32, 2, 7, 1, 4, id="lsa-1x1-48pad"),
    pytest.param(16, 24, 32, 2, 7, 1, 4, id="lsa-16x24-asym-pad"),
    pytest.param(57, 57, 16, 2, 7, 1, 4, id="lsa-57x57-pad6"),
    pytest.param(56, 56, 32, 2, 1, 8, 8, id="gsa-56x56-sr8-mlp8"),
    pytest.param(28, 28, 32, 2, 1, 4, 8, id="gsa-28x28-sr4-mlp8"),
    pytest.param(14, 14, 64, 4, 1, 2, 4, id="gsa-14x14-sr2"),
    pytest.param(7, 7, 64, 4, 1, 1, 4, id="gsa-7x7-sr1-full-mhsa"),
    pytest.param(25, 25, 32, 2, 1, 8, 4, id="gsa-25x25-sr8-9keys"),
    pytest.param(8, 8, 32, 2, 1, 8, 8, id="gsa-8x8-sr8-one-key"),
    pytest.param(57, 57, 16, 2, 1, 8, 4, id="gsa-57x57-sr8-floors"),
    pytest.param(8, 12, 32, 2, 1, 4, 4, id="gsa-8x12-sr4-6keys"),
    pytest.param(1, 1, 32, 2, 1, 1, 4, id="gsa-1x1-sr1-one-token"),
]


def _timm_block(C: int, heads: int, mlp_ratio: float, ws: int, sr: int, drop_path: float = 0.0, eps: float | None = None) -> Any:
    """timm's Block; with ``eps`` its norm_layer is LayerNorm(eps) (Twins passes 1e-6), else timm's default."""
    torch = pytest.importorskip("torch")
    norm = {} if eps is None else {"norm_layer": partial(torch.nn.LayerNorm, eps=eps)}
    return _timm_twins().Block(C, heads, mlp_ratio, drop_path=drop_path, sr_ratio=sr, ws=ws, **norm)


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,W,C,heads,ws,sr,mlp_ratio", BLOCK_CASES)
def test_block_matches_timm(dtype, H, W, C, heads, ws, sr, mlp_ratio):
    tm = _torch_module(_timm_block(C, heads, mlp_ratio, ws, sr, eps=1e-6), dtype)  # as in Twins
    ours = Block(C, heads, mlp_ratio, sr_ratio=sr, ws=ws, norm_eps=1e-6, dtype=dtype)
    _copy_weights(tm, ours)
    _assert_parity(*_run(tm, ours, _tokens(2, H, W, C, dtype), (H, W)), dtype)


def test_block_layernorm_eps_is_timms_and_the_model_passes_twins_eps():
    b = Block(32, 2, ws=7)
    assert b.norm1.eps == b.norm2.eps == 1e-5  # timm's Block: norm_layer=nn.LayerNorm (eps 1e-5)
    model = twins_np.create_model("twins_svt_teach32")
    assert {m.eps for blk in model.blocks for m in blk for m in (m.norm1, m.norm2)} == {1e-6}


# ---- drop path -------------------------------------------------------------------------------
DROP_CASES = [pytest.param(7, 1, id="lsa"), pytest.param(1, 4, id="gsa-sr4")]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ws,sr", DROP_CASES)
def test_block_train_mode_drop_path_matches_timm(dtype, ws, sr):
    """timm draws a (B, 1, 1) Bernoulli(keep) mask per DropPath (drop_path1 first), divided by keep.

    Seeding torch, drawing the two masks the same way, and re-seeding before timm's
    forward reproduces them; twins-np receives them through ``DropPath.mask``.
    """
    torch = pytest.importorskip("torch")
    B, H, W, C, rate = 8, 8, 12, 32, 0.4
    keep = 1.0 - rate
    # both with their default LayerNorm eps (1e-5): a standalone Block equals timm's
    tm = _torch_module(_timm_block(C, 2, 4.0, ws, sr, drop_path=rate), dtype).train()
    ours = Block(C, 2, 4.0, drop_path=rate, sr_ratio=sr, ws=ws, dtype=dtype).train()
    _copy_weights(tm, ours)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(5)
    masks = [torch.empty((B, 1, 1), dtype=tdtype).bernoulli_(keep).div_(keep).view(B).numpy() for _ in range(2)]
    both_dropped = (masks[0] == 0) & (masks[1] == 0)
    assert both_dropped.any() and (masks[0] > 0).any() and (masks[1] > 0).any(), "choose a seed that drops and keeps"
    assert isinstance(ours.drop_path1, DropPath) and isinstance(ours.drop_path2, DropPath)
    ours.drop_path1.mask, ours.drop_path2.mask = masks
    x = _tokens(B, H, W, C, dtype)
    torch.manual_seed(5)  # timm's forward now draws the same two masks in the same order
    ref, got = _run(tm, ours, x, (H, W))
    _assert_parity(ref, got, dtype)
    # a sample whose two branches are both dropped passes through unchanged
    assert np.array_equal(got["out"][both_dropped], x[both_dropped])


def test_drop_path_rate_0_in_train_mode_equals_eval():
    m = Block(32, 2, 4.0, drop_path=0.0, ws=7, rng=0, dtype=np.float64)
    assert isinstance(m.drop_path1, Identity) and isinstance(m.drop_path2, Identity)
    x = _tokens(2, 8, 12, 32, np.float64)
    dout = np.random.default_rng(1).standard_normal(x.shape)
    results = []
    for train in (True, False):
        m.train(train).zero_grad()
        out = m(x, (8, 12))
        dx = m.backward(dout)
        results.append([out, dx] + [p.grad for p in m.parameters()])
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_drop_path_in_eval_is_the_identity():
    """With a rate > 0, eval gives the same result as a block without drop path."""
    a = Block(32, 2, 4.0, drop_path=0.5, sr_ratio=2, ws=1, rng=0, dtype=np.float64).eval()
    b = Block(32, 2, 4.0, drop_path=0.0, sr_ratio=2, ws=1, rng=0, dtype=np.float64).eval()
    b.load_state_dict(a.state_dict())
    x = _tokens(3, 8, 8, 32, np.float64)
    assert np.array_equal(a(x, (8, 8)), b(x, (8, 8)))


# ---- CuPy vs NumPy ---------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("ws,sr,H,W", [(7, 1, 25, 25), (1, 4, 12, 12), (1, 1, 7, 7)], ids=["lsa-25x25", "gsa-sr4", "gsa-sr1"])
def test_block_on_cupy_matches_numpy(ws, sr, H, W):
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    C, tol = 32, TOLERANCES["parity_f64_rel"]
    cpu = Block(C, 2, 4.0, sr_ratio=sr, ws=ws, rng=0, dtype=np.float64)
    r = np.random.default_rng(1)
    cpu.load_state_dict({k: v + STD * r.standard_normal(v.shape) for k, v in cpu.state_dict().items()})
    gpu = Block(C, 2, 4.0, sr_ratio=sr, ws=ws, rng=0, dtype=np.float64).load_state_dict(cpu.state_dict()).to_device("gpu")
    x = _tokens(2, H, W, C, np.float64)
    dout = r.standard_normal(x.shape)
    ref = [cpu(x, (H, W)), cpu.backward(dout)] + [p.grad for p in cpu.parameters()]
    out = gpu(to_device(x, "gpu"), (H, W))
    got = [out, gpu.backward(to_device(dout, "gpu"))] + [p.grad for p in gpu.parameters()]
    assert is_cupy_array(out) and all(is_cupy_array(g) for g in got)
    names = ["out", "dx"] + [k for k, _ in cpu.named_parameters()]
    for name, a, b in zip(names, got, ref):
        err = float(np.abs(asnumpy(a) - b).max()) / float(np.abs(b).max())
        assert err < tol, f"{name}: rel err {err:.2e}"
