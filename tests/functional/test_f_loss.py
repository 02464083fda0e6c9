"""Tests of twins_np.functional.loss: softmax cross-entropy with label smoothing and soft targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from f_helpers import rel_err

from twins_np import functional as F
from twins_np.backend import asnumpy, cupy_available, device_of, to_device
from twins_np.gradcheck import TOLERANCES, check_backward

B, K = 5, 7


def logits_labels(seed: int):
    r = np.random.default_rng(seed)
    return 2.0 * r.standard_normal((B, K)), r.integers(0, K, size=B)


def soft_targets(seed: int) -> np.ndarray:
    t = np.random.default_rng(seed).random((B, K))
    return t / t.sum(axis=1, keepdims=True)


def ce_loop(z, labels, eps):
    """Per sample: -sum_k t_k log softmax(z)_k with t = (1 - eps) onehot + eps / K; mean over the batch."""
    total = 0.0
    for b in range(z.shape[0]):
        m = max(z[b])
        lse = m + math.log(sum(math.exp(v - m) for v in z[b]))
        for k in range(z.shape[1]):
            t = eps / z.shape[1] + ((1.0 - eps) if k == labels[b] else 0.0)
            total -= t * (z[b, k] - lse)
    return total / z.shape[0]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_forward_matches_loop(xp, eps):
    z, y = logits_labels(1)
    loss, cache = F.cross_entropy_forward(xp.asarray(z), xp.asarray(y), eps)
    assert isinstance(loss, float)
    ref = ce_loop(z, y, eps)
    assert abs(loss - ref) < TOLERANCES["parity_f64_rel"] * abs(ref)
    np.testing.assert_allclose(asnumpy(cache.target).sum(axis=1), 1.0, rtol=0, atol=1e-15)


def test_gradient_is_probs_minus_target_over_batch():
    z, y = logits_labels(2)
    loss, cache = F.cross_entropy_forward(z, y, 0.1)
    d = F.cross_entropy_backward(2.5, cache)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    t = np.full((B, K), 0.1 / K)
    t[np.arange(B), y] += 0.9
    assert rel_err(d, 2.5 * (p - t) / B) < TOLERANCES["parity_f64_rel"]


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_gradcheck_labels(xp, eps):
    device = "cpu" if xp is np else "gpu"
    z, y = logits_labels(3)
    # the analytic pass runs on `device`, the numeric one on the host: labels follow the logits
    rows = check_backward(
        lambda a: F.cross_entropy_forward(a, to_device(y, device_of(a)), eps),
        lambda d, c: F.cross_entropy_backward(float(d), c),
        [z],
        names=["logits"],
        device=device,
    )
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


def test_gradcheck_soft_targets():
    z, _ = logits_labels(4)
    t = soft_targets(5)
    rows = check_backward(
        lambda a: F.cross_entropy_forward(a, t, 0.2), lambda d, c: F.cross_entropy_backward(float(d), c), [z], names=["logits"]
    )
    assert rows[0].max_rel_err < TOLERANCES["gradcheck_rel"]


def test_huge_logits_are_finite():
    z = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4 + 1.0]])
    loss, cache = F.cross_entropy_forward(z, np.array([0, 1]), 0.0)
    # sample 0 is certain and right (loss 0); sample 1: log(e^0 + e^0 + e^1) - 0 after the shift by -1e4
    ref = (0.0 + math.log(2.0 + math.e)) / 2.0
    assert math.isfinite(loss) and abs(loss - ref) < 1e-12
    assert np.all(np.isfinite(F.cross_entropy_backward(1.0, cache)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(xp, dtype):
    z, y = logits_labels(6)
    loss, cache = F.cross_entropy_forward(xp.asarray(z.astype(dtype)), xp.asarray(y), 0.1)
    assert isinstance(loss, float)
    assert F.cross_entropy_backward(1.0, cache).dtype == dtype
    loss, cache = F.cross_entropy_forward(xp.asarray(z.astype(dtype)), xp.asarray(soft_targets(7)), 0.1)
    assert F.cross_entropy_backward(1.0, cache).dtype == dtype


@pytest.mark.parity
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, "parity_f64_rel"), (np.float32, "parity_f32_rel")])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("soft", [False, True])
def test_parity_with_torch(dtype, tol, eps, soft):
    torch = pytest.importorskip("torch")
    z, y = logits_labels(8)
    z = z.astype(dtype)
    target = soft_targets(9).astype(dtype) if soft else y
    loss, cache = F.cross_entropy_forward(z, target, eps)
    dz = F.cross_entropy_backward(1.0, cache)

    tz = torch.tensor(z, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tz, torch.tensor(target), label_smoothing=eps)
    tloss.backward()
    assert abs(loss - tloss.item()) < TOLERANCES[tol] * abs(tloss.item())
    assert rel_err(dz, tz.grad.numpy()) < TOLERANCES[tol]


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 7], [0, -1, 2, 3, 4]])
def test_labels_out_of_range_raise(labels):
    z, _ = logits_labels(10)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 7\)"):
        F.cross_entropy_forward(z, np.array(labels), 0.0)


def test_float_labels_raise():
    z, y = logits_labels(11)
    with pytest.raises(TypeError, match="integer labels expected"):
        F.cross_entropy_forward(z, y.astype(np.float64), 0.0)


def test_label_count_mismatch_raises():
    z, y = logits_labels(12)
    with pytest.raises(ValueError, match="target has 4 labels for a batch of 5"):
        F.cross_entropy_forward(z, y[:4], 0.0)


def test_soft_target_wrong_shape_raises():
    z, _ = logits_labels(13)
    with pytest.raises(ValueError, match=r"soft target must have shape \(5, 7\)"):
        F.cross_entropy_forward(z, np.ones((5, 6)) / 6, 0.0)


@pytest.mark.parametrize("eps", [-0.1, 1.0])
def test_bad_smoothing_raises(eps):
    z, y = logits_labels(14)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        F.cross_entropy_forward(z, y, eps)


def test_logits_wrong_ndim_raises():
    z, y = logits_labels(15)
    with pytest.raises(ValueError, match=r"'logits' must have shape \(B, K\)"):
        F.cross_entropy_forward(z[None], y, 0.0)


@pytest.mark.parametrize("dtype", [np.int64, np.float16])
def test_non_float_logits_raise(dtype):
    z, y = logits_labels(16)
    with pytest.raises(TypeError, match="'logits' must be float32 or float64"):
        F.cross_entropy_forward(z.astype(dtype), y, 0.0)


@pytest.mark.gpu
def test_mixed_numpy_cupy_raises():
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    z, y = logits_labels(17)
    with pytest.raises(TypeError, match="'target' is a CuPy"):
        F.cross_entropy_forward(z, cupy.asarray(y), 0.0)
