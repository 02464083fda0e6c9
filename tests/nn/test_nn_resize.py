"""The Upsample module against torch.nn.Upsample (channels-last here, NCHW in torch)."""

from __future__ import annotations

import numpy as np
import pytest

from twins_np import nn
from twins_np.gradcheck import TOLERANCES, check_module

CASES = [
    dict(scale_factor=2, mode="nearest"),
    dict(size=(11, 6), mode="nearest"),
    dict(size=(20, 9), mode="bilinear", align_corners=False),
    dict(size=(4, 3), mode="bilinear"),
    dict(scale_factor=2, mode="bilinear", align_corners=False),
    dict(scale_factor=1.5, mode="bilinear", align_corners=False),
]
IDS = ["nearest-2x", "nearest-size", "bilinear-up", "bilinear-down", "bilinear-2x", "bilinear-1.5x"]


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parity
@pytest.mark.parametrize("kw", CASES, ids=IDS)
def test_matches_torch_upsample(kw):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 7, 5, 3))
    m = nn.Upsample(**kw)
    out = m(x)
    d = r.standard_normal(out.shape)
    dx = m.backward(d)
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    to = torch.nn.Upsample(**kw)(tx)
    to.backward(torch.tensor(d.transpose(0, 3, 1, 2).copy()))
    assert out.shape == to.permute(0, 2, 3, 1).shape
    assert _rel(out, to.detach().numpy().transpose(0, 2, 3, 1)) <= TOLERANCES["parity_f64_rel"]
    assert _rel(dx, tx.grad.numpy().transpose(0, 2, 3, 1)) <= TOLERANCES["parity_f64_rel"]


@pytest.mark.parametrize("kw", CASES[:3], ids=IDS[:3])
def test_gradcheck(kw):
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 3))
    rows = check_module(nn.Upsample(**kw), x, mode="full")
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


def test_no_parameters_and_float32_kept():
    m = nn.Upsample(scale_factor=2)
    assert m.state_dict() == {}
    out = m(np.zeros((1, 2, 3, 4), dtype=np.float32))
    assert out.dtype == np.float32 and out.shape == (1, 4, 6, 4)
    assert m.backward(np.ones_like(out)).dtype == np.float32


def test_backward_without_forward_raises():
    m = nn.Upsample(size=(3, 3), mode="bilinear")
    with pytest.raises(RuntimeError, match=r"Upsample.backward\(\) called without a forward"):
        m.backward(np.zeros((1, 3, 3, 2)))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(mode="bicubic", size=3), r"mode must be one of \('nearest', 'bilinear'\), got 'bicubic'"),
        (dict(mode="bilinear"), r"exactly one of 'size' and 'scale_factor'"),
        (dict(size=3, scale_factor=2), r"exactly one of 'size' and 'scale_factor'"),
        (dict(size=3, mode="bilinear", align_corners=True), r"align_corners=True is not supported"),
        (dict(size=3, align_corners=False), r"align_corners option can only be set with the interpolating mode"),
    ],
)
def test_bad_arguments_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        nn.Upsample(**kw)


def test_repr():
    assert repr(nn.Upsample(scale_factor=2)) == "Upsample(scale_factor=2, mode='nearest')"
