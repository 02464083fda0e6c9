"""Tests for twins_np.data.cifar10 on tiny archives written in the real format."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from twins_np.data import load_dataset
from twins_np.data.cifar10 import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, load_cifar10, read_batches

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
PER_BATCH = 3


def _batch(i: int) -> dict:
    rng = np.random.default_rng(i)
    data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
    # Image 0 of each batch: constant planes R = 10, G = 20 + i, B = 30, to check channel order.
    data[0] = np.repeat(np.array([10, 20 + i, 30], dtype=np.uint8), 1024)
    labels = [(i + j) % 10 for j in range(PER_BATCH)]
    return {b"batch_label": b"batch %d" % i, b"labels": labels, b"data": data, b"filenames": [b"x.png"] * PER_BATCH}


def _write_folder(root: Path, protocol: int = 2, skip: str = "") -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate(NAMES):
        if name != skip:
            (folder / name).write_bytes(pickle.dumps(_batch(i), protocol=protocol))
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": PER_BATCH}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


def _write_archive(root: Path) -> Path:
    folder = _write_folder(root / "src")
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_folder_round_trip(tmp_path: Path, protocol: int) -> None:
    folder = _write_folder(tmp_path, protocol)
    images, labels, classes = read_batches(folder, "train")
    assert images.shape == (5 * PER_BATCH, 3, 32, 32) and images.dtype == np.uint8
    # Batches are concatenated in the order data_batch_1..5, rows in file order.
    for i in range(5):
        raw = _batch(i)
        np.testing.assert_array_equal(images[PER_BATCH * i : PER_BATCH * (i + 1)], raw[b"data"].reshape(-1, 3, 32, 32))
        assert labels[PER_BATCH * i : PER_BATCH * (i + 1)].tolist() == raw[b"labels"]
    assert classes == CIFAR10_CLASSES
    first = images[0]
    assert (first[0] == 10).all() and (first[1] == 20).all() and (first[2] == 30).all()


def test_archive_and_folder_give_the_same_data(tmp_path: Path) -> None:
    archive = _write_archive(tmp_path)
    from_tar = read_batches(archive, "test")
    for where in (tmp_path, tmp_path / "src", tmp_path / "src" / "cifar-10-batches-py"):
        got = read_batches(where, "test")
        np.testing.assert_array_equal(got[0], from_tar[0])
        np.testing.assert_array_equal(got[1], from_tar[1])
    np.testing.assert_array_equal(from_tar[0], _batch(5)[b"data"].reshape(-1, 3, 32, 32))


def test_load_normalises_per_channel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_archive(tmp_path)
    monkeypatch.setenv("TWINS_NP_DATA", str(tmp_path))  # the default data_dir
    data = load_cifar10("test")
    assert data.images.shape == (PER_BATCH, 3, 32, 32) and data.images.dtype == np.float32
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [5, 6, 7] and data.name == "cifar10"
    for c, value in enumerate((10, 25, 30)):
        want = (value / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        np.testing.assert_allclose(data.images[0, c], want, rtol=1e-5)
    small = load_dataset("cifar10", "test", image_size=16, data_dir=str(tmp_path))
    assert small.images.shape == (PER_BATCH, 3, 16, 16)
    np.testing.assert_allclose(small.images[0, 0], data.images[0, 0, 0, 0], rtol=1e-5)  # constant stays constant


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        read_batches(tmp_path)
    _write_folder(tmp_path, skip="data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        read_batches(tmp_path, "train")
    assert len(read_batches(tmp_path, "test")[1]) == PER_BATCH  # the test split is complete


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load global '(os|posix)\.system'"):
        read_batches(folder, "test")
    assert not marker.exists()
    (folder / "test_batch").write_bytes(pickle.dumps({b"x": eval}))  # builtins.eval
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        read_batches(folder, "test")


def test_wrong_layout_and_arguments(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="test_batch"):
        read_batches(folder, "test")
    with pytest.raises(ValueError, match="'split'"):
        read_batches(folder, "validation")
    with pytest.raises(ValueError, match="'image_size'"):
        load_cifar10("train", image_size=-3, data_dir=folder)
