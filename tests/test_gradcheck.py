"""Tests of twins_np.gradcheck: the checker passes correct backwards and, above all, fails wrong ones."""

from __future__ import annotations

import re

import numpy as np
import pytest

from twins_np import functional as F
from twins_np.backend import cupy_available
from twins_np.gradcheck import TOLERANCES, GradCheckResult, check_backward, check_module, format_table, numerical_grad

MODES = ["full", "sampled", "directional"]


def logits(seed: int = 0, shape: tuple[int, ...] = (3, 5)) -> np.ndarray:
    return 2.0 * np.random.default_rng(seed).standard_normal(shape)


def ln_args(seed: int = 0):
    r = np.random.default_rng(seed)
    return [r.standard_normal((3, 6)), 1.0 + 0.5 * r.standard_normal(6), r.standard_normal(6)]


# --- wrong backwards a student might write ---------------------------------------


def softmax_backward_missing_term(dout, cache):
    """Forgets the - y * sum(dout * y) term: only the diagonal of the Jacobian."""
    return dout * cache.y


def softmax_backward_mean_instead_of_sum(dout, cache):
    """dx = y*dout - y*mean(dout): right when dout is constant along the axis, wrong otherwise."""
    y = cache.y
    return y * dout - y * dout.mean(axis=cache.axis, keepdims=True)


def layernorm_backward_missing_mean_term(dout, cache):
    """Drops the path through the mean: dx = inv_std * (g - xhat * mean(g * xhat))."""
    xhat, inv_std, gamma = cache
    g = dout * gamma
    dx = inv_std * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    _, dgamma, dbeta = F.layernorm_backward(dout, cache)
    return dx, dgamma, dbeta


# --- the tolerance table ------------------------------------------------------------


def test_tolerance_table():
    assert TOLERANCES["gradcheck_rel"] == 1e-6
    assert TOLERANCES["parity_f64_rel"] == 1e-10
    assert TOLERANCES["parity_model_f64_rel"] == 1e-9
    assert TOLERANCES["parity_f32_rel"] == 1e-4
    assert all(isinstance(v, float) and 0.0 < v < 1.0 for v in TOLERANCES.values())


# --- numerical_grad ----------------------------------------------------------------


def test_numerical_grad_of_a_cubic():
    x = np.random.default_rng(1).standard_normal((3, 4))
    x0 = x.copy()
    g = numerical_grad(lambda: float(np.sum(x**3)), x)
    np.testing.assert_array_equal(x, x0)  # perturbed in place, then restored
    assert np.max(np.abs(g - 3.0 * x0**2)) < 1e-8


def test_numerical_grad_only_at_indices():
    x = np.random.default_rng(2).standard_normal(5)
    g = numerical_grad(lambda: float(np.sum(np.sin(x))), x, indices=[(1,), (3,)])
    assert np.isnan(g[[0, 2, 4]]).all()
    np.testing.assert_allclose(g[[1, 3]], np.cos(x[[1, 3]]), rtol=1e-8)


def test_numerical_grad_refuses_float32():
    x = np.ones(3, dtype=np.float32)
    with pytest.raises(TypeError, match="needs a float64 array, got float32"):
        numerical_grad(lambda: float(x.sum()), x)


# --- correct backwards pass in every mode ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_correct_softmax_passes(mode):
    x = logits(3, (4, 6))
    rows = check_backward(F.softmax_forward, F.softmax_backward, [x], names=["x"], mode=mode, n_samples=7)
    (row,) = rows
    assert isinstance(row, GradCheckResult)
    assert row.name == "x" and row.shape == (4, 6)
    assert row.checked == {"full": 24, "sampled": 7, "directional": 1}[mode]
    assert row.max_rel_err < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("mode", MODES)
def test_correct_layernorm_passes(mode):
    rows = check_backward(F.layernorm_forward, F.layernorm_backward, ln_args(4), names=["x", "gamma", "beta"], mode=mode)
    assert [r.name for r in rows] == ["x", "gamma", "beta"]
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


def test_float32_inputs_are_checked_in_float64():
    """The checker copies float32 inputs to float64 itself; the caller's arrays stay float32 and intact."""
    x = logits(5).astype(np.float32)
    x0 = x.copy()
    rows = check_backward(F.softmax_forward, F.softmax_backward, [x])
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, x0)


def test_non_array_arguments_pass_through_and_wrt_defaults_to_float_arrays():
    """Sizes, head counts and integer label arrays are passed unchanged; only float arrays are checked."""
    labels = np.array([1, 0, 4])
    rows = check_backward(
        lambda z, y, eps: F.cross_entropy_forward(z, y, eps),
        lambda d, c: F.cross_entropy_backward(float(d), c),
        [logits(6), labels, 0.1],
    )
    assert [r.name for r in rows] == ["arg0"]
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


def test_grouped_and_none_gradients_follow_the_backward_contract():
    """Nested tuples (a parameter group, as GSA's sr_params) are flattened and None entries
    (arguments passed as None) dropped, so the gradients line up with the array arguments."""

    def fwd(x, y, z):
        return x * y + z, (x, y)

    def bwd(dout, cache):
        x, y = cache
        return dout * y, (dout * x, dout), None

    r = np.random.default_rng(7)
    args = [r.standard_normal(4), r.standard_normal(4), r.standard_normal(4)]
    rows = check_backward(fwd, bwd, args, names=["x", "y", "z"])
    assert [row.name for row in rows] == ["x", "y", "z"]
    assert max(row.max_rel_err for row in rows) < TOLERANCES["gradcheck_rel"]

    def bwd_swapped(dout, cache):  # y's and z's gradients in the wrong order: the check must fail
        x, y = cache
        return dout * y, (dout, dout * x), None

    with pytest.raises(AssertionError, match="gradient check failed"):
        check_backward(fwd, bwd_swapped, args, names=["x", "y", "z"])


# --- wrong backwards fail, with the table ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_wrong_softmax_backward_fails_with_table(mode):
    x = logits(8)
    with pytest.raises(AssertionError) as info:
        check_backward(F.softmax_forward, softmax_backward_missing_term, [x], names=["logits"], mode=mode, seed=3)
    msg = str(info.value)
    assert msg.startswith("gradient check failed")
    header = msg.splitlines()[1]
    for column in ("input", "shape", "max abs err", "max rel err", "worst index", "numeric", "analytic"):
        assert column in header
    row = next(line for line in msg.splitlines() if line.startswith("logits"))
    assert "(3, 5)" in row and row.rstrip().endswith("NO")
    if mode != "directional":
        assert re.search(r"\(\d, \d\)\s+-?\d\.\d+e[+-]\d+\s+-?\d\.\d+e[+-]\d+", row), "worst index, numeric, analytic"
    assert "seed = 3" in msg
    assert f"max rel err < {TOLERANCES['gradcheck_rel']:g}" in msg


def test_wrong_layernorm_backward_fails_only_on_x():
    with pytest.raises(AssertionError) as info:
        check_backward(F.layernorm_forward, layernorm_backward_missing_mean_term, ln_args(9), names=["x", "gamma", "beta"])
    lines = {line.split()[0]: line for line in str(info.value).splitlines()[2:] if line and not line.startswith("tolerance")}
    assert lines["x"].rstrip().endswith("NO")
    assert lines["gamma"].rstrip().endswith("yes") and lines["beta"].rstrip().endswith("yes")


def test_mean_instead_of_sum_passes_with_ones_and_fails_with_random_dout():
    """The classic trap: with dout = ones both terms vanish, so a wrong softmax backward looks right.

    With ones, the wrong backward equals the right one (both are ~0) and both agree with the finite
    differences to rounding noise, so no check can tell them apart; the checker's default random dout
    fails the wrong one and passes the right one.
    """
    x = logits(10, (4, 6))
    ones = np.ones((4, 6))
    y, cache = F.softmax_forward(x)
    wrong, right = softmax_backward_mean_instead_of_sum(ones, cache), F.softmax_backward(ones, cache)
    assert np.max(np.abs(wrong - right)) < 1e-15
    num = numerical_grad(lambda: float(np.sum(F.softmax_forward(x)[0] * ones)), x)
    assert np.max(np.abs(num - wrong)) < 1e-8  # at the finite-difference noise level

    with pytest.raises(AssertionError, match="gradient check failed"):
        check_backward(F.softmax_forward, softmax_backward_mean_instead_of_sum, [x])  # default: random dout
    rows = check_backward(F.softmax_forward, F.softmax_backward, [x])
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


def test_layernorm_dx_vanishes_with_ones_and_unit_gamma():
    """With dout = ones and gamma = 1 the true dx is 0: a backward returning dx = 0 is indistinguishable there."""
    x, _, beta = ln_args(11)
    gamma = np.ones(6)
    _, cache = F.layernorm_forward(x, gamma, beta)
    dx, _, _ = F.layernorm_backward(np.ones((3, 6)), cache)
    assert np.max(np.abs(dx)) < 1e-14

    def zero_dx(d, c):
        return (0.0 * d, *F.layernorm_backward(d, c)[1:])

    with pytest.raises(AssertionError) as info:
        check_backward(F.layernorm_forward, zero_dx, [x, gamma, beta], names=["x", "gamma", "beta"])
    assert next(line for line in str(info.value).splitlines() if line.startswith("x ")).rstrip().endswith("NO")


def test_wrong_gradient_shape_fails():
    with pytest.raises(AssertionError, match=r"gradient of 'x' has shape \(5, 3\), input has \(3, 5\)"):
        check_backward(F.softmax_forward, lambda d, c: F.softmax_backward(d, c).T, [logits(12)], names=["x"])


def test_forward_that_mutates_its_input_is_caught():
    """An in-place ReLU: idempotent, so two calls agree, but the caller's x has lost its negative entries."""

    def fwd(x):
        np.maximum(x, 0.0, out=x)
        return x.copy(), x > 0.0

    with pytest.raises(AssertionError, match="modified input 0 in place"):
        check_backward(fwd, lambda d, mask: d * mask, [logits(13)])


def test_backward_that_mutates_an_input_is_caught():
    def bwd(dout, cache):
        grads = F.linear_backward(dout, cache)
        cache.x[...] = 0.0
        return grads

    r = np.random.default_rng(14)
    with pytest.raises(AssertionError, match="modified input 0 in place"):
        check_backward(F.linear_forward, bwd, [r.standard_normal((2, 3)), r.standard_normal((4, 3)), r.standard_normal(4)])


def test_nondeterministic_forward_is_caught():
    noise = np.random.default_rng(15)

    def fwd(x):
        return x * (1.0 + 1e-3 * noise.random()), None

    with pytest.raises(AssertionError, match="forward is not deterministic"):
        check_backward(fwd, lambda d, c: d, [logits(16)])


# --- argument errors ---------------------------------------------------------------


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="mode must be 'full', 'sampled' or 'directional'"):
        check_backward(F.softmax_forward, F.softmax_backward, [logits(17)], mode="random")


def test_names_count_mismatch_raises():
    with pytest.raises(ValueError, match="2 names for 1 checked inputs"):
        check_backward(F.softmax_forward, F.softmax_backward, [logits(18)], names=["x", "y"])


def test_too_few_gradients_raises():
    r = np.random.default_rng(19)
    with pytest.raises(ValueError, match="backward returned 1 gradients for 3 checked inputs"):
        check_backward(
            F.linear_forward,
            lambda d, c: F.linear_backward(d, c)[0],
            [r.standard_normal((2, 3)), r.standard_normal((4, 3)), r.standard_normal(4)],
        )


def test_sampled_mode_is_seeded():
    x = logits(20, (6, 7))
    a = check_backward(F.softmax_forward, F.softmax_backward, [x], mode="sampled", n_samples=5, seed=4)
    b = check_backward(F.softmax_forward, F.softmax_backward, [x], mode="sampled", n_samples=5, seed=4)
    assert a == b


# --- check_module ------------------------------------------------------------------


def _linear_module():
    from twins_np.nn import Linear

    m = Linear(4, 3, rng=0)
    m.bias.data = np.random.default_rng(21).standard_normal(3).astype(np.float32)
    return m


def test_check_module_passes_a_correct_module():
    m = _linear_module()
    rows = check_module(m, np.random.default_rng(22).standard_normal((2, 5, 4)), mode="full")
    assert [r.name for r in rows] == ["x", "weight", "bias"]
    assert m.weight.data.dtype == np.float64  # cast in place, as documented
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("mode", MODES)
def test_check_module_catches_a_wrong_parameter_gradient(mode):
    m = _linear_module()
    real_backward = m.backward

    def backward(dout):
        dx = real_backward(dout)
        m.weight.grad = 2.0 * m.weight.grad  # a doubled dW, dx still right
        return dx

    m.backward = backward
    with pytest.raises(AssertionError) as info:
        check_module(m, np.random.default_rng(23).standard_normal((2, 5, 4)), mode=mode)
    rows = {line.split()[0]: line for line in str(info.value).splitlines()[2:] if line and not line.startswith("tolerance")}
    assert rows["weight"].rstrip().endswith("NO")
    assert rows["x"].rstrip().endswith("yes")


def test_format_table_marks_rows():
    rows = [
        GradCheckResult("good", (2, 3), 1e-12, 1e-10, (0, 1), 0.5, 0.5, 6),
        GradCheckResult("bad", (4,), 0.1, 0.2, (3,), 0.5, 0.4, 4),
    ]
    table = format_table(rows, 1e-6, seed=9)
    lines = table.splitlines()
    assert lines[2].startswith("good") and lines[2].endswith("yes")
    assert lines[3].startswith("bad") and lines[3].endswith("NO")
    assert lines[-1] == "tolerance: max rel err < 1e-06; seed = 9"


@pytest.mark.gpu
def test_analytic_side_on_gpu():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    rows = check_backward(F.layernorm_forward, F.layernorm_backward, ln_args(24), device="gpu")
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]
    with pytest.raises(AssertionError, match="gradient check failed"):
        check_backward(F.softmax_forward, softmax_backward_missing_term, [logits(25)], device="gpu")


def test_zero_gradient_passes_only_within_the_resolution():
    """A gradient that is exactly zero passes as "zero to resolution"; a small wrong one does not."""
    import numpy as np

    from twins_np.functional import softmax_backward, softmax_forward
    from twins_np.gradcheck import TOLERANCES, check_backward

    x = np.random.default_rng(0).standard_normal((3, 4))
    rows = check_backward(softmax_forward, softmax_backward, [x], dout=np.ones((3, 4)))  # true gradient: 0
    assert rows[0].zero and rows[0].passed(TOLERANCES["gradcheck_rel"])
    assert rows[0].max_abs_err <= rows[0].resolution
    # an analytic gradient of 1e-4 where the truth is 0 is far above the resolution: it must fail
    with pytest.raises(AssertionError, match="NO"):
        check_backward(softmax_forward, lambda d, c: softmax_backward(d, c) + 1e-4, [x], dout=np.ones((3, 4)))
