"""Linear, LayerNorm, Mlp and Conv2d modules against their PyTorch/timm counterparts.

Each parity test builds the PyTorch module, randomises every parameter (biases and
LayerNorm affine included, so nothing sits at its init), loads the very same arrays
into the twins-np module through ``load_state_dict`` (which checks the key names and
shapes), and compares the output, the input gradient and every parameter gradient for
a random upstream gradient.

Error measure: see tests/nn/nn_parity.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from nn_parity import DTYPES
from nn_parity import assert_parity as _assert_parity
from nn_parity import copy_weights as _copy_weights
from nn_parity import run as _run
from nn_parity import torch_module as _torch_module

from twins_np.nn import Conv2d, LayerNorm, Linear, Mlp


def _timm_mlp(**kwargs: Any) -> Any:
    """timm's Mlp, or a clean skip when torch/timm are not installed."""
    pytest.importorskip("torch")
    return pytest.importorskip("timm.layers").Mlp(**kwargs)


# ---- Linear ----------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(7,), (2, 5), (2, 3, 4)], ids=["N", "BN", "BHW"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_matches_torch(dtype, lead, bias):
    torch = pytest.importorskip("torch")
    tm = _torch_module(torch.nn.Linear(24, 40, bias=bias), dtype)
    ours = Linear(24, 40, bias=bias, dtype=dtype)
    _copy_weights(tm, ours)
    x = np.random.default_rng(0).standard_normal((*lead, 24)).astype(dtype)
    _assert_parity(*_run(tm, ours, x), dtype)


# ---- LayerNorm -------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [1e-6, 1e-5], ids=["eps1e-6", "eps1e-5"])
@pytest.mark.parametrize("shift", [0.0, 5.0], ids=["centred", "offset5"])
def test_layernorm_matches_torch(dtype, eps, shift):
    """An offset input checks that the mean is removed before the variance is taken."""
    torch = pytest.importorskip("torch")
    tm = _torch_module(torch.nn.LayerNorm(32, eps=eps), dtype)
    ours = LayerNorm(32, eps=eps, dtype=dtype)
    _copy_weights(tm, ours)
    x = (shift + np.random.default_rng(0).standard_normal((2, 49, 32))).astype(dtype)
    _assert_parity(*_run(tm, ours, x), dtype)


def test_layernorm_eps_matters():
    """The two eps values give different outputs on small-variance rows, so the tests above can tell them apart."""
    x = 1e-3 * np.random.default_rng(0).standard_normal((3, 16))
    a, b = LayerNorm(16, eps=1e-6, dtype=np.float64), LayerNorm(16, eps=1e-5, dtype=np.float64)
    assert float(np.abs(a(x) - b(x)).max()) > 1e-3


# ---- Mlp ---------------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mlp_ratio", [4, 8], ids=["ratio4", "ratio8"])
def test_mlp_matches_timm(dtype, mlp_ratio):
    C = 32
    tm = _torch_module(_timm_mlp(in_features=C, hidden_features=mlp_ratio * C), dtype)
    ours = Mlp(C, mlp_ratio * C, dtype=dtype)
    _copy_weights(tm, ours)
    x = np.random.default_rng(0).standard_normal((2, 25, C)).astype(dtype)
    _assert_parity(*_run(tm, ours, x), dtype)


@pytest.mark.parity
def test_mlp_with_dropout_in_eval_matches_timm():
    """drop > 0 takes Mlp's step-by-step path; in eval the dropouts are identities."""
    tm = _torch_module(_timm_mlp(in_features=16, hidden_features=64, drop=0.3), np.float64).eval()
    ours = Mlp(16, 64, drop=0.3, dtype=np.float64).eval()
    _copy_weights(tm, ours)
    x = np.random.default_rng(0).standard_normal((3, 10, 16))
    _assert_parity(*_run(tm, ours, x), np.float64)


# ---- Conv2d (channels-last in twins-np, NCHW in torch; same weight layout) ----------------
def _nchw_call(tm: Any) -> Callable:
    """torch conv applied to a channels-last tensor, returning channels-last."""
    return lambda t: tm(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


CONV_CASES = [
    pytest.param(3, 16, 4, 32, 32, id="patch4-32x32"),
    pytest.param(3, 16, 4, 30, 23, id="patch4-30x23-floors"),
    pytest.param(16, 24, 2, 57, 57, id="patch2-57x57-floors"),
    pytest.param(16, 16, 8, 57, 60, id="sr8-57x60-floors"),
    pytest.param(8, 8, 2, 2, 2, id="patch2-2x2-one-patch"),
]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c_in,c_out,k,H,W", CONV_CASES)
def test_patch_conv_matches_torch(dtype, c_in, c_out, k, H, W):
    torch = pytest.importorskip("torch")
    tm = _torch_module(torch.nn.Conv2d(c_in, c_out, kernel_size=k, stride=k), dtype)
    ours = Conv2d(c_in, c_out, kernel_size=k, stride=k, dtype=dtype)
    _copy_weights(tm, ours)
    x = np.random.default_rng(0).standard_normal((2, H, W, c_in)).astype(dtype)
    ref, got = _run(tm, ours, x, tcall=_nchw_call(tm))
    assert got["out"].shape == (2, H // k, W // k, c_out)
    _assert_parity(ref, got, dtype)


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,W", [(7, 7), (1, 1), (3, 8)], ids=["7x7", "1x1", "3x8"])
def test_depthwise_conv_matches_torch(dtype, H, W):
    torch = pytest.importorskip("torch")
    C = 12
    tm = _torch_module(torch.nn.Conv2d(C, C, 3, 1, 1, groups=C), dtype)
    ours = Conv2d(C, C, 3, 1, 1, groups=C, dtype=dtype)
    _copy_weights(tm, ours)
    x = np.random.default_rng(0).standard_normal((2, H, W, C)).astype(dtype)
    _assert_parity(*_run(tm, ours, x, tcall=_nchw_call(tm)), dtype)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=2, stride=2, groups=2),
        dict(kernel_size=3, stride=1, padding=0, groups=8),
        dict(kernel_size=3, stride=2, padding=1, groups=8),
        dict(kernel_size=5, stride=1, padding=2, groups=8),
    ],
    ids=["k2s2-groups2", "dw-pad0", "dw-stride2", "dw-5x5"],
)
def test_conv2d_refuses_unsupported_configs(kwargs):
    """Grouped convs other than Twins' two depthwise ones are refused (groups == 1 takes any k, stride, padding)."""
    with pytest.raises(ValueError, match="kernel_size == stride") as info:
        Conv2d(8, 8, **kwargs)
    msg = str(info.value)
    assert "3x3 depthwise" in msg and f"kernel_size={kwargs['kernel_size']}" in msg and "groups == 1" in msg


@pytest.mark.parametrize(
    "kwargs,kind",
    [
        (dict(kernel_size=3, stride=2), "general"),
        (dict(kernel_size=2, stride=2, padding=1), "general"),
        (dict(kernel_size=3, stride=1, padding=1), "general"),
        (dict(kernel_size=1), "patch"),  # kernel == stride == 1: the patch conv is one matmul too
        (dict(kernel_size=4, stride=4), "patch"),
        (dict(kernel_size=3, stride=1, padding=1, groups=8), "depthwise3x3"),
        (dict(kernel_size=2, stride=2, groups=8), "depthwise_patch"),
    ],
    ids=["k3s2", "k2s2-pad1", "k3s1p1", "1x1", "patch4", "dw3x3", "dw-patch2"],
)
def test_conv2d_picks_the_routine(kwargs, kind):
    """Twins' three special convolutions keep their routines; every other groups == 1 conv is general."""
    assert Conv2d(8, 8, **kwargs).kind == kind


def test_depthwise_needs_equal_channels():
    with pytest.raises(ValueError, match="depthwise"):
        Conv2d(8, 16, 3, 1, 1, groups=8)
