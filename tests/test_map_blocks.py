"""Tests of twins_np.backend.map_blocks: blocked evaluation is exactly the unblocked one.

The layers that use it (GELU, LayerNorm, softmax, the PEG's depthwise conv) are checked
too: with blocks shrunk so that every call crosses many block borders, forward and
backward must be bit-identical to one call over the whole array.
"""

from __future__ import annotations

import numpy as np
import pytest

from twins_np import backend
from twins_np import functional as F
from twins_np.backend import map_blocks


def test_single_output_equals_whole_call():
    x = np.random.default_rng(0).standard_normal((1000, 7)).astype(np.float32)
    fn = lambda a: np.exp(a) * 2.0 - a  # noqa: E731
    ref = fn(x)
    for block_bytes in (1, 28, 29 * 7, 4096, 1 << 30):
        out = map_blocks(fn, x, block_bytes=block_bytes)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        np.testing.assert_array_equal(out, ref)


def test_tuple_outputs_with_other_shapes_and_dtypes():
    """Outputs may differ from the input in trailing shape and dtype (e.g. a per-row statistic)."""
    x = np.random.default_rng(1).standard_normal((333, 5))

    def fn(a, b):
        return a + b, a.sum(axis=1, keepdims=True), (a > 0).astype(np.int8)

    y = np.random.default_rng(2).standard_normal((333, 5))
    ref = fn(x, y)
    out = map_blocks(fn, x, y, block_bytes=100)  # 2 rows a block: 167 blocks, the last of 1 row
    assert isinstance(out, tuple) and len(out) == 3
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype and o.shape == r.shape
        np.testing.assert_array_equal(o, r)


def test_one_block_is_a_plain_call():
    calls = []

    def fn(a):
        calls.append(a.shape)
        return a * 2

    x = np.ones((10, 3))
    map_blocks(fn, x)
    assert calls == [(10, 3)]
    calls.clear()
    map_blocks(fn, x, block_bytes=48)  # 2 rows of 24 bytes a block
    assert calls == [(2, 3)] * 5


def test_errors_in_a_block_propagate():
    def fn(a):
        if a[0, 0] > 5:
            raise ValueError("bad block")
        return a

    with pytest.raises(ValueError, match="bad block"):
        map_blocks(fn, np.arange(20.0).reshape(10, 2), block_bytes=16)


def test_default_block_size_is_read_at_call_time(monkeypatch):
    calls = []
    monkeypatch.setattr(backend, "DEFAULT_BLOCK_BYTES", 8 * 4)
    map_blocks(lambda a: calls.append(len(a)) or a, np.zeros(10))
    assert calls == [4, 4, 2]


# --- the layers that use it: blocked == unblocked, bit for bit -----------------------


def _layer_cases(rng):
    x = rng.standard_normal((3, 50, 24)).astype(np.float32)
    g, b = rng.standard_normal(24).astype(np.float32), rng.standard_normal(24).astype(np.float32)
    w = rng.standard_normal((24, 1, 3, 3)).astype(np.float32)
    s = rng.standard_normal((3, 2, 13, 17)).astype(np.float32)
    return {
        "gelu": (lambda: F.gelu_forward(x), F.gelu_backward, x.shape),
        "gelu_f64": (lambda: F.gelu_forward(x.astype(np.float64)), F.gelu_backward, x.shape),
        "layernorm": (lambda: F.layernorm_forward(x, g, b), F.layernorm_backward, x.shape),
        "softmax": (lambda: F.softmax_forward(s), F.softmax_backward, s.shape),
        "peg": (lambda: F.peg_forward(x, (5, 10), w, b), F.peg_backward, x.shape),
    }


@pytest.mark.parametrize("name", ["gelu", "gelu_f64", "layernorm", "softmax", "peg"])
def test_layers_blocked_equal_unblocked(monkeypatch, name):
    rng = np.random.default_rng(3)
    fwd, bwd, shape = _layer_cases(rng)[name]
    dout = rng.standard_normal(shape).astype(np.float32)

    def run():
        out, cache = fwd()
        grads = bwd(dout.astype(out.dtype), cache)
        return [out, *(grads if isinstance(grads, tuple) else (grads,))]

    whole = run()
    monkeypatch.setattr(backend, "DEFAULT_BLOCK_BYTES", 100)  # many blocks, ragged last one
    blocked = run()
    for a, b in zip(blocked, whole):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
def test_cupy_arrays_are_one_call(xp):
    if xp is np:
        pytest.skip("the CuPy case")
    calls = []
    x = xp.ones((1000, 100), dtype=xp.float32)
    out = map_blocks(lambda a: calls.append(a.shape) or a * 2, x, block_bytes=64)
    assert calls == [(1000, 100)] and isinstance(out, xp.ndarray)
