"""Tests for twins_np.data.digits: split, resize, normalisation."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from twins_np.data.augment import resize
from twins_np.data.digits import digits_split, load_digits


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray]:
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    return x.reshape(-1, 1, 8, 8), y


def test_shapes_and_dtypes(raw: tuple[np.ndarray, np.ndarray]) -> None:
    train, test = load_digits("train"), load_digits("test")
    assert train.images.shape == (1438, 1, 32, 32) and test.images.shape == (359, 1, 32, 32)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert train.classes == [str(k) for k in range(10)] and train.name == "digits"
    assert load_digits("test", image_size=16).images.shape == (359, 1, 16, 16)


def test_split_is_stratified_and_disjoint(raw: tuple[np.ndarray, np.ndarray]) -> None:
    labels = raw[1]
    train, test = digits_split(labels, seed=0)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    for k in range(10):
        n_k = int((labels == k).sum())
        assert (labels[test] == k).sum() == round(0.2 * n_k)


def test_split_depends_on_seed_only(raw: tuple[np.ndarray, np.ndarray]) -> None:
    labels = raw[1]
    a, b = digits_split(labels, seed=4), digits_split(labels, seed=4)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], digits_split(labels, seed=5)[1])
    np.testing.assert_array_equal(load_digits("test", seed=4).images, load_digits("test", seed=4).images)


def test_normalised_with_train_statistics(raw: tuple[np.ndarray, np.ndarray]) -> None:
    train, test = load_digits("train", seed=1), load_digits("test", seed=1)
    assert abs(train.images.mean(dtype=np.float64)) < 1e-5
    assert abs(train.images.std(dtype=np.float64) - 1.0) < 1e-5
    assert train.mean == test.mean and train.std == test.std
    # Undoing the normalisation gives the resized [0, 1] images of the split, in index order.
    _, test_idx = digits_split(raw[1], seed=1)
    want = resize((raw[0][test_idx] / 16.0).astype(np.float32), 32)
    assert test.std is not None and test.mean is not None
    got = test.images * test.std[0] + test.mean[0]
    assert got.dtype == np.float32  # Python float constants keep float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(test.labels, raw[1][test_idx])


def test_bad_arguments(raw: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="'split'"):
        load_digits("val")
    with pytest.raises(ValueError, match="'image_size'"):
        load_digits(image_size=0)
    with pytest.raises(ValueError, match="'test_fraction'"):
        digits_split(raw[1], test_fraction=1.0)


def test_missing_scikit_learn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()
