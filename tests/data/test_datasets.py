"""Tests for twins_np.data.load_dataset, the name dispatcher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from twins_np.data import DATASETS, Dataset, load_dataset, load_long_range


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'name' must be one of digits, cifar10, long-range"):
        load_dataset("mnist")


def test_bad_split() -> None:
    with pytest.raises(ValueError, match="'split'"):
        load_dataset("long-range", "val")


def test_dispatches_with_options() -> None:
    got = load_dataset("long-range", "test", image_size=64, seed=2, n=10, noise=0.1)
    want = load_long_range("test", 64, seed=2, n=10, noise=0.1)
    assert isinstance(got, Dataset) and got.name == "long-range" and got.classes == ["different", "same"]
    assert got.images.shape == (10, 1, 64, 64)
    np.testing.assert_array_equal(got.images, want.images)


def test_every_name_is_served(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    assert load_dataset("digits", "test").name == "digits"
    assert load_dataset("long-range", "test", n=4).name == "long-range"
    with pytest.raises(FileNotFoundError):  # CIFAR-10 is the user's copy: here, none
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert DATASETS == ("digits", "cifar10", "long-range")
