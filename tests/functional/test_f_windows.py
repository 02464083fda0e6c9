"""Tests of twins_np.functional.windows: LSA's window partition (with right/bottom zero pad) and reverse (with crop)."""

from __future__ import annotations

import numpy as np
import pytest

from twins_np import functional as F
from twins_np.backend import asnumpy
from twins_np.gradcheck import TOLERANCES, check_backward

# (H, W, ws): divisible, padded on both sides, padded on one side, a 1x1 map in a 7x7 window
SIZES = [(6, 6, 3), (5, 6, 3), (5, 6, 4), (4, 9, 3), (1, 1, 7), (7, 7, 7), (3, 2, 2)]


def sample(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def window_index(H: int, W: int, ws: int):
    """Explicit map from (window, slot) to the source token, or None for a padded slot.

    Windows are numbered row-major over the padded map, slots row-major inside a window.
    """
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    nWw = Wp // ws
    table = {}
    for wi in range(Hp // ws):
        for wj in range(nWw):
            for i in range(ws):
                for j in range(ws):
                    r, c = wi * ws + i, wj * ws + j
                    table[(wi * nWw + wj, i * ws + j)] = r * W + c if (r < H and c < W) else None
    return table, (Hp // ws) * nWw


def partition_loop(x, H, W, ws):
    B, _, C = x.shape
    table, nW = window_index(H, W, ws)
    out = np.zeros((B, nW, ws * ws, C))
    for (w, t), n in table.items():
        if n is not None:
            out[:, w, t, :] = x[:, n, :]
    return out


def reverse_loop(win, H, W, ws):
    B, C = win.shape[0], win.shape[-1]
    table, _ = window_index(H, W, ws)
    out = np.full((B, H * W, C), np.nan)
    for (w, t), n in table.items():
        if n is not None:
            out[:, n, :] = win[:, w, t, :]
    return out


@pytest.mark.parametrize(
    ("size", "ws", "pads"),
    [
        ((56, 56), 7, (0, 0)),
        ((25, 25), 7, (3, 3)),
        ((8, 8), 7, (6, 6)),
        ((16, 24), 7, (5, 4)),
        ((3, 3), 7, (4, 4)),
        ((1, 1), 7, (6, 6)),
        ((57, 57), 7, (6, 6)),
        ((5, 6), 4, (3, 2)),
    ],
)
def test_window_pads(size, ws, pads):
    """(pad_b, pad_r) as timm computes them: (ws - H % ws) % ws rows, (ws - W % ws) % ws columns."""
    assert F.window_pads(size, ws) == pads


@pytest.mark.parametrize(("H", "W", "ws"), SIZES)
def test_partition_matches_index_mapping(xp, H, W, ws):
    x = sample(1, (2, H * W, 3))
    win, cache = F.window_partition_forward(xp.asarray(x), (H, W), ws)
    ref = partition_loop(x, H, W, ws)
    assert win.shape == ref.shape
    np.testing.assert_array_equal(asnumpy(win), ref)  # pure data movement: exact
    assert cache == ((H, W), ws)


@pytest.mark.parametrize(("H", "W", "ws"), SIZES)
def test_reverse_matches_index_mapping(xp, H, W, ws):
    _, nW = window_index(H, W, ws)
    win = sample(2, (2, nW, ws * ws, 3))
    x, _ = F.window_reverse_forward(xp.asarray(win), (H, W), ws)
    np.testing.assert_array_equal(asnumpy(x), reverse_loop(win, H, W, ws))


@pytest.mark.parametrize(("H", "W", "ws"), SIZES)
def test_reverse_undoes_partition(H, W, ws):
    x = sample(3, (2, H * W, 4))
    win, _ = F.window_partition_forward(x, (H, W), ws)
    back, _ = F.window_reverse_forward(win, (H, W), ws)
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize(("H", "W", "ws"), SIZES)
def test_backwards_are_adjoints(H, W, ws):
    """<P x, y> = <x, P^T y> for the partition P, and likewise for the reverse."""
    _, nW = window_index(H, W, ws)
    x, y = sample(4, (2, H * W, 3)), sample(5, (2, nW, ws * ws, 3))
    px, pc = F.window_partition_forward(x, (H, W), ws)
    rx, rc = F.window_reverse_forward(y, (H, W), ws)
    lhs, rhs = np.sum(px * y), np.sum(x * F.window_partition_backward(y, pc))
    assert abs(lhs - rhs) < 1e-12 * max(abs(lhs), 1.0)
    lhs, rhs = np.sum(rx * x), np.sum(y * F.window_reverse_backward(x, rc))
    assert abs(lhs - rhs) < 1e-12 * max(abs(lhs), 1.0)


@pytest.mark.parametrize(("H", "W", "ws"), [(5, 6, 3), (5, 6, 4), (1, 1, 7), (16, 24, 7)])
def test_pad_backward_is_a_slice(H, W, ws):
    """window_partition_backward keeps the real slots' gradient and drops the padded ones.

    A gradient living only on padded slots gives dx = 0; a gradient with no zero entries gives
    a dx with no zero entries, equal to the real slots read through the index map.
    """
    table, nW = window_index(H, W, ws)
    _, cache = F.window_partition_forward(sample(6, (1, H * W, 2)), (H, W), ws)
    dwin = sample(7, (1, nW, ws * ws, 2))
    padded = np.zeros(dwin.shape, dtype=bool)
    for (w, t), n in table.items():
        padded[:, w, t, :] = n is None
    assert padded.any()

    np.testing.assert_array_equal(F.window_partition_backward(np.where(padded, dwin, 0.0), cache), 0.0)
    dx = F.window_partition_backward(dwin, cache)
    assert np.all(dx != 0.0)
    np.testing.assert_array_equal(dx, reverse_loop(dwin, H, W, ws))


@pytest.mark.parametrize(("H", "W", "ws"), [(5, 6, 3), (5, 6, 4), (1, 1, 7), (16, 24, 7)])
def test_cropped_rows_get_no_gradient(H, W, ws):
    """window_reverse_backward: the padded (cropped) query slots get exactly 0, the real ones the gradient."""
    table, nW = window_index(H, W, ws)
    _, cache = F.window_reverse_forward(sample(8, (1, nW, ws * ws, 2)), (H, W), ws)
    dx = sample(9, (1, H * W, 2))
    dwin = F.window_reverse_backward(dx, cache)
    for (w, t), n in table.items():
        if n is None:
            assert np.all(dwin[:, w, t, :] == 0.0)
        else:
            np.testing.assert_array_equal(dwin[:, w, t, :], dx[:, n, :])


@pytest.mark.parametrize(("H", "W", "ws"), [(5, 6, 3), (5, 6, 4), (1, 1, 7), (3, 2, 2)])
def test_gradcheck(xp, H, W, ws):
    device = "cpu" if xp is np else "gpu"
    _, nW = window_index(H, W, ws)
    rows = check_backward(
        lambda x: F.window_partition_forward(x, (H, W), ws),
        F.window_partition_backward,
        [sample(10, (2, H * W, 2))],
        device=device,
    )
    rows += check_backward(
        lambda w: F.window_reverse_forward(w, (H, W), ws),
        F.window_reverse_backward,
        [sample(11, (1, nW, ws * ws, 2))],
        device=device,
    )
    assert max(r.max_rel_err for r in rows) < TOLERANCES["gradcheck_rel"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(xp, dtype):
    x = xp.asarray(sample(12, (2, 30, 3)).astype(dtype))
    win, pc = F.window_partition_forward(x, (5, 6), 4)
    assert win.dtype == dtype
    assert F.window_partition_backward(win, pc).dtype == dtype
    back, rc = F.window_reverse_forward(win, (5, 6), 4)
    assert back.dtype == dtype
    assert F.window_reverse_backward(back, rc).dtype == dtype


@pytest.mark.parametrize("ws", [0, -1, 2.5, "3"])
def test_bad_window_size_raises(ws):
    x = sample(13, (1, 30, 2))
    with pytest.raises(ValueError, match="window size ws must be a positive integer"):
        F.window_partition_forward(x, (5, 6), ws)
    with pytest.raises(ValueError, match="window size ws must be a positive integer"):
        F.window_reverse_forward(np.zeros((1, 4, 9, 2)), (5, 6), ws)


def test_none_window_size_is_refused_by_name():
    """ws = None (timm's "no windows" value) must be refused with a message that names ws."""
    with pytest.raises((ValueError, TypeError), match="window size ws"):
        F.window_partition_forward(sample(13, (1, 30, 2)), (5, 6), None)


@pytest.mark.parametrize("ws", [3.0, np.float64(3.0)])
def test_integral_float_window_size_works_or_is_refused_by_name(ws):
    """ws = 3.0 passes the integer check, so it must either work as ws = 3 or raise a ValueError naming ws."""
    x = sample(14, (1, 30, 2))
    try:
        win, _ = F.window_partition_forward(x, (5, 6), ws)
    except ValueError as e:
        assert "ws" in str(e)
    else:
        np.testing.assert_array_equal(win, F.window_partition_forward(x, (5, 6), 3)[0])


def test_token_count_mismatch_raises():
    with pytest.raises(ValueError, match=r"N = 29 tokens but size \(H, W\) = \(5, 6\) needs H\*W = 30"):
        F.window_partition_forward(sample(15, (1, 29, 2)), (5, 6), 3)


def test_wrong_ndim_raises():
    with pytest.raises(ValueError, match=r"'x' must have shape \(B, N, C\)"):
        F.window_partition_forward(sample(16, (1, 5, 6, 2)), (5, 6), 3)


@pytest.mark.parametrize("size", [(5,), (0, 30), (5, 6, 1), None])
def test_bad_size_raises(size):
    with pytest.raises(ValueError, match="'size' must be"):
        F.window_partition_forward(sample(17, (1, 30, 2)), size, 3)


def test_reverse_wrong_window_shape_raises():
    with pytest.raises(ValueError, match=r"windows must have shape \(B, 4, 9, C\)"):
        F.window_reverse_forward(np.zeros((1, 6, 9, 2)), (5, 6), 3)


# --- the additive mask of padded windows (mmsegmentation's LSA) -------------------------------


@pytest.mark.parametrize(("H", "W", "ws"), [(9, 10, 4), (5, 6, 3), (6, 5, 3), (6, 6, 3), (18, 14, 7), (3, 2, 7)])
def test_window_pad_mask_rules(H, W, ws):
    """"padded": -1000 exactly between a padded and a real position of one window; "mmseg" the same
    when both pads are positive, and nothing at all when either is 0 (its m[-0:] flags every position)."""
    pad_b, pad_r = F.window_pads((H, W), ws)
    table, nW = window_index(H, W, ws)
    padded = F.window_pad_mask((H, W), ws, "padded", dtype=np.float64)
    if pad_b == pad_r == 0:
        assert padded is None
    else:
        assert padded.shape == (nW, 1, ws * ws, ws * ws)
        for (w, i), src_i in table.items():
            for j in range(ws * ws):
                differ = (src_i is None) != (table[(w, j)] is None)
                assert padded[w, 0, i, j] == (F.MASK_VALUE if differ else 0.0)
    mmseg = F.window_pad_mask((H, W), ws, "mmseg", dtype=np.float64)
    if pad_b > 0 and pad_r > 0:
        assert np.array_equal(mmseg, padded)
    else:
        assert mmseg is None


def test_window_pad_mask_refuses_unknown_rules():
    with pytest.raises(ValueError, match="pad mask rule must be one of"):
        F.window_pad_mask((5, 5), 3, "all")
