"""One run per output folder: the lock, ``--overwrite``, the write test, leftovers of killed runs.

Runs use the tiny model of ``test_train_cli.py`` on a few dozen digits.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from twins_np.cli import main
from twins_np.models import Twins
from twins_np.training import (
    OutDirBusyError,
    TrainConfig,
    Trainer,
    blas_threads,
    claim_out_dir,
    load_checkpoint,
    read_run_record,
)

TINY = json.dumps({"embed_dims": [8, 16, 32], "num_heads": [1, 2, 2], "depths": [2, 2, 2]})
QUICK = ["--model-overrides", TINY, "--batch-size", "16", "--limit-train", "32", "--limit-test", "16"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with blas_threads(1):
        yield


def train(out: Path, *extra: str) -> int:
    return main(["train", "--epochs", "1", *QUICK, "--out", str(out), *extra])


def _python(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, env=env)


# -- the lock ----------------------------------------------------------------------------------------------
def test_a_second_process_is_refused_while_a_run_holds_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another process holds OUT (as a running ``twins-np train`` does); killing it frees OUT at once."""
    holder = _python(
        f"""
        import time
        from twins_np.training import claim_out_dir
        with claim_out_dir({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(120)
        """
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert train(tmp_path) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"--out {tmp_path} is in use by another twins-np run (process {holder.pid})" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing of the refused run
    finally:
        holder.send_signal(signal.SIGKILL)  # as hard as a crash: the kernel still releases the lock
        holder.wait(timeout=30)
    with claim_out_dir(tmp_path):
        pass


def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real_fit = Trainer.fit

    def fit_and_try_a_second_claim(self, *args, **kwargs):
        with pytest.raises(OutDirBusyError, match="is in use by another twins-np run"):
            with claim_out_dir(tmp_path):
                pass
        seen.append(True)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit_and_try_a_second_claim)
    assert train(tmp_path) == 0 and seen == [True]
    with claim_out_dir(tmp_path):  # released after a finished run
        pass


def test_the_lock_is_released_after_an_error(tmp_path: Path) -> None:
    # CIFAR-10 is not there: the run fails after it claimed OUT
    assert train(tmp_path, "--data", "cifar10", "--data-dir", str(tmp_path / "none")) == 2
    with claim_out_dir(tmp_path):
        pass


# -- --overwrite and earlier runs ---------------------------------------------------------------------------
def _earlier_run(out: Path) -> dict[str, bytes]:
    files = {
        "checkpoint.npz": b"earlier checkpoint",
        "weights.npz": b"earlier weights",
        "metrics.json": b"[]",
        "metrics.csv": b"epoch\n",
        "learning_curves.png": b"png",
        "confusion_matrix.png": b"png",
        "predictions.png": b"png",
        "evaluation_test.json": b"{}",
        "confusion_matrix_test.png": b"png",
    }
    out.mkdir(exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    (out / "notes.txt").write_text("mine")
    return files


def test_overwrite_removes_the_earlier_runs_files_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _earlier_run(tmp_path)
    # a run that stops after one of two epochs must leave nothing of the earlier run beside its checkpoint
    assert main(["train", "--epochs", "2", *QUICK, "--out", str(tmp_path), "--overwrite", "--stop-after", "1"]) == 0
    assert "--overwrite: removed the earlier run's" in capsys.readouterr().out
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".lock", "checkpoint.npz", "learning_curves.png", "metrics.csv", "metrics.json", "notes.txt"]
    assert load_checkpoint(tmp_path / "checkpoint.npz")["epoch"] == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only twins-np's own files are removed


def test_overwrite_keeps_the_earlier_run_when_the_new_one_cannot_start(tmp_path: Path) -> None:
    files = _earlier_run(tmp_path)
    assert train(tmp_path, "--overwrite", "--data", "cifar10", "--data-dir", str(tmp_path / "none")) == 2
    assert all((tmp_path / name).read_bytes() == data for name, data in files.items())


def test_earlier_files_without_a_checkpoint_are_not_silently_replaced(tmp_path: Path, capsys) -> None:
    (tmp_path / "weights.npz").write_bytes(b"earlier weights")
    assert train(tmp_path) == 2
    assert "already holds an earlier run's files (weights.npz): pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "weights.npz").read_bytes() == b"earlier weights"


def test_nan_stop_never_names_another_runs_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer that has not written a checkpoint has no last good one, whatever lies in the folder."""
    from twins_np.training import NonFiniteLossError

    (tmp_path / "checkpoint.npz").write_bytes(b"another run's checkpoint")
    cfg = TrainConfig(model_overrides=json.loads(TINY), batch_size=16, limit_train=32, limit_test=16, epochs=1)
    trainer = Trainer(cfg, tmp_path, log=None, progress=False)
    monkeypatch.setattr(Twins, "loss", lambda self, x, y, ls=0.0: (float("nan"), None))
    with pytest.raises(NonFiniteLossError, match="No checkpoint had been written yet") as info:
        trainer.fit()
    assert info.value.checkpoint is None


# -- a folder that cannot be written ------------------------------------------------------------------------
def test_a_read_only_folder_is_refused_before_the_first_epoch(tmp_path: Path, monkeypatch, capsys) -> None:
    """The write test fails (as on a read-only file system): no data loaded, no epoch run."""
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == tmp_path:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".probe"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("the trainer was built"))
    assert train(tmp_path) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"twins-np train: error: --out {tmp_path} is not a writable folder: it lies on a read-only file system; "
        "choose another --out\n"
    )
    assert "epoch" not in captured.out


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_folder_without_write_permission_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert train(out) == 2
        assert f"--out {out} is not a writable folder" in capsys.readouterr().err
    finally:
        out.chmod(0o755)


def test_a_file_as_out_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert train(tmp_path / "file") == 2
    assert f"--out {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err
    assert train(tmp_path / "file" / "run") == 2
    assert "is a file" in capsys.readouterr().err


# -- leftovers of a killed run ------------------------------------------------------------------------------
def test_temporaries_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    """A process killed inside an atomic write leaves the temporary file; the next run removes it."""
    killed = _python(
        f"""
        import os
        from twins_np.io import atomic_write

        def write_then_die(f):
            f.write(b"half a checkpoint")
            f.flush()
            os._exit(9)  # killed before the rename (and before atomic_write's clean-up)

        atomic_write({str(tmp_path / "checkpoint.npz")!r}, write_then_die)
        """
    )
    assert killed.wait(timeout=60) == 9
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint.npz.") and leftovers[0].endswith(".tmp")
    (tmp_path / ".notes.txt.abcdefgh.tmp").write_text("not twins-np's")
    assert train(tmp_path) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers[0] not in names and ".notes.txt.abcdefgh.tmp" in names
    assert not [n for n in names if n.endswith(".tmp") and n != ".notes.txt.abcdefgh.tmp"]


# -- the run record in weights.npz ---------------------------------------------------------------------------
def test_weights_npz_records_the_run_and_loads_as_plain_weights(tmp_path: Path) -> None:
    import twins_np
    from twins_np.io import load_weights, read_weights

    assert train(tmp_path) == 0
    record = read_run_record(tmp_path / "weights.npz")
    assert record is not None and record["model"] == "twins_svt_teach32" and record["model_overrides"] == json.loads(TINY)
    state = read_weights(tmp_path / "weights.npz")
    assert "format" not in state and all(isinstance(a, np.ndarray) for a in state.values())
    model = twins_np.create_model("twins_svt_teach32", **json.loads(TINY), in_chans=1)
    load_weights(model, tmp_path / "weights.npz")  # strict: the record is no extra key
    assert read_run_record(tmp_path / "checkpoint.npz") is None
