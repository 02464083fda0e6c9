"""Tests for twins_np.data.loader: Dataset checks and the resumable DataLoader."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from twins_np.backend import asnumpy, cupy_available
from twins_np.data import DataLoader, Dataset, standard_augment

DEVICES = [
    "cpu",
    pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a GPU")]),
]


def _numbered(n: int = 23, size: int = 4) -> Dataset:
    """Image i is filled with the value i, so a batch tells which samples it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, size, size)).copy()
    return Dataset(images, np.arange(n, dtype=np.int64) % 3, ["a", "b", "c"], "numbered")


def _ids(images: object) -> list[int]:
    return [int(v) for v in asnumpy(images)[:, 0, 0, 0]]


def _bounded(loader: DataLoader) -> itertools.islice:
    # At most one batch too many, so a loader that never ends fails instead of hanging.
    return itertools.islice(loader, len(loader) + 1)


def _epoch(loader: DataLoader) -> list[list[int]]:
    return [_ids(x) for x, _ in _bounded(loader)]


# --- Dataset -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "images, labels, arg",
    [
        (np.zeros((4, 8, 8), np.float32), np.zeros(4, np.int64), "images"),
        (np.zeros((4, 1, 8, 8), np.float64), np.zeros(4, np.int64), "images"),
        (np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int32), "labels"),
        (np.zeros((4, 1, 8, 8), np.float32), np.zeros(3, np.int64), "labels"),
        (np.zeros((4, 1, 8, 8), np.float32), np.array([0, 1, 2, 3]), "labels"),
    ],
)
def test_dataset_rejects_bad_arrays(images: np.ndarray, labels: np.ndarray, arg: str) -> None:
    with pytest.raises(ValueError, match=f"'{arg}'"):
        Dataset(images, labels, ["a", "b", "c"], "bad")


def test_dataset_len_and_subset() -> None:
    data = _numbered()
    assert len(data) == 23 and data.num_classes == 3
    sub = data.subset(np.array([4, 2]))
    assert _ids(sub.images) == [4, 2] and list(sub.labels) == [1, 2] and sub.name == "numbered"


# --- DataLoader ----------------------------------------------------------------------


@pytest.mark.parametrize("drop_last, batches, last", [(False, 5, 3), (True, 4, 5)])
def test_len_and_batch_sizes(drop_last: bool, batches: int, last: int) -> None:
    loader = DataLoader(_numbered(23), batch_size=5, drop_last=drop_last)
    sizes = [len(b) for b in _epoch(loader)]
    assert len(loader) == batches == len(sizes) and sizes[-1] == last and set(sizes[:-1]) == {5}


@pytest.mark.parametrize("device", DEVICES)
def test_every_sample_once_per_epoch(device: str) -> None:
    loader = DataLoader(_numbered(23), batch_size=4, seed=3, device=device)
    for _ in range(3):
        seen = [i for batch in _epoch(loader) for i in batch]
        assert sorted(seen) == list(range(23))
    x, y = next(iter(loader))
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert type(x).__module__.split(".")[0] == ("cupy" if device == "gpu" else "numpy")
    np.testing.assert_array_equal(asnumpy(y), np.array(_ids(x)) % 3)  # labels travel with their images


def test_shuffle_orders() -> None:
    a = DataLoader(_numbered(), batch_size=4, seed=0)
    e0, e1 = _epoch(a), _epoch(a)
    assert e0 != e1  # a new order each epoch
    assert _epoch(DataLoader(_numbered(), batch_size=4, seed=0)) == e0  # same seed, same order
    assert _epoch(DataLoader(_numbered(), batch_size=4, seed=1)) != e0
    in_order = _epoch(DataLoader(_numbered(), batch_size=4, shuffle=False))
    assert [i for b in in_order for i in b] == list(range(23))


def test_resume_reproduces_remaining_batches() -> None:
    data, aug = _numbered(size=8), standard_augment(pad=2)
    ref = DataLoader(data, batch_size=4, seed=5, augment=aug)
    full = [asnumpy(x) for _ in range(3) for x, _ in _bounded(ref)]  # three uninterrupted epochs

    run = DataLoader(data, batch_size=4, seed=5, augment=aug)
    seen = [asnumpy(x) for x, _ in _bounded(run)]  # epoch 0
    for i, (x, _) in enumerate(_bounded(run)):  # epoch 1, interrupted after batch 2
        seen.append(asnumpy(x))
        if i == 2:
            state = run.state_dict()
            break
    assert state == {"seed": 5, "epoch": 1, "batch": 3, "batch_size": 4, "num_samples": 23}
    assert all(type(v) is int for v in state.values())

    resumed = DataLoader(data, batch_size=4, seed=0, augment=aug)  # seed comes from the state
    resumed.load_state_dict(state)
    rest = [asnumpy(x) for _ in range(2) for x, _ in _bounded(resumed)]  # end of epoch 1, then epoch 2
    assert len(seen) + len(rest) == len(full)
    for got, want in zip(seen + rest, full):
        np.testing.assert_array_equal(got, want)


def test_augment_gets_a_fresh_seeded_generator_per_batch() -> None:
    draws: list[float] = []

    def record(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        draws.append(float(rng.random()))
        return x

    loader = DataLoader(_numbered(), batch_size=8, seed=2, augment=record)
    _epoch(loader)
    _epoch(loader)
    assert len(set(draws)) == len(draws) == 6
    assert draws[4] == np.random.default_rng([2, 1, 1]).random()  # epoch 1, batch 1


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": 4, "seed": -1}, "seed"),
        ({"batch_size": 4, "device": "tpu"}, "device"),
        ({"batch_size": 4, "augment": 3}, "augment"),
    ],
)
def test_bad_arguments(kwargs: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=f"'{arg}'"):
        DataLoader(_numbered(), **kwargs)


def test_load_state_dict_refuses_a_mismatch() -> None:
    state = DataLoader(_numbered(), batch_size=4).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(_numbered(), batch_size=5).load_state_dict(state)
    with pytest.raises(ValueError, match="num_samples"):
        DataLoader(_numbered(10), batch_size=4).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        DataLoader(_numbered(), batch_size=4).load_state_dict({"seed": 0})
    with pytest.raises(ValueError, match="batch=9"):
        DataLoader(_numbered(), batch_size=4).load_state_dict({**state, "batch": 9})
