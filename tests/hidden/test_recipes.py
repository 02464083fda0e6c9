"""Tests that step through a task's solution, one library call at a time: instructor-only.

A student copy leaves this folder out (``twins_np.course.build.INSTRUCTOR_ONLY``): each test
here calls, in order, the helpers a task's solution calls, so it would hand the solution over.
The copy's own tests of these tasks check behaviour instead (values against loop references,
gradient checks, invariances); ``tests/course/test_course_build.py`` proves that no test or page
of a copy steps through a stubbed task this way.
"""

from __future__ import annotations

import numpy as np
import pytest
from attention_inputs import gsa_call, gsa_params, lsa_params

from twins_np import functional as F

# --- LSA: the padded tokens through the backward chain --------------------------------------


@pytest.mark.parametrize(("H", "W", "ws"), [(5, 6, 4), (1, 1, 7), (4, 9, 3)])
def test_cropped_query_rows_get_no_gradient_and_padded_keys_do(H, W, ws):
    """Step through the backward: padded query slots get dq = 0; padded keys/values get a gradient, dropped at the pad."""
    x, *params = lsa_params(7, 1, H, W, 4)
    out, cache = F.lsa_forward(x, (H, W), *params, num_heads=2, ws=ws)
    dout = np.random.default_rng(8).standard_normal(out.shape)
    dy, _, _ = F.linear_backward(dout, cache.proj)
    do = F.window_reverse_backward(dy, cache.reverse)  # (B, nW, T, C)
    dq, dk, dv = F.attention_backward(F.split_heads(do, 2), cache.attn)  # (B, nW, heads, T, hd)

    win_of_ones, _ = F.window_partition_forward(np.ones((1, H * W, 1)), (H, W), ws)
    padded = win_of_ones[0, :, :, 0] == 0.0  # (nW, T): True on padded slots
    assert padded.any()
    for h in range(2):
        assert np.all(dq[0, :, h][padded] == 0.0)
        assert np.all(np.abs(dk[0, :, h][padded]).sum(axis=-1) > 0.0)
        assert np.all(np.abs(dv[0, :, h][padded]).sum(axis=-1) > 0.0)
    # the whole backward agrees with the stepped one
    dx, *_ = F.lsa_backward(dout, cache)
    dwin, _, _ = F.linear_backward(F.join_qkv([dq, dk, dv]), cache.qkv)
    np.testing.assert_array_equal(dx, F.window_partition_backward(dwin, cache.partition))


# --- GSA: the query path alone on floor-dropped pixels --------------------------------------


@pytest.mark.parametrize(("H", "W", "sr"), [(7, 5, 2), (7, 5, 4), (57, 9, 8)])
def test_floor_dropped_pixels_feed_no_key(H, W, sr):
    """The key/value part of dx (dx minus the query path) is exactly 0 on rows >= (H//sr)*sr and columns >= (W//sr)*sr."""
    p = gsa_params(7, 1, H, W, 4, sr)
    out, cache = gsa_call(p, (H, W), 2, sr)
    dout = np.random.default_rng(8).standard_normal(out.shape)
    dx = F.gsa_backward(dout, cache)[0]
    do, _, _ = F.linear_backward(dout, cache.proj)
    dq, _, _ = F.attention_backward(F.split_heads(do, 2), cache.attn)
    dx_q, _, _ = F.linear_backward(F.merge_heads(dq), cache.q)
    dx_kv = (dx - dx_q).reshape(H, W, 4)
    Hs, Ws = (H // sr) * sr, (W // sr) * sr
    assert np.all(dx_kv[Hs:] == 0.0) and np.all(dx_kv[:, Ws:] == 0.0)
    assert np.all(np.abs(dx_kv[:Hs, :Ws]).sum(axis=-1) > 0.0)
