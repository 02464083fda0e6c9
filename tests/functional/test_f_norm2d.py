"""Tests of twins_np.functional.norm2d: GroupNorm and BatchNorm on channels-last maps.

References: per-group / per-channel loops, finite differences, and
``torch.nn.functional.group_norm`` / ``batch_norm`` on the NCHW permutation (both modes of
BatchNorm, the running statistics included). Odd shapes and odd channel counts throughout;
inputs are offset from zero so that a missing mean subtraction shows.
"""

from __future__ import annotations

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.gradcheck import TOLERANCES, check_backward


def norm_args(seed: int, shape: tuple[int, ...], shift: float = 2.0):
    r = np.random.default_rng(seed)
    C = shape[-1]
    return shift + 1.5 * r.standard_normal(shape), 1.0 + 0.5 * r.standard_normal(C), r.standard_normal(C)


def group_norm_loop(x, gamma, beta, G, eps):
    B, C = x.shape[0], x.shape[-1]
    out = np.empty_like(x)
    Cg = C // G
    for b in range(B):
        for g in range(G):
            sel = x[b, ..., g * Cg : (g + 1) * Cg]
            mu, var = sel.mean(), sel.var()
            out[b, ..., g * Cg : (g + 1) * Cg] = (sel - mu) / np.sqrt(var + eps)
    return out * gamma + beta


def batch_norm_loop(x, gamma, beta, mean, var, eps):
    out = np.empty_like(x)
    for c in range(x.shape[-1]):
        out[..., c] = (x[..., c] - mean[c]) / np.sqrt(var[c] + eps) * gamma[c] + beta[c]
    return out


# --- GroupNorm ----------------------------------------------------------------------------

GN_CASES = [  # (shape, G)
    pytest.param((2, 7, 11, 9), 3, id="7x11-C9-G3"),
    pytest.param((2, 13, 5, 6), 1, id="13x5-G1-like-LayerNorm-over-the-map"),
    pytest.param((1, 5, 3, 5), 5, id="G=C-like-InstanceNorm"),
    pytest.param((3, 4, 6), 2, id="tokens-B-N-C"),
]


@pytest.mark.parametrize("shape,G", GN_CASES)
def test_group_norm_matches_loop(xp, shape, G):
    x, g, b = norm_args(1, shape)
    out, _ = F.group_norm_forward(xp.asarray(x), xp.asarray(g), xp.asarray(b), G, 1e-5)
    assert rel_err(out, group_norm_loop(x, g, b, G, 1e-5)) < TOLERANCES["parity_f64_rel"]


@pytest.mark.parametrize("shape,G", GN_CASES)
def test_group_norm_gradcheck(xp, shape, G):
    device = "cpu" if xp is np else "gpu"
    rows = check_backward(
        lambda x, g, b: F.group_norm_forward(x, g, b, G, 1e-5),
        F.group_norm_backward,
        list(norm_args(2, shape)),
        names=["x", "gamma", "beta"],
        device=device,
    )
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_group_norm_without_affine_gradcheck():
    x, _, _ = norm_args(3, (2, 5, 3, 6))
    out, _ = F.group_norm_forward(x, None, None, 2)
    assert rel_err(out, group_norm_loop(x, np.ones(6), np.zeros(6), 2, 1e-5)) < TOLERANCES["parity_f64_rel"]
    rows = check_backward(lambda x: F.group_norm_forward(x, None, None, 2), lambda d, c: F.group_norm_backward(d, c)[0], [x])
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


def test_group_norm_is_per_image():
    """Changing one image of the batch leaves the other's output unchanged (unlike BatchNorm)."""
    x, g, b = norm_args(4, (2, 5, 3, 6))
    out, _ = F.group_norm_forward(x, g, b, 3)
    x2 = x.copy()
    x2[1] *= 7.0
    out2, _ = F.group_norm_forward(x2, g, b, 3)
    np.testing.assert_array_equal(out2[0], out[0])


def _invariance_errors(dx, x, axes):
    """Relative sizes of sum_S dx and sum_S dx * x over each set S (the axes): both vanish when the
    output does not change as a constant is added to a set or (eps = 0) the set is scaled."""
    shift = np.abs(dx.sum(axis=axes)).max() / np.abs(dx).sum(axis=axes).max()
    scale = np.abs((dx * x).sum(axis=axes)).max() / np.abs(dx * x).sum(axis=axes).max()
    return shift, scale


@pytest.mark.parametrize("shape,G", GN_CASES)
def test_group_norm_backward_respects_the_invariances(shape, G):
    """A check of the backward without a reference gradient. GroupNorm's output (eps = 0) does
    not change when a constant is added to one image's group, or the group is scaled: so dx sums
    to zero over each group and is orthogonal to x there. And d beta_c, d gamma_c are sums of
    dout, dout * xhat over the channel (xhat read back from the output)."""
    x, g, b = norm_args(18, shape)
    B, C = shape[0], shape[-1]
    out, cache = F.group_norm_forward(x, g, b, G, 0.0)
    dout = np.random.default_rng(19).standard_normal(out.shape)
    dx, dg, db = F.group_norm_backward(dout, cache)
    assert dx.shape == x.shape and dg.shape == db.shape == (C,)
    grouped = (B, -1, G, C // G)
    assert max(_invariance_errors(dx.reshape(grouped), x.reshape(grouped), (1, 3))) < 1e-13
    assert np.abs(dx).max() > 0.1  # not trivially zero
    assert rel_err(db, dout.reshape(-1, C).sum(axis=0)) < 1e-14
    assert rel_err(dg, (dout * (out - b) / g).reshape(-1, C).sum(axis=0)) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_norm_dtype_preserved(xp, dtype):
    x, g, b = (xp.asarray(a.astype(dtype)) for a in norm_args(5, (2, 7, 5, 9)))
    out, cache = F.group_norm_forward(x, g, b, 3)
    assert out.dtype == dtype
    for grad, a in zip(F.group_norm_backward(xp.asarray(np.ones(out.shape, dtype=dtype)), cache), (x, g, b)):
        assert grad.dtype == dtype and grad.shape == a.shape


@pytest.mark.parity
@pytest.mark.parametrize("shape,G", GN_CASES[:3])
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")], ids=["f64", "f32"])
def test_group_norm_parity_with_torch(shape, G, dtype, tol):
    torch = pytest.importorskip("torch")
    x, g, b = (a.astype(dtype) for a in norm_args(6, shape))
    out, cache = F.group_norm_forward(x, g, b, G, 1e-5)
    dout = np.random.default_rng(7).standard_normal(out.shape).astype(dtype)
    dx, dg, db = F.group_norm_backward(dout, cache)
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, g, b))
    tout = torch.nn.functional.group_norm(tx.permute(0, 3, 1, 2), G, tg, tb, 1e-5).permute(0, 2, 3, 1)
    tout.backward(torch.tensor(dout))
    for mine, ref in [(out, tout), (dx, tx.grad), (dg, tg.grad), (db, tb.grad)]:
        assert rel_err(mine, ref.detach().numpy()) < TOLERANCES[tol]


@pytest.mark.parametrize(
    ("shape", "G", "match"),
    [
        ((2, 3, 3, 6), 4, r"num_groups = 4 does not divide the C = 6 channels"),
        ((2, 3, 3, 6), 0, r"num_groups must be a positive integer, got 0"),
        ((6,), 2, r"'x' must have shape \(B, ..., C\)"),
    ],
    ids=["groups-do-not-divide", "zero-groups", "1-D"],
)
def test_group_norm_bad_input(shape, G, match):
    with pytest.raises(ValueError, match=match):
        F.group_norm_forward(np.ones(shape), None, None, G)


def test_group_norm_bad_gamma():
    x, g, b = norm_args(8, (1, 3, 3, 6))
    with pytest.raises(ValueError, match=r"'gamma' must have shape \(6,\) for C = 6 channels, got \(5,\)"):
        F.group_norm_forward(x, g[:5], b, 3)


# --- BatchNorm ----------------------------------------------------------------------------

BN_SHAPES = [pytest.param((2, 7, 11, 5), id="7x11-C5"), pytest.param((3, 13, 5, 3), id="13x5-C3")]


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_train_matches_loop_and_updates_running_stats(xp, shape):
    x, g, b = norm_args(9, shape)
    C = shape[-1]
    rm, rv = np.linspace(-1.0, 1.0, C), np.linspace(0.5, 2.0, C)
    rm_d, rv_d = xp.array(rm), xp.array(rv)  # copies: the op updates them in place
    out, _ = F.batch_norm_forward(xp.asarray(x), xp.asarray(g), xp.asarray(b), rm_d, rv_d, True, 0.1, 1e-5)
    x2 = x.reshape(-1, C)
    mean, var = x2.mean(axis=0), x2.var(axis=0)
    assert rel_err(out, batch_norm_loop(x, g, b, mean, var, 1e-5)) < TOLERANCES["parity_f64_rel"]
    # updated in place: momentum 0.1, the unbiased variance
    assert rel_err(rm_d, 0.9 * rm + 0.1 * mean) < TOLERANCES["parity_f64_rel"]
    assert rel_err(rv_d, 0.9 * rv + 0.1 * x2.var(axis=0, ddof=1)) < TOLERANCES["parity_f64_rel"]


def test_batch_norm_eval_uses_running_stats_and_leaves_them():
    x, g, b = norm_args(10, (2, 7, 11, 5))
    rm, rv = np.linspace(-1.0, 1.0, 5), np.linspace(0.5, 2.0, 5)
    rm0, rv0 = rm.copy(), rv.copy()
    out, _ = F.batch_norm_forward(x, g, b, rm, rv, False)
    assert rel_err(out, batch_norm_loop(x, g, b, rm0, rv0, 1e-5)) < TOLERANCES["parity_f64_rel"]
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


def test_batch_norm_without_running_stats_uses_the_batch_in_both_modes():
    x, g, b = norm_args(11, (2, 3, 5, 3))
    out_t, _ = F.batch_norm_forward(x, g, b, None, None, True)
    out_e, _ = F.batch_norm_forward(x, g, b, None, None, False)
    np.testing.assert_array_equal(out_t, out_e)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_gradcheck(xp, shape, training):
    """The running statistics are built with x's array module inside the closure (NumPy or CuPy)."""
    from twins_np.backend import get_xp

    device = "cpu" if xp is np else "gpu"
    C = shape[-1]

    def fwd(x, g, b):
        m = get_xp(x)
        rm, rv = m.linspace(-1.0, 1.0, C), m.linspace(0.5, 2.0, C)
        return F.batch_norm_forward(x, g, b, rm, rv, training, 0.1, 1e-5)

    rows = check_backward(fwd, F.batch_norm_backward, list(norm_args(12, shape)), names=["x", "gamma", "beta"], device=device)
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_train_backward_respects_the_invariances(shape):
    """As for GroupNorm, with S = one channel over the batch and the map."""
    x, g, b = norm_args(20, shape)
    C = shape[-1]
    out, cache = F.batch_norm_forward(x, g, b, None, None, True, 0.1, 0.0)
    dout = np.random.default_rng(21).standard_normal(out.shape)
    dx, dg, db = F.batch_norm_backward(dout, cache)
    assert max(_invariance_errors(dx.reshape(-1, C), x.reshape(-1, C), (0,))) < 1e-13
    assert np.abs(dx).max() > 0.1
    assert rel_err(db, dout.reshape(-1, C).sum(axis=0)) < 1e-14
    assert rel_err(dg, (dout * (out - b) / g).reshape(-1, C).sum(axis=0)) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_dtype_preserved(xp, dtype, training):
    x, g, b = (xp.asarray(a.astype(dtype)) for a in norm_args(13, (2, 7, 5, 3)))
    rm, rv = xp.zeros(3, dtype=dtype), xp.ones(3, dtype=dtype)
    out, cache = F.batch_norm_forward(x, g, b, rm, rv, training, np.float64(0.1), np.float64(1e-5))
    assert out.dtype == rm.dtype == rv.dtype == dtype
    for grad, a in zip(F.batch_norm_backward(xp.asarray(np.ones(out.shape, dtype=dtype)), cache), (x, g, b)):
        assert grad.dtype == dtype and grad.shape == a.shape


@pytest.mark.parity
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")], ids=["f64", "f32"])
def test_batch_norm_parity_with_torch_train_then_eval(shape, dtype, tol):
    """Three training steps (outputs, every gradient, the running statistics), then evaluation."""
    torch = pytest.importorskip("torch")
    C = shape[-1]
    _, g, b = (a.astype(dtype) for a in norm_args(14, shape))
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    trm, trv = (
        torch.zeros(C, dtype=torch.float64 if dtype == np.float64 else torch.float32),
        torch.ones(C, dtype=torch.float64 if dtype == np.float64 else torch.float32),
    )
    rng = np.random.default_rng(15)
    for training in (True, True, True, False):
        x = (1.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
        out, cache = F.batch_norm_forward(x, g, b, rm, rv, training, 0.1, 1e-5)
        dout = rng.standard_normal(out.shape).astype(dtype)
        dx, dg, db = F.batch_norm_backward(dout, cache)
        tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, g, b))
        tout = torch.nn.functional.batch_norm(tx.permute(0, 3, 1, 2), trm, trv, tg, tb, training, 0.1, 1e-5)
        tout = tout.permute(0, 2, 3, 1)
        tout.backward(torch.tensor(dout))
        for mine, ref in [(out, tout), (dx, tx.grad), (dg, tg.grad), (db, tb.grad), (rm, trm), (rv, trv)]:
            assert rel_err(mine, ref.detach().numpy()) < TOLERANCES[tol]


def test_batch_norm_bad_input():
    x, g, b = norm_args(16, (1, 1, 1, 3))
    with pytest.raises(ValueError, match=r"training needs more than one value per channel, got x of shape \(1, 1, 1, 3\)"):
        F.batch_norm_forward(x, g, b, np.zeros(3), np.ones(3), True)
    F.batch_norm_forward(x, g, b, np.zeros(3), np.ones(3), False)  # evaluation is fine
    x, g, b = norm_args(17, (2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"'running_mean' must have shape \(3,\) for C = 3 channels, got \(4,\)"):
        F.batch_norm_forward(x, g, b, np.zeros(4), np.ones(4), True)
    with pytest.raises(ValueError, match=r"give both running_mean and running_var, or neither"):
        F.batch_norm_forward(x, g, b, np.zeros(3), None, True)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        F.batch_norm_forward(x, g, b, np.zeros(3), np.ones(3), True, momentum=1.5)
    with pytest.raises(ValueError, match=r"'x' must have shape \(B, H, W, C\) \(4-D\)"):
        F.batch_norm_forward(x[0], g, b, None, None, True)
    with pytest.raises(TypeError, match=r"'running_mean' is float32 but 'x' is float64"):
        F.batch_norm_forward(x, g, b, np.zeros(3, np.float32), np.ones(3, np.float32), True)
