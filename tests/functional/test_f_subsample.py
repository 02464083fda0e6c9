"""GSA's sub-sampling functions: strided conv (timm), average pooling, depthwise-separable."""

import numpy as np
import pytest

import twins_np
import twins_np.functional as F
from twins_np.analysis import count_flops, count_params
from twins_np.gradcheck import TOLERANCES, check_backward
from twins_np.nn import GlobalSubSampleAttn


def _rel(a, b):
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-300))


def test_avg_pool_matches_loop_and_floors():
    x = np.random.default_rng(0).standard_normal((2, 7, 9, 3))
    out, cache = F.avg_pool_forward(x, 2)
    ref = np.zeros((2, 3, 4, 3))
    for i in range(3):
        for j in range(4):
            ref[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(1, 2))
    assert _rel(out, ref) < 1e-14
    dx = F.avg_pool_backward(np.ones_like(out), cache)
    assert np.all(dx[:, 6, :] == 0) and np.all(dx[:, :, 8] == 0)  # floor-dropped pixels
    assert np.allclose(dx[:, :6, :8], 0.25)


def test_depthwise_patch_conv_matches_loop():
    r = np.random.default_rng(1)
    x, w, b = r.standard_normal((2, 7, 9, 3)), r.standard_normal((3, 1, 3, 3)), r.standard_normal(3)
    out, _ = F.depthwise_patch_conv_forward(x, w, b)
    ref = np.zeros((2, 2, 3, 3))
    for i in range(2):
        for j in range(3):
            for c in range(3):
                ref[:, i, j, c] = (x[:, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3, c] * w[c, 0]).sum(axis=(1, 2)) + b[c]
    assert _rel(out, ref) < 1e-14


@pytest.mark.parametrize("mode", ["avg", "sep", "conv"])
def test_subsample_gradcheck(mode):
    r = np.random.default_rng(2)
    C, sr = 4, 2
    params = {
        "conv": {"sr_w": r.standard_normal((C, C, sr, sr)), "sr_b": r.standard_normal(C)},
        "avg": {},
        "sep": {"dw_w": r.standard_normal((C, 1, sr, sr)), "dw_b": r.standard_normal(C),
                "pw_w": r.standard_normal((C, C)), "pw_b": r.standard_normal(C)},
    }[mode]  # fmt: skip
    names = list(params)
    assert tuple(names) == F.SUBSAMPLE_PARAMS[mode]  # the order the functions take them

    def fwd(x, *ps):
        return F.subsample_forward(x, mode, sr, ps)

    def bwd(d, cache):
        dx, g = F.subsample_backward(d, cache)
        return [dx, *g]

    rows = check_backward(fwd, bwd, [r.standard_normal((2, 5, 7, C)), *params.values()], names=["x", *names])
    assert all(row.passed(TOLERANCES["gradcheck_rel"]) for row in rows)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_new_ops_keep_dtype(dtype):
    x = np.ones((1, 4, 4, 2), dtype=dtype)
    out, c = F.avg_pool_forward(x, 2)
    assert out.dtype == dtype and F.avg_pool_backward(out, c).dtype == dtype
    out, c = F.depthwise_patch_conv_forward(x, np.ones((2, 1, 2, 2), dtype), np.zeros(2, dtype))
    assert out.dtype == dtype and all(g.dtype == dtype for g in F.depthwise_patch_conv_backward(out, c))


def test_bad_mode_and_window():
    x = np.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="sub-sampling mode"):
        F.subsample_forward(x, "max", 2, ())
    with pytest.raises(ValueError, match="no larger than"):
        F.avg_pool_forward(x, 5)
    with pytest.raises(ValueError, match="sr_mode"):
        GlobalSubSampleAttn(8, 2, sr_ratio=2, sr_mode="max")


def test_modes_parameters_and_flops():
    conv, avg, sep = (GlobalSubSampleAttn(16, 2, sr_ratio=4, sr_mode=m, rng=0) for m in ("conv", "avg", "sep"))
    assert {n for n, _ in avg.named_parameters()} == {"q.weight", "q.bias", "kv.weight", "kv.bias", "proj.weight",
                                                      "proj.bias", "norm.weight", "norm.bias"}  # fmt: skip
    assert "sr_dw.weight" in dict(sep.named_parameters()) and "sr_pw.weight" in dict(sep.named_parameters())
    assert count_params(conv) - count_params(avg) == 16 * 16 * 16 + 16
    assert count_params(sep) - count_params(avg) == 16 * 16 + 16 + 16 * 16 + 16
    # the FLOP counter knows the modes: config-based and module-based counts agree with the params
    for mode in ("avg", "sep"):
        m = twins_np.create_model("twins_pcpvt_teach32", sr_mode=mode)
        rep = count_flops(m)
        assert rep.params == count_params(m)
        assert count_flops({**m.config}).total == rep.total


@pytest.mark.parity
def test_parity_with_torch_pooling_and_depthwise_conv():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(3)
    x = r.standard_normal((2, 9, 10, 4))
    w, b = r.standard_normal((4, 1, 3, 3)), r.standard_normal(4)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    ref = torch.nn.functional.conv2d(xt, wt, bt, stride=3, groups=4)
    d = r.standard_normal(tuple(ref.shape))
    ref.backward(torch.tensor(d))
    out, cache = F.depthwise_patch_conv_forward(x, w, b)
    dx, dw, db = F.depthwise_patch_conv_backward(d.transpose(0, 2, 3, 1), cache)
    tol = TOLERANCES["parity_f64_rel"]
    assert _rel(out, ref.detach().numpy().transpose(0, 2, 3, 1)) < tol
    assert _rel(dx, xt.grad.numpy().transpose(0, 2, 3, 1)) < tol
    assert _rel(dw, wt.grad.numpy()) < tol and _rel(db, bt.grad.numpy()) < tol
    xt.grad = None
    ref = torch.nn.functional.avg_pool2d(xt, 3)
    ref.backward(torch.tensor(d))
    out, cache = F.avg_pool_forward(x, 3)
    assert _rel(out, ref.detach().numpy().transpose(0, 2, 3, 1)) < tol
    assert _rel(F.avg_pool_backward(d.transpose(0, 2, 3, 1), cache), xt.grad.numpy().transpose(0, 2, 3, 1)) < tol
