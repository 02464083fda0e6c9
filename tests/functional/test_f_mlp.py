"""Tests of twins_np.functional.mlp: the FFN fc1 -> exact GELU -> fc2."""

from __future__ import annotations

import math

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.gradcheck import TOLERANCES, check_backward

NAMES = ["x", "fc1_w", "fc1_b", "fc2_w", "fc2_b"]


def make_args(seed: int, lead: tuple[int, ...] = (2, 3), C: int = 4, ratio: int = 2):
    r = np.random.default_rng(seed)
    hidden = ratio * C
    return (
        r.standard_normal((*lead, C)),
        r.standard_normal((hidden, C)) / math.sqrt(C),
        0.5 * r.standard_normal(hidden),
        r.standard_normal((C, hidden)) / math.sqrt(hidden),
        0.5 * r.standard_normal(C),
    )


def mlp_loop(x, fc1_w, fc1_b, fc2_w, fc2_b):
    """Token by token, unit by unit: h = fc1 x, a = h Phi(h), out = fc2 a."""
    x2 = x.reshape(-1, x.shape[-1])
    out = np.zeros((x2.shape[0], fc2_w.shape[0]))
    for n in range(x2.shape[0]):
        a = []
        for j in range(fc1_w.shape[0]):
            h = fc1_b[j] + sum(fc1_w[j, i] * x2[n, i] for i in range(x2.shape[1]))
            a.append(h * 0.5 * (1.0 + math.erf(h / math.sqrt(2.0))))
        for o in range(fc2_w.shape[0]):
            out[n, o] = fc2_b[o] + sum(fc2_w[o, j] * a[j] for j in range(len(a)))
    return out.reshape(*x.shape[:-1], fc2_w.shape[0])


@pytest.mark.parametrize("lead", [(5,), (2, 3)])
def test_forward_matches_loop(xp, lead):
    args = make_args(1, lead)
    out, cache = F.mlp_forward(*(xp.asarray(a) for a in args))
    assert cache._fields == ("fc1", "act", "fc2")
    assert rel_err(out, mlp_loop(*args)) < TOLERANCES["parity_f64_rel"]


@pytest.mark.parametrize("ratio", [1, 4])
def test_gradcheck(xp, ratio):
    device = "cpu" if xp is np else "gpu"
    rows = check_backward(F.mlp_forward, F.mlp_backward, list(make_args(2, (2, 3), 4, ratio)), names=NAMES, device=device)
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(xp, dtype):
    args = [xp.asarray(a.astype(dtype)) for a in make_args(3)]
    out, cache = F.mlp_forward(*args)
    assert out.dtype == dtype
    grads = F.mlp_backward(xp.asarray(np.ones(out.shape, dtype=dtype)), cache)
    assert len(grads) == 5
    for g, a in zip(grads, args):
        assert g.dtype == dtype and g.shape == a.shape


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
def test_parity_with_timm_mlp(dtype, tol):
    torch = pytest.importorskip("torch")
    layers = pytest.importorskip("timm.layers")
    args = [a.astype(dtype) for a in make_args(4, (2, 49), 16, 4)]
    out, cache = F.mlp_forward(*args)
    dout = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
    grads = F.mlp_backward(dout, cache)

    m = layers.Mlp(16, 64).to(torch.from_numpy(args[0]).dtype)  # act_layer nn.GELU: exact erf form
    m.load_state_dict({k: torch.from_numpy(v) for k, v in zip(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], args[1:])})
    tx = torch.tensor(args[0], requires_grad=True)
    tout = m(tx)
    tout.backward(torch.tensor(dout))
    t_grads = [tx.grad, m.fc1.weight.grad, m.fc1.bias.grad, m.fc2.weight.grad, m.fc2.bias.grad]
    t_grads = [g.numpy() for g in t_grads]
    scale = max(float(np.abs(g).max()) for g in t_grads)
    assert rel_err(out, tout.detach().numpy()) < TOLERANCES[tol]
    for name, mine, ref in zip(NAMES, grads, t_grads):
        assert rel_err(mine, ref, scale) < TOLERANCES[tol], name


def test_hidden_size_mismatch_raises():
    x, fc1_w, fc1_b, fc2_w, fc2_b = make_args(6)
    with pytest.raises(ValueError, match="input features"):
        F.mlp_forward(x, fc1_w, fc1_b, fc2_w[:, :-1], fc2_b)


def test_input_size_mismatch_raises():
    x, *params = make_args(7)
    with pytest.raises(ValueError, match="input features"):
        F.mlp_forward(x[..., :3], *params)


def test_mixed_precision_raises():
    x, *params = make_args(8)
    with pytest.raises(TypeError, match="is float64 but 'x' is float32"):
        F.mlp_forward(x.astype(np.float32), *params)
