"""Tests for `twins-np train`, `twins-np evaluate` and `twins-np demo` (exit codes, files, messages).

Runs use a tiny model (--model-overrides) on a few dozen digits (hidden --limit-* options).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from twins_np.backend import cupy_available
from twins_np.cli import main
from twins_np.models import Twins
from twins_np.training import blas_threads

TINY = json.dumps({"embed_dims": [8, 16, 32], "num_heads": [1, 2, 2], "depths": [2, 2, 2]})
QUICK = ["--model-overrides", TINY, "--batch-size", "16", "--limit-train", "32", "--limit-test", "16"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """The tiny matrix products gain nothing from threads, and waiting threads slow a busy machine down."""
    with blas_threads(1):
        yield


def train(out: Path, *extra: str) -> int:
    return main(["train", "--epochs", "1", *QUICK, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert train(out) == 0
    return out


def test_train_runs_one_short_epoch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert train(tmp_path / "run", "--lr", "5e-4", "--no-augment", "--warmup-epochs", "0", "--threads", "1") == 0
    out = capsys.readouterr().out
    assert "training twins_svt_teach32 on digits (32 train / 16 test images, 1 channel(s), 10 classes) on cpu" in out
    assert "epoch 1/1" in out and "finished: test accuracy" in out
    for name in ("checkpoint.npz", "metrics.csv", "metrics.json", "learning_curves.png", "weights.npz", "confusion_matrix.png"):
        assert (tmp_path / "run" / name).is_file(), name
    from twins_np.training import load_checkpoint

    config = load_checkpoint(tmp_path / "run" / "checkpoint.npz")["config"]
    assert (config["lr"], config["augment"], config["warmup_epochs"], config["limit_train"]) == (5e-4, False, 0.0, 32)
    assert config["model_overrides"] == json.loads(TINY)


def test_train_refuses_to_overwrite_a_run(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (trained / "checkpoint.npz").read_bytes()
    assert train(trained) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert (trained / "checkpoint.npz").read_bytes() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--label-smoothing", "1.5"], "--label-smoothing"),
        (["--model-overrides", '{"num_classes": 3}'], "--model-overrides must not set"),
        (["--resume"], "no checkpoint at"),
    ],
)
def test_train_bad_settings_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(["train", *QUICK, "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--lr", "fast"], ["--model", "resnet50"], ["--model-overrides", "[1]"], []])
def test_train_unparsable_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *argv]) == 2  # argparse's error is returned, not raised; the last case lacks --out
    assert "twins-np train: error: " in capsys.readouterr().err


def test_resume_refuses_changed_settings(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", "--out", str(trained), "--lr", "0.5"]) == 2
    assert "--lr 0.5 (saved: 0.001)" in capsys.readouterr().err


def test_resume_continues_and_nan_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    assert main(["train", "--epochs", "3", *QUICK, "--out", str(tmp_path), "--stop-after", "1"]) == 0
    assert "stopped after epoch 1/3" in capsys.readouterr().out
    assert main(["train", "--resume", "--out", str(tmp_path), "--stop-after", "1"]) == 0
    assert "resuming" in capsys.readouterr().out
    ckpt = tmp_path / "checkpoint.npz"
    before = ckpt.read_bytes()

    real_loss = Twins.loss
    monkeypatch.setattr(Twins, "loss", lambda self, x, y, ls=0.0: (float("nan"), real_loss(self, x, y, ls)[1]))
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "loss is nan at epoch 3, step 1/2" in err and f"{ckpt} (after epoch 2), was left untouched" in err
    assert ckpt.read_bytes() == before
    assert len(json.loads((tmp_path / "metrics.json").read_text())) == 2


def test_evaluate_prints_accuracy_and_writes_confusion_matrix(trained: Path, tmp_path: Path, capsys) -> None:
    argv = ["evaluate", "--weights", str(trained / "weights.npz"), "--model-overrides", TINY, "--limit", "16"]
    assert main([*argv, "--model", "twins_svt_teach32", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "confusion matrix (rows: true class, columns: predicted class)" in out
    assert (tmp_path / "confusion_matrix_test.png").read_bytes()[:8] == PNG
    report = json.loads((tmp_path / "evaluation_test.json").read_text())
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 16 and report["accuracy"] == np.trace(cm) / 16
    # The training run evaluated the same 16 test images in eval mode: same accuracy.
    last = json.loads((trained / "metrics.json").read_text())[-1]
    assert report["accuracy"] == last["test_acc"]

    # a checkpoint carries its own settings: no --model needed
    assert main(["evaluate", "--weights", str(trained / "checkpoint.npz"), "--limit", "16", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "evaluation_test.json").read_text())["accuracy"] == report["accuracy"]


def test_evaluate_wrong_architecture_exits_2(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # weights.npz records the run's --model-overrides; '{}' replaces them by none: the full teach32 model
    argv = ["evaluate", "--weights", str(trained / "weights.npz"), "--model", "twins_svt_teach32", "--limit", "4"]
    argv += ["--model-overrides", "{}"]
    assert main(argv) == 2
    assert "does not fit" in capsys.readouterr().err


@pytest.mark.skipif(cupy_available(), reason="a GPU is present")
@pytest.mark.parametrize("command", ["train", "evaluate", "demo"])
def test_device_gpu_without_gpu_exits_2(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = {
        "train": ["train", "--out", str(tmp_path)],
        "evaluate": ["evaluate", "--weights", str(tmp_path / "w.npz"), "--model", "twins_svt_teach32"],
        "demo": ["demo", "--out", str(tmp_path), "--no-gradcheck"],
    }[command]
    assert main([*argv, "--device", "gpu"]) == 2
    assert "--device gpu needs CuPy and a CUDA GPU" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_demo_quick_run_writes_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--out", str(tmp_path), "--epochs", "1", "--no-gradcheck", "--limit-train", "16", "--limit-test", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "training images/s" in out
    for name in ("learning_curves.png", "confusion_matrix.png", "predictions.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG, name
