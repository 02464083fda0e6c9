"""Tests for twins_np.data.augment: resize, crop, flip, Compose."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twins_np.backend import asnumpy, cupy_available, to_device
from twins_np.data.augment import (
    Compose,
    HorizontalFlip,
    RandomCrop,
    crop_at,
    flip_where,
    hflip,
    random_crop,
    resize,
    standard_augment,
)

DEVICES = [
    "cpu",
    pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a GPU")]),
]


def _batch(shape: tuple[int, ...] = (5, 3, 8, 6), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _bilinear_loop(x: np.ndarray, h_out: int, w_out: int) -> np.ndarray:
    """Reference: one output pixel at a time, from the align_corners=False definition."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, h_out, w_out))
    for i in range(h_out):
        sy = max((i + 0.5) * h / h_out - 0.5, 0.0)
        y0 = min(math.floor(sy), h - 1)
        y1, wy = min(y0 + 1, h - 1), sy - y0
        for j in range(w_out):
            sx = max((j + 0.5) * w / w_out - 0.5, 0.0)
            x0 = min(math.floor(sx), w - 1)
            x1, wx = min(x0 + 1, w - 1), sx - x0
            out[:, :, i, j] = (
                (1 - wy) * (1 - wx) * x[:, :, y0, x0]
                + (1 - wy) * wx * x[:, :, y0, x1]
                + wy * (1 - wx) * x[:, :, y1, x0]
                + wy * wx * x[:, :, y1, x1]
            )
    return out


# --- resize -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [(11, 4), (32, 32), (3, 5), (8, 6)])
def test_resize_bilinear_matches_loop(size: tuple[int, int]) -> None:
    x = _batch((2, 3, 8, 6))
    got = resize(x, size)
    assert got.shape == (2, 3, *size) and got.dtype == np.float32
    np.testing.assert_allclose(got, _bilinear_loop(x.astype(np.float64), *size), rtol=1e-5, atol=1e-6)


def test_resize_bilinear_known_values() -> None:
    # Doubling [0, 1] with half-pixel centres gives [0, 1/4, 3/4, 1] (PyTorch's values);
    # align_corners=True would give [0, 1/3, 2/3, 1] instead.
    x = np.array([0.0, 1.0], dtype=np.float32).reshape(1, 1, 1, 2)
    np.testing.assert_allclose(resize(x, (1, 4))[0, 0, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-7)


def test_resize_nearest_integral_factor_is_repeat() -> None:
    x = _batch((2, 1, 8, 8))
    want = np.repeat(np.repeat(x, 4, axis=2), 4, axis=3)
    np.testing.assert_array_equal(resize(x, 32, mode="nearest"), want)


def test_resize_keeps_constant_images() -> None:
    x = np.full((1, 2, 5, 7), 0.3, dtype=np.float32)
    np.testing.assert_allclose(resize(x, (13, 3)), 0.3, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_resize_same_on_both_backends(device: str) -> None:
    x = _batch((2, 1, 8, 8))
    got = resize(to_device(x, device), 32)
    np.testing.assert_allclose(asnumpy(got), resize(x, 32), rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, arg",
    [({"size": 0}, "size"), ({"size": 4, "mode": "bicubic"}, "mode")],
)
def test_resize_bad_arguments(kwargs: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=f"'{arg}'"):
        resize(_batch(), **kwargs)


def test_resize_needs_a_batch() -> None:
    with pytest.raises(ValueError, match="'x'"):
        resize(np.zeros((8, 8), dtype=np.float32), 4)


@pytest.mark.parity
@pytest.mark.parametrize("size", [(32, 32), (5, 11)])
def test_resize_matches_torch(size: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    x = _batch((2, 3, 8, 6))
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(resize(x, size), want.numpy(), rtol=1e-5, atol=1e-6)


# --- crop --------------------------------------------------------------------------


def test_crop_at_equals_padded_window() -> None:
    x, pad = _batch(), 3
    offsets = np.random.default_rng(1).integers(0, 2 * pad + 1, size=(len(x), 2))
    got = crop_at(x, pad, offsets)
    padded = np.zeros((5, 3, 8 + 2 * pad, 6 + 2 * pad), dtype=np.float32)
    padded[:, :, pad:-pad, pad:-pad] = x
    for n, (dy, dx) in enumerate(offsets):
        np.testing.assert_array_equal(got[n], padded[n, :, dy : dy + 8, dx : dx + 6])


def test_crop_at_centre_is_identity() -> None:
    x = _batch()
    np.testing.assert_array_equal(crop_at(x, 4, np.full((len(x), 2), 4)), x)


def test_random_crop_pad_zero_is_identity() -> None:
    x = _batch()
    np.testing.assert_array_equal(random_crop(x, 0, np.random.default_rng(0)), x)


def test_random_crop_replays_its_documented_draw() -> None:
    x = _batch()
    got = random_crop(x, 4, np.random.default_rng(7))
    offsets = np.random.default_rng(7).integers(0, 9, size=(len(x), 2))
    np.testing.assert_array_equal(got, crop_at(x, 4, offsets))
    assert not np.array_equal(got, x)  # seed 7 draws at least one non-centre offset


def test_random_crop_zero_border() -> None:
    # A shift by the full pad leaves `pad` zero rows on one side.
    x = np.ones((1, 1, 6, 6), dtype=np.float32)
    got = crop_at(x, 2, np.array([[0, 4]]))
    assert got[0, 0, :2].sum() == 0.0 and got[0, 0, 2:, :-2].min() == 1.0 and got[0, 0, :, -2:].sum() == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_random_crop_same_on_both_backends(device: str) -> None:
    x = _batch()
    got = random_crop(to_device(x, device), 4, np.random.default_rng(3))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(asnumpy(got), random_crop(x, 4, np.random.default_rng(3)))


def test_random_crop_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'pad'"):
        random_crop(_batch(), -1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="'offsets'"):
        crop_at(_batch(), 2, np.full((5, 2), 5))
    with pytest.raises(ValueError, match="'offsets'"):
        crop_at(_batch(), 2, np.zeros((4, 2), dtype=np.int64))


# --- flip --------------------------------------------------------------------------


def test_flip_twice_is_identity() -> None:
    x = _batch()
    mask = np.array([True, False, True, True, False])
    once = flip_where(x, mask)
    np.testing.assert_array_equal(once[0], x[0, :, :, ::-1])
    np.testing.assert_array_equal(once[1], x[1])
    np.testing.assert_array_equal(flip_where(once, mask), x)


def test_hflip_extremes_and_replay() -> None:
    x = _batch((64, 1, 4, 4))
    np.testing.assert_array_equal(hflip(x, np.random.default_rng(0), p=1.0), x[..., ::-1])
    np.testing.assert_array_equal(hflip(x, np.random.default_rng(0), p=0.0), x)
    got = hflip(x, np.random.default_rng(5), p=0.5)
    mask = np.random.default_rng(5).random(64) < 0.5
    np.testing.assert_array_equal(got, flip_where(x, mask))
    assert 0 < mask.sum() < 64


@pytest.mark.parametrize("device", DEVICES)
def test_hflip_same_on_both_backends(device: str) -> None:
    x = _batch()
    got = hflip(to_device(x, device), np.random.default_rng(2))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(asnumpy(got), hflip(x, np.random.default_rng(2)))


def test_hflip_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'p'"):
        hflip(_batch(), np.random.default_rng(0), p=1.5)
    with pytest.raises(ValueError, match="'mask'"):
        flip_where(_batch(), np.ones(3, dtype=bool))


# --- Compose -----------------------------------------------------------------------


def test_compose_applies_in_order_with_one_generator() -> None:
    x = _batch()
    got = Compose([RandomCrop(2), HorizontalFlip(0.5)])(x, np.random.default_rng(11))
    rng = np.random.default_rng(11)
    want = hflip(random_crop(x, 2, rng), rng, 0.5)
    np.testing.assert_array_equal(got, want)


def test_standard_augment_seeded() -> None:
    x = _batch((16, 3, 8, 8))
    aug = standard_augment()
    a = aug(x, np.random.default_rng(0))
    assert a.dtype == np.float32 and a.shape == x.shape
    np.testing.assert_array_equal(a, aug(x, np.random.default_rng(0)))
    assert not np.array_equal(a, aug(x, np.random.default_rng(1)))
