"""The dense-head modules against PyTorch: Conv2d (general k x k), ReLU, GroupNorm, BatchNorm2d.

Each parity test builds the torch module, randomises every parameter (norm weights
1 + N(0, 0.2), everything else N(0, 0.2)), loads the same arrays into the twins-np module
through ``load_state_dict`` (which checks names, order and shapes) and compares the output,
the input gradient and every parameter gradient for one random upstream gradient. twins-np
works channels-last, torch NCHW: the torch module is called on the permuted tensor.

Error measure: see tests/nn/nn_parity.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from nn_parity import DTYPES, assert_parity, copy_weights, run, torch_module

from twins_np.gradcheck import TOLERANCES, check_module
from twins_np.nn import BatchNorm2d, Conv2d, GroupNorm, ReLU


def _nchw_call(tm: Any) -> Callable:
    """torch module applied to a channels-last tensor, returning channels-last."""
    return lambda t: tm(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _map(B: int, H: int, W: int, C: int, dtype: Any, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    return (shift + np.random.default_rng(seed).standard_normal((B, H, W, C))).astype(dtype)


# ---- Conv2d, general kernels -------------------------------------------------------------
GENERAL_CASES = [  # (C_in, C_out, k, stride, padding, H, W)
    pytest.param(5, 7, 3, 1, 1, 7, 11, id="3x3-s1-p1-7x11"),
    pytest.param(5, 7, 3, 2, 1, 13, 5, id="3x3-s2-p1-13x5"),
    pytest.param(3, 9, 1, 1, 0, 7, 11, id="1x1-7x11"),
    pytest.param(7, 3, 5, 2, 2, 13, 5, id="5x5-s2-p2-13x5"),
    pytest.param(3, 5, 3, 2, 0, 13, 6, id="3x3-s2-p0-floors"),
]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("c_in,c_out,k,s,p,H,W", GENERAL_CASES)
def test_general_conv_matches_torch(dtype, bias, c_in, c_out, k, s, p, H, W):
    torch = pytest.importorskip("torch")
    tm = torch_module(torch.nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias), dtype)
    ours = Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias, dtype=dtype)
    copy_weights(tm, ours)
    x = _map(2, H, W, c_in, dtype)
    ref, got = run(tm, ours, x, tcall=_nchw_call(tm))
    assert got["out"].shape == (2, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1, c_out)
    assert_parity(ref, got, dtype)


def test_conv2d_signature_defaults_equal_torch():
    torch = pytest.importorskip("torch")
    import inspect

    ours = inspect.signature(Conv2d.__init__).parameters
    theirs = inspect.signature(torch.nn.Conv2d.__init__).parameters
    for name in ("stride", "padding", "groups", "bias"):
        assert ours[name].default == theirs[name].default, name
    assert list(ours)[1:4] == ["in_channels", "out_channels", "kernel_size"]


def test_general_conv_module_gradcheck():
    m = Conv2d(3, 4, 3, stride=2, padding=1, rng=0)
    rng = np.random.default_rng(1)
    m.bias.data = rng.standard_normal(4).astype(np.float32)
    rows = check_module(m, rng.standard_normal((2, 7, 5, 3)), mode="full")
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_general_conv_wrong_channel_count():
    with pytest.raises(ValueError, match=r"x has C_in = 4 channels .* expects C_in = 3"):
        Conv2d(3, 5, 3, padding=1, rng=0)(np.zeros((1, 5, 5, 4), np.float32))


def test_general_conv_refuses_negative_padding():
    with pytest.raises(ValueError, match=r"padding >= 0; got kernel_size=3, stride=1, padding=-1"):
        Conv2d(3, 5, 3, padding=-1)


# ---- ReLU ----------------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    tm, ours = torch.nn.ReLU(), ReLU()
    assert ours.state_dict() == {} and list(tm.state_dict()) == []
    x = _map(2, 7, 11, 5, dtype)
    xt = torch.tensor(x, requires_grad=True)
    out_t = tm(xt)
    out = ours(x)
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    out_t.backward(torch.tensor(dout))
    dx = ours.backward(dout)
    assert out.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(out, out_t.detach().numpy())  # max(x, 0) is exact
    np.testing.assert_array_equal(dx, xt.grad.numpy())


def test_relu_backward_twice_raises():
    m = ReLU()
    m(np.ones((2, 3), np.float32))
    m.backward(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="ReLU.backward"):
        m.backward(np.ones((2, 3), np.float32))


# ---- GroupNorm -----------------------------------------------------------------------------
def _norm_module(tm: Any, dtype: Any) -> Any:
    """torch_module's noise, with norm weights around 1 (as LayerNorm's gammas there)."""
    tm = torch_module(tm, dtype)
    if getattr(tm, "weight", None) is not None:
        with pytest.importorskip("torch").no_grad():
            tm.weight.add_(1.0)
    return tm


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("G,C,H,W", [(3, 9, 7, 11), (1, 5, 13, 5), (5, 5, 7, 11), (2, 6, 1, 1)], ids=["G3C9", "G1", "G=C", "1x1"])
def test_group_norm_matches_torch(dtype, G, C, H, W):
    torch = pytest.importorskip("torch")
    tm = _norm_module(torch.nn.GroupNorm(G, C), dtype)
    ours = GroupNorm(G, C, dtype=dtype)
    copy_weights(tm, ours)
    x = _map(2, H, W, C, dtype, shift=3.0)
    assert_parity(*run(tm, ours, x, tcall=_nchw_call(tm)), dtype)


@pytest.mark.parity
def test_group_norm_without_affine_matches_torch():
    torch = pytest.importorskip("torch")
    tm, ours = torch.nn.GroupNorm(3, 9, affine=False).double(), GroupNorm(3, 9, affine=False, dtype=np.float64)
    assert ours.state_dict() == {} and ours.parameters() == []
    x = _map(2, 7, 11, 9, np.float64, shift=1.0)
    xt = torch.tensor(x, requires_grad=True)
    out_t = _nchw_call(tm)(xt)
    dout = np.random.default_rng(1).standard_normal(x.shape)
    out_t.backward(torch.tensor(dout))
    out = ours(x)
    dx = ours.backward(dout)
    assert np.abs(out - out_t.detach().numpy()).max() / np.abs(out).max() < TOLERANCES["parity_f64_rel"]
    assert np.abs(dx - xt.grad.numpy()).max() / np.abs(dx).max() < TOLERANCES["parity_f64_rel"]


def test_group_norm_signature_and_checks():
    torch = pytest.importorskip("torch")
    import inspect

    ours = inspect.signature(GroupNorm.__init__).parameters
    theirs = inspect.signature(torch.nn.GroupNorm.__init__).parameters
    assert list(ours)[1:5] == list(theirs)[1:5] == ["num_groups", "num_channels", "eps", "affine"]
    assert all(ours[k].default == theirs[k].default for k in ("eps", "affine"))
    with pytest.raises(ValueError, match=r"num_groups = 4 must be a positive divisor of num_channels = 6"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"GroupNorm was built for dim = 6 channels, but x has C = 5"):
        GroupNorm(3, 6)(np.zeros((1, 2, 2, 5), np.float32))


def test_group_norm_module_gradcheck():
    m = GroupNorm(3, 9)
    rng = np.random.default_rng(2)
    m.weight.data = (1.0 + 0.3 * rng.standard_normal(9)).astype(np.float32)
    m.bias.data = rng.standard_normal(9).astype(np.float32)
    rows = check_module(m, 2.0 + rng.standard_normal((2, 5, 3, 9)), mode="full")
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


# ---- BatchNorm2d ----------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, 0.3, None], ids=["m0.1", "m0.3", "cumulative"])
@pytest.mark.parametrize("C,H,W", [(5, 7, 11), (3, 13, 5)], ids=["C5-7x11", "C3-13x5"])
def test_batch_norm_matches_torch_train_then_eval(dtype, momentum, C, H, W):
    """Three training steps (output, every gradient, the buffers after each), then evaluation."""
    torch = pytest.importorskip("torch")
    tm = _norm_module(torch.nn.BatchNorm2d(C, momentum=momentum), dtype)
    ours = BatchNorm2d(C, momentum=momentum, dtype=dtype)
    copy_weights(tm, ours)
    tol = TOLERANCES["parity_f64_rel"] if dtype == np.float64 else TOLERANCES["parity_f32_rel"]
    for step, training in enumerate((True, True, True, False)):
        tm.train(training)
        ours.train(training)
        tm.zero_grad()
        ours.zero_grad()
        x = _map(2, H, W, C, dtype, seed=step, shift=1.0 + step)
        assert_parity(*run(tm, ours, x, tcall=_nchw_call(tm), seed=10 + step), dtype)
        ref = tm.state_dict()
        for name in ("running_mean", "running_var"):
            got, want = getattr(ours, name), ref[name].numpy()
            assert got.dtype == dtype
            assert np.abs(got - want).max() / np.abs(want).max() < tol, (step, name)
        assert int(ours.num_batches_tracked) == int(ref["num_batches_tracked"]) == min(step + 1, 3)


@pytest.mark.parity
def test_batch_norm_without_running_stats_matches_torch_in_eval():
    torch = pytest.importorskip("torch")
    tm = _norm_module(torch.nn.BatchNorm2d(5, track_running_stats=False), np.float64).eval()
    ours = BatchNorm2d(5, track_running_stats=False, dtype=np.float64).eval()
    copy_weights(tm, ours)
    assert list(ours.state_dict()) == ["weight", "bias"]
    assert_parity(*run(tm, ours, _map(2, 7, 11, 5, np.float64, shift=2.0), tcall=_nchw_call(tm)), np.float64)


def test_batch_norm_buffers_are_state_but_not_parameters():
    from twins_np.nn import Sequential
    from twins_np.optim import AdamW

    m = Sequential([Conv2d(3, 5, 3, padding=1, rng=0), BatchNorm2d(5), ReLU()])
    assert list(m.state_dict()) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"
    ]  # fmt: skip
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [n for n, _ in m.named_buffers()] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    bn = m[1]
    x = _map(2, 7, 11, 3, np.float32)
    opt = AdamW(m.parameters(), lr=0.1)
    out = m(x)
    m.backward(np.ones_like(out))
    before = bn.running_mean.copy()
    opt.step()
    np.testing.assert_array_equal(bn.running_mean, before)  # the optimiser does not touch buffers
    assert int(bn.num_batches_tracked) == 1
    # round trip through state_dict: values, dtypes (the counter stays int64)
    other = Sequential([Conv2d(3, 5, 3, padding=1, rng=1), BatchNorm2d(5), ReLU()])
    other.load_state_dict(m.state_dict())
    for (k, a), (_, b) in zip(m.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype and a is not b, k
    m.astype(np.float64)
    assert bn.running_var.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64
    m.to_device("cpu")
    assert isinstance(bn.running_mean, np.ndarray)
    with pytest.raises(ValueError, match=r"1.running_var: expected \(5,\), got \(4,\)"):
        other.load_state_dict({**other.state_dict(), "1.running_var": np.ones(4, np.float32)})
    with pytest.raises(KeyError, match=r"missing keys \['1.num_batches_tracked'\]"):
        other.load_state_dict({k: v for k, v in other.state_dict().items() if k != "1.num_batches_tracked"})


def test_batch_norm_eval_leaves_buffers_and_counts_only_training():
    bn = BatchNorm2d(3)
    x = _map(2, 5, 7, 3, np.float32, shift=2.0)
    bn(x)
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    bn.eval()
    bn(x)
    np.testing.assert_array_equal(bn.running_mean, rm)
    np.testing.assert_array_equal(bn.running_var, rv)
    assert int(bn.num_batches_tracked) == 1


def test_batch_norm_signature_and_checks():
    torch = pytest.importorskip("torch")
    import inspect

    ours = inspect.signature(BatchNorm2d.__init__).parameters
    theirs = inspect.signature(torch.nn.BatchNorm2d.__init__).parameters
    assert list(ours)[1:6] == list(theirs)[1:6]
    assert all(ours[k].default == theirs[k].default for k in ("eps", "momentum", "affine", "track_running_stats"))
    with pytest.raises(ValueError, match=r"BatchNorm2d was built for dim = 4 channels, but x has C = 3"):
        BatchNorm2d(4)(np.zeros((2, 2, 2, 3), np.float32))
    bn = BatchNorm2d(3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(np.zeros((1, 1, 1, 3), np.float32))
    assert int(bn.num_batches_tracked) == 0  # a refused forward counts nothing


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_module_gradcheck(training):
    m = BatchNorm2d(5).train(training)
    rng = np.random.default_rng(3)
    m.weight.data = (1.0 + 0.3 * rng.standard_normal(5)).astype(np.float32)
    m.bias.data = rng.standard_normal(5).astype(np.float32)
    m.running_mean = rng.standard_normal(5).astype(np.float32)
    m.running_var = (1.0 + rng.random(5)).astype(np.float32)
    rows = check_module(m, 2.0 + rng.standard_normal((2, 3, 5, 5)), mode="full")
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


# ---- multiply-adds ---------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize(
    "c_in,c_out,k,s,p,groups,H,W",
    [(5, 7, 3, 1, 1, 1, 7, 11), (5, 7, 3, 2, 1, 1, 13, 5), (3, 9, 1, 1, 0, 1, 7, 11), (7, 3, 5, 2, 2, 1, 13, 5),
     (4, 6, 4, 4, 0, 1, 13, 9), (6, 6, 3, 1, 1, 6, 7, 11), (6, 6, 2, 2, 0, 6, 7, 11)],
    ids=["3x3", "3x3-s2", "1x1", "5x5-s2-p2", "patch4-floors", "depthwise3x3", "depthwise-patch2"],
)  # fmt: skip
def test_conv2d_macs_match_torch_flop_counter(c_in, c_out, k, s, p, groups, H, W):
    """module_flops of every Conv2d kind equals torch.utils.flop_counter (2 FLOPs per MAC), batch 2."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from twins_np.analysis import module_flops

    tm = torch.nn.Conv2d(c_in, c_out, k, stride=s, padding=p, groups=groups)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tm(torch.zeros(2, c_in, H, W))
    ours = Conv2d(c_in, c_out, k, stride=s, padding=p, groups=groups)
    assert counter.get_total_flops() == 2 * module_flops(ours, (H, W), batch_size=2) > 0


def test_norms_and_relu_count_no_macs():
    from twins_np.analysis import module_flops

    for m in (ReLU(), GroupNorm(3, 9), BatchNorm2d(9)):
        assert module_flops(m, (7, 11), batch_size=2) == 0
