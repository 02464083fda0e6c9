"""Tests of twins_np.functional.dropout: elementwise dropout and drop path, with explicit randomness."""

from __future__ import annotations

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.backend import asnumpy, cupy_available
from twins_np.gradcheck import TOLERANCES, check_backward


def sample(seed: int = 0, shape: tuple[int, ...] = (4, 5, 6)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


# --- dropout -----------------------------------------------------------------------


def test_dropout_with_mask_matches_loop(xp):
    x = sample(1)
    keep = 0.7
    mask = (np.random.default_rng(2).random(x.shape) < keep) / keep
    out, cache = F.dropout_forward(xp.asarray(x), 0.3, mask=xp.asarray(mask))
    expected = np.empty_like(x)
    for i in np.ndindex(*x.shape):
        expected[i] = x[i] * mask[i]
    assert rel_err(out, expected) < TOLERANCES["parity_f64_rel"]
    dout = sample(3)
    np.testing.assert_array_equal(asnumpy(F.dropout_backward(xp.asarray(dout), cache)), dout * mask)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_rng_mask_values_and_rate(p):
    x = np.abs(sample(4, (200, 100))) + 0.5  # nonzero, so zeros in the output are drops
    out, cache = F.dropout_forward(x, p, np.random.default_rng(5))
    kept = out != 0.0
    np.testing.assert_allclose(out[kept], x[kept] / (1.0 - p), rtol=1e-15)
    assert set(np.unique(cache.mask)) <= {0.0, 1.0 / (1.0 - p)}
    # 20000 Bernoulli draws: the kept fraction is within 5 standard deviations of 1 - p
    sd = np.sqrt(p * (1.0 - p) / x.size)
    assert abs(kept.mean() - (1.0 - p)) < 5.0 * sd


def test_dropout_same_seed_same_mask_and_backend_independent(xp):
    x = sample(6)
    a, _ = F.dropout_forward(xp.asarray(x), 0.5, np.random.default_rng(7))
    b, _ = F.dropout_forward(xp.asarray(x), 0.5, np.random.default_rng(7))
    c, _ = F.dropout_forward(x, 0.5, np.random.default_rng(7))
    np.testing.assert_array_equal(asnumpy(a), asnumpy(b))
    np.testing.assert_array_equal(asnumpy(a), c)  # the mask is drawn on the host
    d, _ = F.dropout_forward(x, 0.5, np.random.default_rng(8))
    assert not np.array_equal(c, d)


def test_dropout_identity_cases():
    x = sample(9)
    for kwargs in ({"p": 0.5, "training": False}, {"p": 0.0}):
        out, cache = F.dropout_forward(x, rng=np.random.default_rng(0), **kwargs)
        np.testing.assert_array_equal(out, x)
        assert cache.mask is None
        dout = sample(10)
        np.testing.assert_array_equal(F.dropout_backward(dout, cache), dout)


def test_dropout_p_one_zeroes_everything():
    out, cache = F.dropout_forward(sample(11), 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(F.dropout_backward(sample(12), cache), 0.0)


def test_dropout_gradcheck(xp):
    device = "cpu" if xp is np else "gpu"
    # a fresh generator with a fixed seed on every call: the same mask for every evaluation
    rows = check_backward(
        lambda x: F.dropout_forward(x, 0.4, np.random.default_rng(13)), F.dropout_backward, [sample(14, (3, 4))], device=device
    )
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_dtype_preserved(xp, dtype):
    x = xp.asarray(sample(15).astype(dtype))
    out, cache = F.dropout_forward(x, 0.3, np.random.default_rng(16))
    assert out.dtype == dtype and cache.mask.dtype == dtype
    assert F.dropout_backward(xp.asarray(sample(17).astype(dtype)), cache).dtype == dtype


def test_dropout_float64_mask_does_not_upcast_float32():
    """A float64 mask with float32 x must not silently give a float64 output (mixing is refused elsewhere)."""
    x = sample(18).astype(np.float32)
    mask = np.full(x.shape, 2.0)  # float64
    try:
        out, _ = F.dropout_forward(x, 0.5, mask=mask)
    except TypeError as e:
        assert "mask" in str(e)
    else:
        assert out.dtype == np.float32, f"float32 x with a float64 mask gave {out.dtype}"


@pytest.mark.parametrize("dtype", [np.int64, np.float16])
def test_dropout_non_float_input_raises(dtype):
    """Integer and float16 inputs are refused as by every other op."""
    with pytest.raises(TypeError, match="float32 or float64"):
        F.dropout_forward(np.ones((3, 4), dtype=dtype), 0.5, np.random.default_rng(0))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_bad_p_raises(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        F.dropout_forward(sample(19), p, np.random.default_rng(0))


def test_dropout_needs_rng_or_mask():
    with pytest.raises(ValueError, match="needs an rng or a mask"):
        F.dropout_forward(sample(20), 0.5)


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
def test_dropout_parity_with_torch_same_mask(dtype, tol):
    torch = pytest.importorskip("torch")
    x = sample(21, (3, 7, 8)).astype(dtype)
    dout = sample(22, x.shape).astype(dtype)
    p = 0.3
    torch.manual_seed(23)
    mask = torch.nn.functional.dropout(torch.ones(x.shape, dtype=torch.from_numpy(x).dtype), p, training=True).numpy()
    torch.manual_seed(23)
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.dropout(tx, p, training=True)
    tout.backward(torch.tensor(dout))
    # the same seed draws the same mask, so torch's output is x * mask
    np.testing.assert_array_equal(tout.detach().numpy(), x * mask)

    out, cache = F.dropout_forward(x, p, mask=mask)
    dx = F.dropout_backward(dout, cache)
    assert rel_err(out, tout.detach().numpy()) < TOLERANCES[tol]
    assert rel_err(dx, tx.grad.numpy()) < TOLERANCES[tol]


# --- drop path ---------------------------------------------------------------------


def test_drop_path_drops_whole_samples(xp):
    x = sample(24, (6, 5, 4))
    mask = np.array([2.0, 0.0, 2.0, 2.0, 0.0, 0.0])
    out, cache = F.drop_path_forward(xp.asarray(x), 0.5, mask=xp.asarray(mask))
    out = asnumpy(out)
    for b in range(6):
        np.testing.assert_array_equal(out[b], x[b] * mask[b])
    dout = sample(25, x.shape)
    dx = asnumpy(F.drop_path_backward(xp.asarray(dout), cache))
    for b in range(6):
        np.testing.assert_array_equal(dx[b], dout[b] * mask[b])


def test_drop_path_rng_mask_is_per_sample():
    x = np.abs(sample(26, (400, 3, 2))) + 0.5
    out, cache = F.drop_path_forward(x, 0.25, np.random.default_rng(27))
    kept = np.all(out != 0.0, axis=(1, 2))
    dropped = np.all(out == 0.0, axis=(1, 2))
    assert np.all(kept | dropped), "a sample is either kept whole or dropped whole"
    np.testing.assert_allclose(out[kept], x[kept] / 0.75, rtol=1e-15)
    assert cache.mask.shape == (400, 1, 1)
    assert abs(kept.mean() - 0.75) < 5.0 * np.sqrt(0.25 * 0.75 / 400)


def test_drop_path_identity_in_eval():
    x = sample(28)
    out, cache = F.drop_path_forward(x, 0.5, np.random.default_rng(0), training=False)
    np.testing.assert_array_equal(out, x)
    assert cache.mask is None


def test_drop_path_gradcheck():
    rows = check_backward(
        lambda x: F.drop_path_forward(x, 0.5, np.random.default_rng(29)), F.drop_path_backward, [sample(30, (5, 3, 2))]
    )
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_drop_path_dtype_preserved(xp, dtype):
    x = xp.asarray(sample(31).astype(dtype))
    out, cache = F.drop_path_forward(x, 0.5, np.random.default_rng(32))
    assert out.dtype == dtype
    assert F.drop_path_backward(xp.asarray(sample(33).astype(dtype)), cache).dtype == dtype


def test_drop_path_mask_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"mask must have shape \(B,\) = \(4,\)"):
        F.drop_path_forward(sample(34), 0.5, mask=np.ones(5))


def test_drop_path_needs_rng_or_mask():
    with pytest.raises(ValueError, match="needs an rng or a mask"):
        F.drop_path_forward(sample(35), 0.5)


def test_drop_path_bad_prob_raises():
    with pytest.raises(ValueError, match="drop_prob must be in"):
        F.drop_path_forward(sample(36), 1.2, np.random.default_rng(0))


@pytest.mark.parity
def test_drop_path_parity_with_timm_same_mask():
    torch = pytest.importorskip("torch")
    layers = pytest.importorskip("timm.layers")
    x = sample(37, (6, 5, 4))
    dout = sample(38, x.shape)
    torch.manual_seed(39)
    tx = torch.tensor(x, requires_grad=True)
    tout = layers.drop_path(tx, 0.4, training=True)
    tout.backward(torch.tensor(dout))
    t = tout.detach().numpy()
    # read timm's per-sample mask off its output: each sample is x / 0.6 or 0
    mask = np.array([1.0 / 0.6 if np.any(t[b] != 0.0) else 0.0 for b in range(6)])
    assert 0 < np.count_nonzero(mask) < 6, "seed chosen so that some samples are dropped and some kept"

    out, cache = F.drop_path_forward(x, 0.4, mask=mask)
    assert rel_err(out, t) < TOLERANCES["parity_f64_rel"]
    assert rel_err(F.drop_path_backward(dout, cache), tx.grad.numpy()) < TOLERANCES["parity_f64_rel"]


@pytest.mark.gpu
def test_mixed_numpy_cupy_mask_raises():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    x = sample(40)
    with pytest.raises(TypeError, match="'mask' is a CuPy"):
        F.dropout_forward(x, 0.5, mask=cupy.ones(x.shape))
