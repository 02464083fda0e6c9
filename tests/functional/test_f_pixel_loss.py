"""Tests of twins_np.functional.loss's per-pixel cross-entropy (ignore_index, label smoothing).

The reference is ``torch.nn.functional.cross_entropy`` on (B, K, H, W) logits and (B, H, W)
labels, with ``ignore_index`` and ``label_smoothing``, mean reduction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.backend import asnumpy, cupy_available, device_of, to_device
from twins_np.gradcheck import TOLERANCES, check_backward

B, K, H, W = 2, 5, 3, 7


def logits_labels(seed: int, ignored: float = 0.3):
    """Random logits and labels; about ``ignored`` of the pixels carry the ignore label 255."""
    r = np.random.default_rng(seed)
    y = r.integers(0, K, size=(B, H, W))
    y[r.random((B, H, W)) < ignored] = 255
    return 2.0 * r.standard_normal((B, K, H, W)), y


def pixel_ce_loop(z, y, eps, ignore=255):
    total, n = 0.0, 0
    for b in range(z.shape[0]):
        for i in range(z.shape[2]):
            for j in range(z.shape[3]):
                if y[b, i, j] == ignore:
                    continue
                v = z[b, :, i, j]
                lse = max(v) + math.log(sum(math.exp(a - max(v)) for a in v))
                for k in range(z.shape[1]):
                    t = eps / z.shape[1] + ((1.0 - eps) if k == y[b, i, j] else 0.0)
                    total -= t * (v[k] - lse)
                n += 1
    return total / n


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_forward_matches_loop(xp, eps):
    z, y = logits_labels(1)
    loss, _ = F.pixel_cross_entropy_forward(xp.asarray(z), xp.asarray(y), label_smoothing=eps)
    assert isinstance(loss, float)
    ref = pixel_ce_loop(z, y, eps)
    assert abs(loss - ref) < TOLERANCES["parity_f64_rel"] * abs(ref)


def test_ignored_pixels_get_zero_gradient_and_do_not_count():
    z, y = logits_labels(2)
    loss, cache = F.pixel_cross_entropy_forward(z, y, label_smoothing=0.1)
    d = F.pixel_cross_entropy_backward(1.0, cache)
    ign = y == 255
    assert ign.any() and np.all(d.transpose(0, 2, 3, 1)[ign] == 0.0)
    # changing the logits of ignored pixels changes nothing
    z2 = z.copy()
    z2.transpose(0, 2, 3, 1)[ign] += 10.0
    assert F.pixel_cross_entropy_forward(z2, y, label_smoothing=0.1)[0] == loss
    # the mean is over the counted pixels: each counted pixel's gradient sums to 0 over K
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-15)


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("ignore_index", [255, -100, 2])
def test_gradcheck(xp, eps, ignore_index):
    z, y = logits_labels(3)
    y[y == 255] = ignore_index
    # the analytic pass runs on xp's device, the numeric one on the host: labels follow the logits
    rows = check_backward(
        lambda a: F.pixel_cross_entropy_forward(a, to_device(y, device_of(a)), eps, ignore_index),
        lambda d, c: F.pixel_cross_entropy_backward(float(d), c),
        [z],
        names=["logits"],
        device="cpu" if xp is np else "gpu",
    )
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.uint8, np.int32, np.int64])
def test_dtypes(xp, dtype, label_dtype):
    z, y = logits_labels(4)
    loss, cache = F.pixel_cross_entropy_forward(xp.asarray(z.astype(dtype)), xp.asarray(y.astype(label_dtype)), 0.1, 255)
    assert isinstance(loss, float)
    assert F.pixel_cross_entropy_backward(1.0, cache).dtype == dtype


def test_huge_logits_are_finite():
    z, y = logits_labels(5)
    loss, cache = F.pixel_cross_entropy_forward(1e4 * z, y, label_smoothing=0.1)
    assert math.isfinite(loss) and np.all(np.isfinite(F.pixel_cross_entropy_backward(1.0, cache)))


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("ignored", [0.0, 0.3, 0.9])
def test_parity_with_torch(dtype, tol, eps, ignored):
    torch = pytest.importorskip("torch")
    z, y = logits_labels(6, ignored)
    y[0, 0, 0] = 1  # at least one counted pixel
    z = z.astype(dtype)
    loss, cache = F.pixel_cross_entropy_forward(z, y, eps, 255)
    dz = F.pixel_cross_entropy_backward(1.7, cache)
    tz = torch.tensor(z, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tz, torch.tensor(y), ignore_index=255, label_smoothing=eps, reduction="mean")
    (1.7 * tloss).backward()
    assert abs(loss - tloss.item()) <= TOLERANCES[tol] * abs(tloss.item())
    assert rel_err(dz, tz.grad.numpy()) <= TOLERANCES[tol]


@pytest.mark.parity
def test_all_ignored_raises_where_torch_returns_nan():
    """The documented choice: torch gives nan (0 / 0); twins-np refuses with a message."""
    torch = pytest.importorskip("torch")
    z, y = logits_labels(7)
    y[:] = 255
    assert math.isnan(torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(y), ignore_index=255).item())
    with pytest.raises(ValueError, match="every pixel of target is ignore_index = 255"):
        F.pixel_cross_entropy_forward(z, y)


@pytest.mark.parametrize(("label", "shown"), [(5, r"\[5, 5\]"), (-1, r"\[-1, -1\]"), (254, r"\[254, 254\]")])
def test_labels_out_of_range_raise(label, shown):
    z, y = logits_labels(8)
    y[1, 2, 3] = label
    with pytest.raises(
        ValueError, match=r"labels must be in \[0, 5\) or equal ignore_index = 255; got 1 pixels with labels in " + shown
    ):
        F.pixel_cross_entropy_forward(z, y)


def test_bad_shapes_and_types_raise():
    z, y = logits_labels(9)
    with pytest.raises(ValueError, match=r"target must have shape \(B, H, W\) = \(2, 3, 7\)"):
        F.pixel_cross_entropy_forward(z, y[:, :, :6])
    with pytest.raises(ValueError, match=r"'logits' must have shape \(B, K, H, W\)"):
        F.pixel_cross_entropy_forward(z[0], y[0])
    with pytest.raises(TypeError, match="integer labels expected for target, got float64"):
        F.pixel_cross_entropy_forward(z, y.astype(np.float64))
    with pytest.raises(TypeError, match="target must be an array"):
        F.pixel_cross_entropy_forward(z, y.tolist())
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        F.pixel_cross_entropy_forward(z, y, label_smoothing=1.0)


def test_inputs_unchanged():
    z, y = logits_labels(10)
    z0, y0 = z.copy(), y.copy()
    _, cache = F.pixel_cross_entropy_forward(z, y, 0.1, 255)
    F.pixel_cross_entropy_backward(1.0, cache)
    assert np.array_equal(asnumpy(z), z0) and np.array_equal(y, y0)


@pytest.mark.gpu
def test_mixed_numpy_cupy_raises():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    z, y = logits_labels(11)
    with pytest.raises(TypeError, match="'target' is a CuPy"):
        F.pixel_cross_entropy_forward(z, cupy.asarray(y))
