"""The Module / Parameter API: names, gradients, state_dict, dtype, device, modes, repr.

No PyTorch needed: these tests pin down the behaviour every twins-np module inherits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from twins_np.gradcheck import TOLERANCES
from twins_np.nn import Block, LayerNorm, Linear, Mlp, Module, Parameter, PatchEmbed, PosConv

C = 16


def _gsa_block(dtype: Any = np.float64) -> Block:
    """A GSA block with sub-sampling: every kind of parameter Twins has except the PEG's."""
    return Block(C, 2, mlp_ratio=2.0, sr_ratio=2, ws=1, rng=0, dtype=dtype)


def _tokens(dtype: Any = np.float64, B: int = 2, H: int = 4, W: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, H * W, C)).astype(dtype)


def _forward_backward(m: Block, x: np.ndarray, seed: int = 1) -> np.ndarray:
    out = m(x, (4, 6))
    return m.backward(np.random.default_rng(seed).standard_normal(out.shape).astype(x.dtype))


# ---- names ------------------------------------------------------------------------------------
def test_named_parameters_names_and_order():
    names = [n for n, _ in _gsa_block().named_parameters()]
    assert names == [
        "norm1.weight", "norm1.bias",
        "attn.q.weight", "attn.q.bias", "attn.kv.weight", "attn.kv.bias", "attn.proj.weight", "attn.proj.bias",
        "attn.sr.weight", "attn.sr.bias", "attn.norm.weight", "attn.norm.bias",
        "norm2.weight", "norm2.bias",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    ]  # fmt: skip


def test_lsa_block_and_posconv_names():
    assert list(Block(C, 2, ws=7).state_dict())[2:6] == ["attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias"]
    assert list(PosConv(C, C).state_dict()) == ["proj.0.weight", "proj.0.bias"]
    assert list(PatchEmbed(32, 4, 3, C).state_dict()) == ["proj.weight", "proj.bias", "norm.weight", "norm.bias"]


def test_parameters_are_the_named_parameters_objects():
    m = _gsa_block()
    ps = m.parameters()
    assert len(ps) == 18 and all(isinstance(p, Parameter) for p in ps)
    assert all(p is q for p, (_, q) in zip(ps, m.named_parameters()))
    assert m.state_dict()["attn.kv.weight"] is m.attn.kv.weight.data  # the arrays, not copies


def test_reassigning_an_attribute_replaces_the_registration():
    m = Mlp(C, 2 * C)
    m.fc2 = Linear(2 * C, C, bias=False)
    assert [n for n, _ in m.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight"]


# ---- gradients --------------------------------------------------------------------------------
def test_zero_grad_sets_every_grad_to_none():
    m = _gsa_block()
    assert all(p.grad is None for p in m.parameters())
    _forward_backward(m, _tokens())
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_backward_accumulates_into_grad():
    m, x = _gsa_block(), _tokens()
    dx1 = _forward_backward(m, x)
    once = {n: p.grad.copy() for n, p in m.named_parameters()}
    dx2 = _forward_backward(m, x)
    np.testing.assert_array_equal(dx1, dx2)  # the input gradient is returned, not accumulated
    for n, p in m.named_parameters():
        err = float(np.abs(p.grad - 2 * once[n]).max()) / float(np.abs(2 * once[n]).max())
        assert err < TOLERANCES["parity_f64_rel"], f"{n}: {err:.2e}"


def test_backward_twice_without_forward_raises():
    m = _gsa_block()
    _forward_backward(m, _tokens())
    with pytest.raises(RuntimeError, match=r"Block\.backward\(\) called without a forward\(\).*twice"):
        m.backward(np.ones((2, 24, C)))


@pytest.mark.parametrize("make", [_gsa_block, lambda: Linear(C, 3), lambda: LayerNorm(C)], ids=["Block", "Linear", "LayerNorm"])
def test_backward_without_forward_raises(make):
    m = make()
    with pytest.raises(RuntimeError, match="without a forward"):
        m.backward(np.ones((2, 3)))


def test_grad_keeps_the_parameter_dtype():
    m = _gsa_block(np.float32)
    _forward_backward(m, _tokens(np.float32))
    assert all(p.grad.dtype == np.float32 for p in m.parameters())


# ---- state_dict -------------------------------------------------------------------------------
def test_state_dict_round_trip_copies_the_arrays():
    a, b = _gsa_block(), Block(C, 2, mlp_ratio=2.0, sr_ratio=2, ws=1, rng=1, dtype=np.float64)
    assert not np.array_equal(a.attn.q.weight.data, b.attn.q.weight.data)
    state = a.state_dict()
    assert b.load_state_dict(state) is b
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
        assert v is not state[k]
    x = _tokens()
    np.testing.assert_array_equal(a(x, (4, 6)), b(x, (4, 6)))
    kept = b.attn.q.weight.data.copy()
    a.attn.q.weight.data += 1.0  # b owns its own copy
    np.testing.assert_array_equal(b.attn.q.weight.data, kept)


def test_load_state_dict_strict_lists_missing_and_unexpected_keys():
    m = Mlp(C, 2 * C)
    state = dict(m.state_dict())
    del state["fc2.bias"]
    state["fc3.weight"] = np.zeros((C, C), dtype=np.float32)
    with pytest.raises(KeyError) as info:
        m.load_state_dict(state)
    msg = str(info.value)
    assert "missing keys ['fc2.bias']" in msg and "unexpected keys ['fc3.weight']" in msg


def test_load_state_dict_wrong_shape_names_key_and_shapes():
    m = Mlp(C, 2 * C)
    state = dict(m.state_dict())
    state["fc1.weight"] = np.zeros((2 * C, C + 1), dtype=np.float32)
    with pytest.raises(ValueError, match=r"fc1\.weight: expected \(32, 16\), got \(32, 17\)"):
        m.load_state_dict(state)
    with pytest.raises(ValueError, match=r"fc1\.weight"):
        m.load_state_dict(state, strict=False)  # a wrong shape is never silently skipped


def test_load_state_dict_non_strict_loads_the_overlap():
    m = Mlp(C, 2 * C, rng=0)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    new_w = np.full((2 * C, C), 0.5, dtype=np.float32)
    m.load_state_dict({"fc1.weight": new_w, "head.weight": np.zeros(3)}, strict=False)
    np.testing.assert_array_equal(m.fc1.weight.data, new_w)
    for k in ("fc1.bias", "fc2.weight", "fc2.bias"):
        np.testing.assert_array_equal(m.state_dict()[k], before[k])


def test_load_state_dict_converts_to_the_module_dtype():
    m = Linear(C, 4, dtype=np.float32)
    m.load_state_dict({"weight": np.ones((4, C)), "bias": np.arange(4.0)})  # float64 in
    assert m.weight.data.dtype == m.bias.data.dtype == np.float32


# ---- dtype, device, modes ----------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", [(np.float32, np.float64), (np.float64, np.float32)], ids=["f32-to-f64", "f64-to-f32"])
def test_astype_casts_parameters_and_grads_in_place(src, dst):
    m = _gsa_block(src)
    _forward_backward(m, _tokens(src))
    ids = [id(p) for p in m.parameters()]
    assert m.astype(dst) is m
    assert [id(p) for p in m.parameters()] == ids  # the same Parameter objects
    for n, p in m.named_parameters():
        assert p.data.dtype == dst and p.grad.dtype == dst, n
    assert m.dtype == dst
    out = m(_tokens(dst), (4, 6))
    assert out.dtype == dst


@pytest.mark.parametrize("dtype", [int, np.int32, np.float16, bool], ids=["int", "int32", "float16", "bool"])
def test_astype_refuses_non_float_and_half(dtype):
    m = Linear(C, 4)
    with pytest.raises(TypeError):
        m.astype(dtype)
    assert m.weight.data.dtype == np.float32  # unchanged


def test_astype_float16_message_explains():
    with pytest.raises(TypeError, match="float16 is not supported"):
        Linear(C, 4).astype(np.float16)


def test_astype_drops_a_stale_cache():
    """A cache from a float32 forward must not feed a float64 backward."""
    m = Linear(C, 4)
    m(np.ones((2, C), dtype=np.float32))
    m.astype(np.float64)
    with pytest.raises(RuntimeError, match="without a forward"):
        m.backward(np.ones((2, 4)))


def test_train_and_eval_propagate_to_children():
    m = Block(C, 2, drop_path=0.1, sr_ratio=2, ws=1)
    modules = [mod for _, mod in m.named_modules()]
    assert len(modules) > 10 and all(mod.training for mod in modules)
    assert m.eval() is m
    assert not any(mod.training for mod in modules)
    assert m.train() is m
    assert all(mod.training for mod in modules)
    m.train(False)
    assert not any(mod.training for mod in modules)


def test_to_device_cpu():
    m = _gsa_block()
    _forward_backward(m, _tokens())
    assert m.to_device("cpu") is m
    assert all(type(p.data) is np.ndarray and type(p.grad) is np.ndarray for p in m.parameters())
    assert m.xp is np
    with pytest.raises(ValueError, match="device"):
        m.to_device("tpu")


# ---- weight decay flags, repr --------------------------------------------------------------------
def test_no_weight_decay_flags():
    m = _gsa_block()
    flags = {n: p.no_weight_decay for n, p in m.named_parameters()}
    for n, f in flags.items():
        is_weight_matrix = n.endswith(".weight") and m.state_dict()[n].ndim > 1
        assert f == (not is_weight_matrix), n  # biases and LayerNorm params: True; weights: False
    assert all(p.no_weight_decay for p in PosConv(C, C).parameters())  # the PEG's weight too
    pe = PatchEmbed(32, 4, 3, C)
    assert not pe.proj.weight.no_weight_decay and pe.proj.bias.no_weight_decay and pe.norm.weight.no_weight_decay


def test_repr_shows_the_tree():
    text = repr(_gsa_block())
    parts = [
        "Block(",
        "(attn): GlobalSubSampleAttn(dim=16, num_heads=2, sr_ratio=2",
        "(q): Linear(in_features=16, out_features=16)",
        "(norm1): LayerNorm(16, eps=1e-05)",
        "(sr): Conv2d(16, 16, kernel_size=2, stride=2",
    ]
    for part in parts:
        assert part in text, part
    assert repr(Parameter(np.zeros((2, 3), dtype=np.float32))) == "Parameter(shape=(2, 3), dtype=float32)"
    assert "PosConv(" in repr(PosConv(C, C))


def test_module_requires_init_before_attributes():
    class Broken(Module):
        def __init__(self) -> None:
            self.w = Parameter(np.zeros(2))

    with pytest.raises(RuntimeError, match=r"Module\.__init__"):
        Broken()
