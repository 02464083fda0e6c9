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
from twins_np.nn import Conv2d, ReLU


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
