"""Tests of twins_np.backend.map_blocks: blocked evaluation equals the unblocked one.

The layers that use it (GELU, LayerNorm, softmax, the PEG's depthwise conv) are checked
too, with blocks shrunk so that every call crosses many block borders. The elementwise
ones (GELU, the PEG) must be bit-identical to one call over the whole array. LayerNorm
and softmax take their row sums from BLAS matrix-vector products, whose last bit can
depend on where a row sits in the block (BLAS handles leftover rows with other kernels),
so there the blocked result must agree to float32 rounding: a misplaced block would be
off by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest

from twins_np import backend
from twins_np import functional as F
from twins_np.backend import map_blocks


def _exp_twice_minus(a, out):
    np.exp(a, out=out)
    out *= 2.0
    out -= a


def test_single_output_equals_whole_call():
    x = np.random.default_rng(0).standard_normal((1000, 7)).astype(np.float32)
    ref = np.exp(x) * 2.0 - x
    for block_bytes in (1, 28, 29 * 7, 4096, 1 << 30):
        out = np.empty_like(x)
        assert map_blocks(_exp_twice_minus, x, out=out, block_bytes=block_bytes) is out
        np.testing.assert_array_equal(out, ref)


def test_tuple_outputs_with_other_shapes_and_dtypes():
    """Outputs may differ from the input in trailing shape and dtype (e.g. a per-row statistic)."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((333, 5)), rng.standard_normal((333, 5))

    def fn(a, b, out):
        total, row_sum, positive = out
        np.add(a, b, out=total)
        row_sum[...] = a.sum(axis=1, keepdims=True)
        positive[...] = a > 0

    out = (np.empty((333, 5)), np.empty((333, 1)), np.empty((333, 5), dtype=np.int8))
    map_blocks(fn, x, y, out=out, block_bytes=100)  # 2 rows a block: 167 blocks, the last of 1 row
    np.testing.assert_array_equal(out[0], x + y)
    np.testing.assert_array_equal(out[1], x.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(out[2], (x > 0).astype(np.int8))


def test_one_block_is_a_plain_call():
    calls = []

    def fn(a, out):
        calls.append(a.shape)
        np.multiply(a, 2, out=out)

    x = np.ones((10, 3))
    map_blocks(fn, x, out=np.empty_like(x))
    assert calls == [(10, 3)]
    calls.clear()
    out = np.empty_like(x)
    map_blocks(fn, x, out=out, block_bytes=48)  # 2 rows of 24 bytes a block
    assert calls == [(2, 3)] * 5
    np.testing.assert_array_equal(out, 2 * x)


def test_errors_in_a_block_propagate():
    def fn(a, out):
        if a[0, 0] > 5:
            raise ValueError("bad block")
        out[...] = a

    x = np.arange(20.0).reshape(10, 2)
    with pytest.raises(ValueError, match="bad block"):
        map_blocks(fn, x, out=np.empty_like(x), block_bytes=16)


def test_default_block_size_is_read_at_call_time(monkeypatch):
    calls = []
    monkeypatch.setattr(backend, "DEFAULT_BLOCK_BYTES", 8 * 4)
    map_blocks(lambda a, out: calls.append(len(a)), np.zeros(10), out=np.empty(10))
    assert calls == [4, 4, 2]


# --- the layers that use it: blocked == unblocked, bit for bit -----------------------


def _layer_cases(rng):
    x = rng.standard_normal((3, 50, 24)).astype(np.float32)
    g, b = rng.standard_normal(24).astype(np.float32), rng.standard_normal(24).astype(np.float32)
    w = rng.standard_normal((24, 1, 3, 3)).astype(np.float32)
    s = rng.standard_normal((3, 2, 13, 17)).astype(np.float32)
    s_t = rng.standard_normal((3, 17, 13, 2)).astype(np.float32).transpose(0, 3, 2, 1)  # not C-contiguous
    return {
        "gelu": (lambda: F.gelu_forward(x), F.gelu_backward, x.shape),
        "gelu_f64": (lambda: F.gelu_forward(x.astype(np.float64)), F.gelu_backward, x.shape),
        "layernorm": (lambda: F.layernorm_forward(x, g, b), F.layernorm_backward, x.shape),
        "softmax": (lambda: F.softmax_forward(s), F.softmax_backward, s.shape),
        "softmax_strided": (lambda: F.softmax_forward(s_t), F.softmax_backward, s_t.shape),
        "gelu_strided": (lambda: F.gelu_forward(s_t), F.gelu_backward, s_t.shape),
        "layernorm_strided": (lambda: F.layernorm_forward(s_t, g[:17], b[:17]), F.layernorm_backward, s_t.shape),
        "peg": (lambda: F.peg_forward(x, (5, 10), w, b), F.peg_backward, x.shape),
    }


@pytest.mark.parametrize(
    "name", ["gelu", "gelu_f64", "layernorm", "softmax", "peg", "softmax_strided", "gelu_strided", "layernorm_strided"]
)
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
        if name.startswith(("gelu", "peg")):
            np.testing.assert_array_equal(a, b)
        else:  # a few float32 ulps of the largest entry
            np.testing.assert_allclose(a, b, rtol=0, atol=8 * np.finfo(np.float32).eps * float(np.max(np.abs(b))))


@pytest.mark.gpu
def test_cupy_arrays_are_one_call(xp):
    if xp is np:
        pytest.skip("the CuPy case")
    calls = []
    x = xp.ones((1000, 100), dtype=xp.float32)
    out = xp.empty_like(x)

    def fn(a, out):
        calls.append(a.shape)
        xp.multiply(a, 2, out=out)

    map_blocks(fn, x, out=out, block_bytes=64)
    assert calls == [(1000, 100)] and float(out.sum()) == 2 * x.size
