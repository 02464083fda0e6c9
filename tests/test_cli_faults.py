"""Every ``twins-np`` command ends cleanly: one line on stderr and exit 2 for each class of fault.

One test per class: a full disk, a read-only file system, a file where a folder is expected
and the other way round, damaged checkpoints (``--resume``, ``evaluate``), images Pillow
cannot read, a hostile CIFAR-10 batch, bad ``--model-overrides`` values, NaN/Inf logits,
argparse's own errors, and running out of memory. Exit 1 is left to a training run stopped
by a NaN (``tests/training/test_train_cli.py``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import twins_np
from twins_np.cli import main
from twins_np.io import save_weights
from twins_np.training import blas_threads

PIL = pytest.importorskip("PIL")

TINY = json.dumps({"embed_dims": [8, 16, 32], "num_heads": [1, 2, 2], "depths": [2, 2, 2]})
QUICK = ["--model-overrides", TINY, "--batch-size", "16", "--limit-train", "32", "--limit-test", "16"]
PHOTO = Path(__file__).parent / "data_files" / "chelsea.jpg"


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with blas_threads(1):
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run of the tiny model: checkpoint.npz and weights.npz."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--epochs", "1", *QUICK, "--out", str(out)]) == 0
    return out


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``twins-np ARGV``; assert exit 2 and one clean line on stderr; return that line."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"twins-np {argv[0]}: error: "), err
    return lines[0]


def _huge_head(model):
    """Finite head weights of +-3e38: every logit overflows float32 (to +-inf, or nan)."""
    signs = np.sign(np.random.default_rng(0).standard_normal(model.head.weight.data.shape))
    model.head.weight.data = (signs * 3e38).astype(np.float32)
    return model


def _teach64_1000(tmp_path: Path, name: str = "w.npz", huge: bool = False) -> Path:
    model = twins_np.create_model("twins_svt_teach64", num_classes=1000, seed=0)
    return save_weights(_huge_head(model) if huge else model, tmp_path / name)


# -- the disk -----------------------------------------------------------------------------------------------
def test_full_disk(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """ENOSPC while a file is written (fsync reports it on a full disk): train, evaluate, convert."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    line = fails(["train", "--epochs", "1", *QUICK, "--out", tmp_path / "run"], capsys)
    assert line.endswith(f"{tmp_path / 'run'}: the disk is full; free some space or write elsewhere")
    assert not list((tmp_path / "run").glob("*.tmp")) and not (tmp_path / "run" / "checkpoint.npz").exists()

    line = fails(["evaluate", "--weights", run_dir / "weights.npz", "--limit", "4", "--out", tmp_path / "ev"], capsys)
    assert line.endswith(f"{tmp_path / 'ev'}: the disk is full; free some space or write elsewhere")
    line = fails(["convert", run_dir / "weights.npz", tmp_path / "w.safetensors"], capsys)
    assert line.endswith(f"{tmp_path / 'w.safetensors'}: the disk is full; free some space or write elsewhere")
    assert not (tmp_path / "w.safetensors").exists()


def test_read_only_file_system(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    line = fails(["convert", run_dir / "weights.npz", tmp_path / "w.safetensors"], capsys)
    assert line.endswith(f"{tmp_path}: the file system is read-only; write elsewhere")
    line = fails(["train", "--epochs", "1", *QUICK, "--out", tmp_path / "run"], capsys)
    assert "is not a writable folder: it lies on a read-only file system" in line


def test_a_file_where_a_folder_is_expected(run_dir: Path, tmp_path: Path, capsys) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    assert "is a file, not a folder" in fails(["train", *QUICK, "--out", file], capsys)
    assert "is a file" in fails(["train", *QUICK, "--out", file / "run"], capsys)
    assert "is a file, not a folder" in fails(["evaluate", "--weights", run_dir / "weights.npz", "--out", file], capsys)
    assert "does not exist" in fails(["convert", run_dir / "weights.npz", file / "w.npz"], capsys)


def test_a_folder_where_a_file_is_expected(tmp_path: Path, capsys) -> None:
    assert f"IMAGE {tmp_path} is a folder" in fails(["predict", tmp_path, "--weights", "w.npz"], capsys)
    assert f"--weights {tmp_path} is a folder" in fails(["predict", PHOTO, "--weights", tmp_path], capsys)
    assert f"--weights {tmp_path} is a folder" in fails(["evaluate", "--weights", tmp_path], capsys)
    assert f"IN {tmp_path} is a folder" in fails(["convert", tmp_path, tmp_path / "w.npz"], capsys)
    assert f"OUT {tmp_path} is a folder" in fails(["convert", PHOTO, tmp_path], capsys)


# -- damaged files --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_damaged_checkpoint_on_resume_and_evaluate(run_dir: Path, tmp_path: Path, damage: str, capsys) -> None:
    data = (run_dir / "checkpoint.npz").read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # the middle of the file overwritten: the members' CRCs fail
        mid = len(data) // 2
        data = data[:mid] + bytes(4096) + data[mid + 4096 :]
    (tmp_path / "checkpoint.npz").write_bytes(data)
    weights = (run_dir / "weights.npz").read_bytes()
    (tmp_path / "weights.npz").write_bytes(weights[: len(weights) // 2])

    assert str(tmp_path / "checkpoint.npz") in fails(["train", "--resume", "--out", tmp_path], capsys)
    assert str(tmp_path / "checkpoint.npz") in fails(["evaluate", "--weights", tmp_path / "checkpoint.npz"], capsys)
    assert str(tmp_path / "weights.npz") in fails(["evaluate", "--weights", tmp_path / "weights.npz"], capsys)


@pytest.mark.parametrize("kind", ["text", "truncated-jpeg", "empty"])
def test_images_pillow_cannot_read(tmp_path: Path, kind: str, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "cat.jpg"
    image.write_bytes({"text": b"not an image\n", "truncated-jpeg": PHOTO.read_bytes()[:2000], "empty": b""}[kind])
    # the image is checked before the weights are read
    monkeypatch.setattr("twins_np.io.read_weights", lambda *a, **k: pytest.fail("the weights were read"))
    line = fails(["predict", image, "--model", "twins_svt_teach64", "--weights", tmp_path / "w.npz"], capsys)
    assert f"IMAGE {image} cannot be read as an image (" in line


def test_hostile_cifar10_batch(tmp_path: Path, capsys) -> None:
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}, protocol=2))
    line = fails(["train", *QUICK, "--data", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "run"], capsys)
    assert f"--data-dir {tmp_path}: " in line and "refused to load global" in line
    assert not (tmp_path / "pwned").exists()


# -- bad values -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"embed_dims": [8, 0, 32]}, r"embed_dims must be a list of 3 integers >= 1"),
        ({"depths": [2, -1, 2]}, r"depths must be a non-empty list of block counts >= 0, got \[2, -1, 2\]"),
        ({"patch_size": -2}, r"patch_size must be an integer >= 1, got -2"),
        ({"norm_eps": -1e-5}, r"norm_eps must be a number > 0"),
        ({"num_heads": "two"}, r"num_heads must be a list of 3 integers >= 1 .*, got \"two\""),
        ({"img_size": 32.5}, r"img_size must be an integer >= 1 or a list \[H, W\] of them, got 32.5"),
        ({"drop_rate": 1.5}, r"drop_rate must be a rate in \[0, 1\)"),
        ({"embed_dims": [8, 16, 30], "num_heads": [1, 2, 4]}, r"embed_dims\[2\] = 30 is not divisible by num_heads\[2\] = 4"),
        ({"sr_mode": "max"}, r"sr_mode must be one of 'conv', 'avg', 'sep'"),
        ({"wss": [4096, 4, 4]}, r"wss\[0\] = 4096 is far larger than stage 1's 16x16 token map.* would need [0-9.]+ TiB"),
        ({"embed_dim": [8]}, r"unknown key 'embed_dim' \(did you mean 'embed_dims'\?\); valid keys: attn_drop_rate"),
    ],
)
def test_invalid_model_overrides(tmp_path: Path, overrides: dict, message: str, capsys) -> None:
    import re

    line = fails(["train", "--model-overrides", json.dumps(overrides), "--out", tmp_path / "run"], capsys)
    assert re.search("--model-overrides: " + message, line), line
    assert not (tmp_path / "run").exists()  # refused before the folder was touched
    line = fails(
        ["evaluate", "--weights", "w.npz", "--model", "twins_svt_teach32", "--model-overrides", json.dumps(overrides)], capsys
    )
    assert re.search(message, line), line


def test_non_finite_logits_from_predict_and_evaluate(tmp_path: Path, capsys) -> None:
    """Finite weights so large that the logits overflow: no probability nan, no accuracy from NaN."""
    weights = _teach64_1000(tmp_path, huge=True)
    line = fails(["predict", PHOTO, "--model", "twins_svt_teach64", "--weights", weights], capsys)
    assert "the model's output holds" in line and "NaN or infinite" in line and str(weights) in line

    model = _huge_head(twins_np.create_model("twins_svt_teach32", **json.loads(TINY), in_chans=1, seed=0))
    weights = save_weights(model, tmp_path / "digits.npz")
    argv = ["evaluate", "--weights", weights, "--model", "twins_svt_teach32", "--model-overrides", TINY, "--limit", "8"]
    line = fails([*argv, "--out", tmp_path], capsys)
    assert "the logits of images 0-7 hold" in line and f"the weights in {weights} are broken" in line
    assert not (tmp_path / "evaluation_test.json").exists()


def test_argparse_errors_return_2_help_and_version_0(capsys) -> None:
    assert main(["train", "--lr", "fast", "--out", "x"]) == 2
    assert "argument --lr: invalid float value: 'fast'" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    capsys.readouterr()
    assert main(["--help"]) == 0 and "COMMAND" in capsys.readouterr().out
    assert main(["predict", "--help"]) == 0
    capsys.readouterr()
    assert main(["--version"]) == 0 and capsys.readouterr().out == f"twins-np {twins_np.__version__}\n"


def test_out_of_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    weights = _teach64_1000(tmp_path)

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 64.0 GiB for an array with shape (8, 4, 65536, 65536)")

    monkeypatch.setattr("twins_np.models.create_model", no_memory)
    line = fails(["predict", PHOTO, "--model", "twins_svt_teach64", "--weights", weights], capsys)
    assert "out of memory: Unable to allocate 64.0 GiB" in line


def test_flops_bad_sizes_name_the_flags(capsys) -> None:
    assert "--batch must be >= 1, got 0" in fails(["flops", "twins_svt_small", "--batch", "0"], capsys)
    assert "--size must be two sides >= 1, got 0 0" in fails(["flops", "twins_svt_small", "--size", "0", "0"], capsys)


# -- signals ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _training_process(out: Path, sigint: Any) -> Iterator[subprocess.Popen]:
    """A real ``twins-np train`` of 100 epochs into ``out``, handed over once its first checkpoint is
    saved, started with SIGINT's disposition ``sigint`` (SIG_DFL as in a terminal, SIG_IGN as under
    ``nohup``: a suite started in the background passes SIGINT on ignored); killed if still running."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    argv = [sys.executable, "-m", "twins_np", "train", "--epochs", "100", *QUICK, "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.npz").exists():  # the first epoch is done and saved
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(
    "signame, code, line",
    [("SIGTERM", 143, "twins-np train: terminated (SIGTERM)"), ("SIGINT", 130, "twins-np train: interrupted")],
)
def test_sigterm_ends_training_like_ctrl_c(tmp_path: Path, signame: str, code: int, line: str) -> None:
    """``kill PID`` or Ctrl-C mid-run: one line, exit 143 or 130, the last checkpoint intact and resumable (a real process)."""
    from twins_np.training import load_checkpoint

    out = tmp_path / "run"
    with _training_process(out, signal.SIG_DFL) as proc:
        time.sleep(0.5)  # inside the next epoch
        proc.send_signal(getattr(signal, signame))
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, (stdout, stderr)
    assert stderr.splitlines() == [line], stderr
    ckpt = load_checkpoint(out / "checkpoint.npz")  # intact: written atomically, never half
    assert 1 <= ckpt["epoch"] < 100 and len(ckpt["history"]) == ckpt["epoch"]
    assert not list(out.glob(".*.tmp"))  # an interrupted write leaves no temporary file
    assert main(["train", "--resume", "--out", str(out), "--stop-after", "1"]) == 0


def test_an_ignored_ctrl_c_stays_ignored_and_sigterm_still_stops(tmp_path: Path) -> None:
    """Started with SIGINT ignored (``nohup``, ``cmd &`` in a script), a run keeps ignoring Ctrl-C,
    as any program should there; ``kill PID`` still ends it with one line and exit 143."""
    with _training_process(tmp_path / "run", signal.SIG_IGN) as proc:
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None, proc.communicate()  # still training
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and stderr.splitlines() == ["twins-np train: terminated (SIGTERM)"], (stdout, stderr)


def test_memory_advice_names_the_knobs_of_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Out of memory in predict (no --batch-size there), evaluate and train: each names its own flags."""

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 64.0 GiB for an array with shape (8, 4, 65536, 65536)")

    weights = _teach64_1000(tmp_path)
    monkeypatch.setattr("twins_np.models.create_model", no_memory)
    line = fails(["predict", PHOTO, "--model", "twins_svt_teach64", "--weights", weights], capsys)
    assert "no batch to shrink" in line and "--batch-size" not in line
    monkeypatch.setattr("twins_np.training.tasks.create_model", no_memory)
    line = fails(["evaluate", "--weights", weights, "--model", "twins_svt_teach64", "--limit", "2"], capsys)
    assert line.endswith("try a smaller --batch-size or --image-size")
    line = fails(["train", *QUICK, "--out", tmp_path / "run"], capsys)
    assert line.endswith("try a smaller --batch-size or --image-size, or a smaller model (--model, --model-overrides)")


def test_pillow_warnings_reach_the_terminal_as_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import warnings

    from PIL import ImageFile

    real_load = ImageFile.ImageFile.load

    def load_with_a_warning(self):
        warnings.warn("Corrupt EXIF data.  Expecting to read 12 bytes but only got 2.", UserWarning, stacklevel=1)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load_with_a_warning)
    weights = _teach64_1000(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as a user's terminal shows them
        assert main(["predict", str(PHOTO), "--model", "twins_svt_teach64", "--weights", str(weights)]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"twins-np predict: warning: IMAGE {PHOTO}: Corrupt EXIF data. Expecting to read 12 bytes but only got 2."
    ], err


def test_sigterm_inside_a_finalizer_is_not_lost() -> None:
    """A SIGTERM whose handler runs inside a ``__del__`` (where Python swallows exceptions) still ends the command."""
    import signal
    import time

    from twins_np import cli

    class ClosesSlowly:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside the finalizer
                time.sleep(0.0001)

    swallowed: list[object] = []
    record = swallowed.append
    previous_hook = sys.unraisablehook
    sys.unraisablehook = record
    try:
        with pytest.raises(cli.Terminated):
            with cli._sigterm_as_interrupt():
                ClosesSlowly()  # dropped at once: its __del__ runs here
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # the rest of a long run
                    time.sleep(0.001)
        assert sys.unraisablehook is record  # the command's hook is gone again
    finally:
        sys.unraisablehook = previous_hook
    assert swallowed == []  # nothing printed as "Exception ignored"
