"""Tests for twins_np.data.long_range: geometry, balance, and no single-mark shortcut."""

from __future__ import annotations

import numpy as np
import pytest

from twins_np.data import load_dataset
from twins_np.data.long_range import MARKS, band_tokens, make_long_range

PATCH, WINDOW, MARK = 4, 7, 3


def test_shapes_dtypes_balance() -> None:
    data = make_long_range(101, seed=0)
    assert data.images.shape == (101, 1, 32, 32) and data.images.dtype == np.float32
    assert data.labels.dtype == np.int64 and data.corners.shape == (101, 2, 2) and data.kinds.shape == (101, 2)
    assert np.bincount(data.labels).tolist() == [51, 50]
    np.testing.assert_array_equal(data.labels, (data.kinds[:, 0] == data.kinds[:, 1]).astype(np.int64))


def test_seeded() -> None:
    a, b, c = make_long_range(64, seed=3), make_long_range(64, seed=3), make_long_range(64, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images) and not np.array_equal(a.corners, c.corners)
    train, test = load_dataset("long-range", "train", n=64), load_dataset("long-range", "test", n=64)
    assert not np.array_equal(train.images, test.images)


@pytest.mark.parametrize("size", [32, 64])
def test_marks_are_more_than_a_window_apart(size: int) -> None:
    data = make_long_range(2000, image_size=size, seed=1)
    first, last = data.corners, data.corners + MARK - 1  # (N, 2 marks, 2 axes), inclusive pixel ranges
    # Along the separating axis, the token of mark 1's first pixel minus the token of mark 0's
    # last pixel is >= WINDOW: no WINDOW x WINDOW block of tokens, at any token offset, holds both.
    token_gap = first[:, 1] // PATCH - last[:, 0] // PATCH  # (N, 2)
    assert np.all(token_gap.max(axis=1) >= WINDOW)
    # In pixels: the span covering both marks is longer than one window (28 px).
    span = last[:, 1] - first[:, 0] + 1
    assert np.all(span.max(axis=1) > WINDOW * PATCH)
    assert np.all((data.corners >= 0) & (data.corners <= size - MARK))
    # Both separating axes and several positions along the free axis occur.
    axis = np.argmax(token_gap, axis=1)
    assert set(axis.tolist()) == {0, 1}
    assert len(np.unique(data.corners[axis == 0, 0, 1])) == size - MARK + 1


def test_corners_and_kinds_describe_the_pixels() -> None:
    data = make_long_range(50, seed=2, noise=0.0)
    for img, corners, kinds in zip(data.images[:, 0], data.corners, data.kinds):
        want = np.zeros((32, 32), dtype=np.float32)
        for (r, c), k in zip(corners, kinds):
            want[r : r + MARK, c : c + MARK] = MARKS[k]
        np.testing.assert_array_equal(img, want)
    # Both shapes light 5 pixels, so the pixel sum carries no label information.
    assert np.all(data.images.sum(axis=(1, 2, 3)) == 10.0)


def test_one_mark_alone_is_independent_of_the_label() -> None:
    data = make_long_range(8000, seed=5)
    for j in range(2):
        for k in range(2):
            share_same = data.labels[data.kinds[:, j] == k].mean()
            assert abs(share_same - 0.5) < 0.03  # ~5 standard errors at n ~ 4000
        # The kind itself is a fair coin given the label (not just on average).
        for y in range(2):
            assert abs(data.kinds[data.labels == y, j].mean() - 0.5) < 0.03


def test_band_width() -> None:
    assert band_tokens(32) == 1 and band_tokens(64) == 5 and band_tokens(28) == 0


@pytest.mark.parametrize(
    "kwargs, arg",
    [({"n": 0}, "n"), ({"n": 4, "image_size": 28}, "image_size"), ({"n": 4, "image_size": 30}, "image_size"),
     ({"n": 4, "noise": -1.0}, "noise")],
)
def test_bad_arguments(kwargs: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=f"'{arg}'"):
        make_long_range(**kwargs)
