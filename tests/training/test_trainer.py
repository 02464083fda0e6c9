"""Tests for twins_np.training.trainer: learning, bit-identical resume, NaN stop, metric files.

Every run uses a tiny Twins-SVT (widths 8/16/32, two blocks per stage) on a few
dozen digits, so each test takes seconds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from twins_np.data import load_dataset
from twins_np.models import Twins
from twins_np.training import (
    METRIC_COLUMNS,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    blas_threads,
    load_checkpoint,
    validate_config,
)
from twins_np.training import trainer as trainer_module

TINY = {"embed_dims": [8, 16, 32], "num_heads": [1, 2, 2], "depths": [2, 2, 2]}


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """The tiny matrix products gain nothing from threads, and waiting threads slow a busy machine down."""
    with blas_threads(1):
        yield


def tiny_config(**changes) -> TrainConfig:
    base = dict(model_overrides=TINY, epochs=2, batch_size=16, limit_train=48, limit_test=16, lr=2e-3, drop_path=0.1)
    return TrainConfig(**{**base, **changes})


def _params(trainer: Trainer) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in trainer.model.state_dict().items()}


def test_train_epochs_overfit_a_fixed_batch(tmp_path: Path) -> None:
    """16 digits, no augmentation, drop path or weight decay: 30 full-batch updates must fit them."""
    batch = load_dataset("digits", "train").subset(np.arange(16))
    cfg = tiny_config(epochs=30, lr=1e-2, warmup_epochs=0, drop_path=0.0, augment=False, label_smoothing=0.0, weight_decay=0.0)
    trainer = Trainer(cfg, tmp_path, train_set=batch, test_set=batch, progress=False, log=None)
    first = trainer.evaluate(batch)
    losses = [trainer.train_epoch()[0] for _ in range(cfg.epochs)]
    last = trainer.evaluate(batch)
    assert losses[-1] < 0.5 * losses[0]
    assert last.loss < 0.5 * first.loss
    assert last.accuracy > 0.9, f"train accuracy {last.accuracy:.2f} after {cfg.epochs} updates"
    assert trainer.schedule.t == cfg.epochs  # one schedule step per update
    assert all(p.data.dtype == np.float32 for p in trainer.model.parameters())


def test_optimizer_exempts_biases_norms_and_peg_from_decay(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(), tmp_path, progress=False, log=None)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    groups = {g["weight_decay"]: [names[id(p)] for p in g["params"]] for g in trainer.optimizer.param_groups}
    assert set(groups) == {0.0, 0.05}
    assert any(n.startswith("pos_block.") and n.endswith(".weight") for n in groups[0.0])
    assert all(n.endswith(".weight") and "norm" not in n and not n.startswith("pos_block.") for n in groups[0.05])
    steps = len(trainer.loader)
    assert (trainer.schedule.total_steps, trainer.schedule.warmup_steps) == (2 * steps, steps)


def _resume_run(directory: Path, cfg: TrainConfig) -> Trainer:
    Trainer(cfg, directory, progress=False, log=None).fit(stop_after=1)
    assert load_checkpoint(directory / "checkpoint.npz")["epoch"] == 1
    resumed = Trainer.resume(directory, progress=False, log=None)
    assert resumed.epoch == 1
    resumed.fit()
    return resumed


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two epochs straight vs one epoch, a fresh process-like restart, one more (drop path and augmentation on)."""
    cfg = tiny_config()
    straight = Trainer(cfg, tmp_path / "straight", progress=False, log=None)
    straight.fit()
    resumed = _resume_run(tmp_path / "resumed", cfg)

    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a), [k for k in a if not np.array_equal(a[k], b[k])][:3]
    for sa, sb in zip(straight.optimizer.state, resumed.optimizer.state):
        assert sa["step"] == sb["step"]
        assert np.array_equal(sa["exp_avg"], sb["exp_avg"]) and np.array_equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    drop = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]  # noqa: E731
    assert drop(straight.history) == drop(resumed.history)
    assert np.array_equal(np.load(tmp_path / "straight" / "weights.npz")["head.weight"], b["head.weight"])

    # Control: without the generator states the drop-path masks of epoch 2 differ, and so do the weights.
    monkeypatch.setattr(trainer_module, "restore_rng_states", lambda model, states: None)
    careless = _resume_run(tmp_path / "careless", cfg)
    c = _params(careless)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(epochs=3)
    Trainer(cfg, tmp_path, progress=False, log=None).fit(stop_after=1)
    ckpt = tmp_path / "checkpoint.npz"
    before = ckpt.read_bytes()
    metrics_before = (tmp_path / "metrics.csv").read_bytes()

    real_loss = Twins.loss
    calls = {"n": 0}

    def loss_nan_at_second_step(self, x, y, label_smoothing=0.0):
        loss, logits = real_loss(self, x, y, label_smoothing)
        calls["n"] += 1
        return (float("nan") if calls["n"] == 2 else loss), logits

    monkeypatch.setattr(Twins, "loss", loss_nan_at_second_step)
    trainer = Trainer.resume(tmp_path, progress=False, log=None)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    err = info.value
    assert (err.epoch, err.step, err.checkpoint) == (2, 2, ckpt)
    assert "loss is nan at epoch 2, step 2/3" in str(err) and "left untouched" in str(err) and str(ckpt) in str(err)
    assert ckpt.read_bytes() == before
    assert (tmp_path / "metrics.csv").read_bytes() == metrics_before
    assert not (tmp_path / "weights.npz").exists()


def test_nan_in_first_epoch_says_there_is_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Twins, "loss", lambda self, x, y, label_smoothing=0.0: (float("inf"), None))
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 1, step 1/3\. No checkpoint"):
        Trainer(tiny_config(), tmp_path, progress=False, log=None).fit()
    assert not (tmp_path / "checkpoint.npz").exists()


def test_huge_learning_rate_is_caught_as_non_finite(tmp_path: Path) -> None:
    """No monkeypatching: an absurd lr without clipping breaks the weights for real."""
    cfg = tiny_config(epochs=3, lr=1e30, warmup_epochs=0, clip_grad=0.0, min_lr=1e30, weight_decay=0.0)
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        Trainer(cfg, tmp_path, progress=False, log=None).fit()
    assert not (tmp_path / "checkpoint.npz").exists()


def test_metric_files_and_figures(tmp_path: Path) -> None:
    lines: list[str] = []
    trainer = Trainer(tiny_config(), tmp_path, progress=False, log=lines.append)
    trainer.fit()
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_s")
    assert tuple(rows[0].keys()) == METRIC_COLUMNS == expected
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    js = json.loads((tmp_path / "metrics.json").read_text())
    assert [tuple(r) for r in js] == [METRIC_COLUMNS] * 2
    for r in js:
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0
        assert r["train_loss"] > 0 and r["test_loss"] > 0 and r["seconds"] > 0 and r["images_per_s"] > 0
    assert js[1]["lr"] < js[0]["lr"]  # the cosine decays after warm-up
    assert float(rows[1]["test_acc"]) == js[1]["test_acc"] == trainer.last_eval.accuracy
    for name in ("learning_curves.png", "confusion_matrix.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = np.load(tmp_path / "weights.npz", allow_pickle=False)
    assert sorted(weights.files) == sorted(trainer.model.state_dict())
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2") and "img/s" in lines[1]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"warmup_epochs": 5.0}, "warmup_epochs"),
        ({"model": "resnet50"}, "unknown model"),
        ({"data": "mnist"}, "unknown dataset"),
        ({"model_overrides": {"num_classes": 3}}, "model_overrides"),
    ],
)
def test_config_rejects_bad_settings(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_config(tiny_config(**change))
