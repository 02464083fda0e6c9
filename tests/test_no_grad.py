"""twins_np.no_grad(): inference forwards keep no cache, give the same output, and refuse backward."""

import numpy as np
import pytest

import twins_np
from twins_np.nn.module import _NO_CACHE


def test_no_grad_same_logits_no_cache_and_clear_backward_error():
    model = twins_np.create_model("twins_svt_teach32", dtype=np.float64).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    ref = model.forward(x)
    with twins_np.no_grad():
        out = model.forward(x)
    np.testing.assert_array_equal(out, ref)
    kept = [name for name, m in model.named_modules() if m._cache is not None and m._cache is not _NO_CACHE]
    assert kept == [], "no module may keep a real cache under no_grad"
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(out))
    # outside the context caches are kept again and backward works
    model.forward(x)
    dx = model.backward(np.ones_like(ref))
    assert dx.shape == x.shape


def test_no_grad_restores_state_after_an_error():
    with pytest.raises(ValueError), twins_np.no_grad():
        raise ValueError("inside")
    m = twins_np.create_model("twins_pcpvt_teach32", dtype=np.float64)
    out = m.forward(np.zeros((1, 3, 32, 32)))
    m.backward(np.ones_like(out))  # caches were kept: the flag was restored
