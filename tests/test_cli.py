"""Conventions of the ``twins-np`` command line: --version, help texts, suggestions, flag names, one GPU message."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import twins_np
from twins_np.backend import cupy_available
from twins_np.cli import build_parser, main
from twins_np.commands._common import NO_GPU
from twins_np.training import blas_threads

TINY = json.dumps({"embed_dims": [8, 16, 32], "num_heads": [1, 2, 2], "depths": [2, 2, 2]})
QUICK = ["--model-overrides", TINY, "--batch-size", "16", "--limit-train", "32", "--limit-test", "16"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"twins-np {twins_np.__version__}\n"


def test_every_subcommand_has_a_description() -> None:
    commands = _subparsers(build_parser())
    assert set(commands) >= {"info", "gradcheck", "flops", "convert", "predict", "train", "evaluate", "demo"}
    missing = [name for name, p in commands.items() if name != "assignment" and not p.description]
    assert not missing, f"no description on --help of: {missing}"


def test_did_you_mean_for_model_names(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["flops", "twins_svt_smal"], ["train", "--model", "twins_pcpvt_teach23", "--out", "x"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "did you mean 'twins_" in err and "choose one of twins_pcpvt_base" in err
    assert main(["flops", "resnet50"]) == 2
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess


def test_did_you_mean_for_model_overrides_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model-overrides", '{"window_size": [4, 4, 4]}', "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--model-overrides: unknown key 'window_size'" in err and "valid keys: attn_drop_rate, check_finite" in err
    assert main(["train", "--model-overrides", '{"depth": [1, 1, 1]}', "--out", str(tmp_path)]) == 2
    assert "unknown key 'depth' (did you mean 'depths'?)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--warmup-epochs", "5", "--epochs", "2"], "--warmup-epochs (5.0) must not exceed --epochs (2)"),
        (["--data-seed", "-1"], "--data-seed must be >= 0"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--data", "cifar10", "--data-dir", "nowhere"], "pass its location with --data-dir"),
    ],
)
def test_messages_name_flags_as_typed(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str) -> None:
    assert main(["train", *argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert flag in err, err
    assert "batch_size" not in err and "data_dir" not in err and "warmup_epochs" not in err


@pytest.mark.skipif(cupy_available(), reason="a GPU is present")
def test_one_wording_for_no_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = Path(__file__).parent / "data_files" / "chelsea.jpg"
    commands = {
        "train": ["train", "--out", str(tmp_path / "run")],
        "evaluate": ["evaluate", "--weights", "w.npz"],
        "predict": ["predict", str(image), "--weights", "w.npz"],
        "demo": ["demo", "--out", str(tmp_path / "demo"), "--no-gradcheck"],
        "gradcheck": ["gradcheck"],
    }
    for name, argv in commands.items():
        assert main([*argv, "--device", "gpu"]) == 2
        assert capsys.readouterr().err == f"twins-np {name}: error: {NO_GPU}\n"
    assert list(tmp_path.iterdir()) == []  # refused before any folder was made
    from twins_np.training import TrainConfig, Trainer

    with pytest.raises(RuntimeError) as info:  # the library states the fact; the commands add their flags
        Trainer(TrainConfig(device="gpu"), tmp_path)
    assert str(info.value) == "device='gpu' needs CuPy and a CUDA GPU, and none was found"


# -- evaluate without --model ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    with blas_threads(1):
        assert main(["train", "--epochs", "1", *QUICK, "--out", str(out)]) == 0
    return out


def test_evaluate_weights_npz_without_model(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """weights.npz of twins-np train records the model and its overrides: --weights alone is enough."""
    with blas_threads(1):
        assert main(["evaluate", "--weights", str(run_dir / "weights.npz"), "--limit", "16", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"twins_svt_teach32 on digits (test split, 16 images of 32x32), weights {run_dir / 'weights.npz'}")
    report = json.loads((tmp_path / "evaluation_test.json").read_text())
    last = json.loads((run_dir / "metrics.json").read_text())[-1]
    assert report["accuracy"] == last["test_acc"]  # the same 16 test images, in eval mode


def test_evaluate_old_weights_without_record_needs_model(run_dir: Path, tmp_path: Path, capsys) -> None:
    from twins_np.io import read_weights, save_weights

    old = save_weights(read_weights(run_dir / "weights.npz"), tmp_path / "weights.npz")  # as twins-np 0.1.0 wrote it
    assert main(["evaluate", "--weights", str(old)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"twins-np evaluate: error: --model is needed: {old} records no model (checkpoint.npz and weights.npz of "
        "twins-np train do; a weights.npz of twins-np 0.1.0 and other weights files do not)\n"
    )
    with blas_threads(1):
        argv = ["evaluate", "--weights", str(old), "--model", "twins_svt_teach32", "--model-overrides", TINY, "--limit", "8"]
        assert main(argv) == 0


def test_evaluate_help_says_what_it_does(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside the words
    assert main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "accuracy" in text and "confusion matrix" in text and "twins-np evaluate --weights run/weights.npz" in text
