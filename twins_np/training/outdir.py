"""One run per output folder: the lock, the check that the folder is writable, clean-up.

``twins-np train`` and ``twins-np demo`` hold :func:`claim_out_dir` for the whole run:

- an exclusive lock on ``OUT/.lock`` (``fcntl.flock``), so a second run into the same
  folder is refused at once instead of silently replacing the first run's files; the
  kernel releases the lock when the process ends, however it ends (``kill -9``
  included), so a crashed run never leaves the folder locked;
- a write test in the folder before the first epoch (a read-only folder used to fail
  only when the first checkpoint was saved, after a full epoch), and the same for each
  file a run writes there: a folder by that name, or a symbolic link into a missing
  folder, is refused at once (:func:`check_output_files`), as is an ``out`` that is a
  file or a dangling symbolic link (:func:`check_out_dir`);
- removal of the temporary files that a killed run's atomic writes left behind
  (:func:`twins_np.io.atomic_write` names them ``.NAME.XXXXXXXX.tmp``; with the lock held
  no live writer of this folder can own one).

:func:`clear_outputs` removes an earlier run's files (``--overwrite``), so that a new run
that stops early never leaves another run's weights or figures beside its checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .config import SettingsMessage

__all__ = [
    "LOCK_NAME",
    "OUTPUT_NAMES",
    "OutDirBusyError",
    "OutDirError",
    "check_out_dir",
    "check_output_files",
    "claim_out_dir",
    "clear_outputs",
    "earlier_outputs",
    "remove_leftovers",
    "writing_into",
]

LOCK_NAME = ".lock"

# every file a run (train, demo, evaluate into the run's folder) writes into OUT
OUTPUT_NAMES = (
    "checkpoint.npz",
    "weights.npz",
    "metrics.csv",
    "metrics.json",
    "learning_curves.png",
    "confusion_matrix.png",
    "predictions.png",
    "class_iou.png",
    "overlays.png",
)
# twins-np evaluate's files
_OUTPUT_PATTERNS = ("confusion_matrix_*.png", "evaluation_*.json", "class_iou_*.png", "overlays_*.png")

# tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp") in twins_np.io.atomic_write: 8 random characters
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


_PROBE = "twins-np-write-test"  # the write test's own temporary file


class OutDirBusyError(SettingsMessage, RuntimeError):
    """Another run holds the output folder's lock."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.spelled(lambda name: name))


class OutDirError(SettingsMessage, ValueError):
    """The output folder is a file, cannot be created, or is not writable; names it ``out_dir``."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.spelled(lambda name: name))


def earlier_outputs(out: Path) -> list[Path]:
    """The files of an earlier run in ``out`` (see :data:`OUTPUT_NAMES`), sorted."""
    if not out.is_dir():
        return []
    found = {out / name for name in OUTPUT_NAMES if (out / name).is_file()}
    for pattern in _OUTPUT_PATTERNS:
        found.update(p for p in out.glob(pattern) if p.is_file())
    return sorted(found)


def clear_outputs(out: Path) -> list[Path]:
    """Delete an earlier run's files from ``out`` (only those twins-np writes); returns them."""
    removed = earlier_outputs(out)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def remove_leftovers(out: Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes to twins-np's outputs in ``out``.

    Only temporaries of the files twins-np writes there are touched; call it with the lock
    held, so that no running writer owns them.
    """
    names = {*OUTPUT_NAMES, _PROBE}
    removed = []
    for path in out.iterdir() if out.is_dir() else ():
        m = _TEMPORARY.match(path.name)
        if m and path.is_file() and (m["name"] in names or any(Path(m["name"]).match(p) for p in _OUTPUT_PATTERNS)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return sorted(removed)


def _not_writable(out: Path, err: OSError) -> OutDirError:
    reason = {errno.EROFS: "it lies on a read-only file system", errno.ENOSPC: "the disk is full"}.get(
        err.errno or 0, err.strerror or str(err)
    )
    return OutDirError(f"<out_dir> {out} is not a writable folder: {reason}; choose another <out_dir>")


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that cannot be one: a file, or a symbolic link to nothing (``out``
    or a folder above it).

    Raises:
        OutDirError: naming ``out`` and what it is.
    """
    for path in (out, *out.parents):  # a dangling link is neither a file nor a folder: say what it is
        if path.is_symlink() and not path.exists():
            where = "" if path == out else f": {path}"
            raise OutDirError(
                f"<out_dir> {out}{where} is a symbolic link to {os.readlink(path)}, which does not exist; create the "
                "folder it points to, or choose another <out_dir>"
            )
    if out.exists() and not out.is_dir():
        raise OutDirError(f"<out_dir> {out} is a file, not a folder; choose another <out_dir>")


def check_output_files(out: Path, names: Iterable[str]) -> None:
    """Refuse to start when a file to be written in ``out`` cannot be: a folder by its name, or a
    symbolic link into a folder that does not exist (found otherwise only when the file is
    written, after an epoch of work).

    Raises:
        OutDirError: naming the path.
    """
    for name in names:
        path = out / name
        if path.is_dir():
            raise OutDirError(
                f"<out_dir> {out}: {path} is a folder, where twins-np writes a file; move it away, or choose another "
                "<out_dir>"
            )
        if path.is_symlink() and not Path(os.path.realpath(path)).parent.is_dir():
            raise OutDirError(
                f"<out_dir> {out}: {path} is a symbolic link to {os.readlink(path)}, in a folder that does not exist; "
                "remove the link, or choose another <out_dir>"
            )


@contextlib.contextmanager
def claim_out_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Create ``out`` if needed, lock it for this run, check it is writable, remove leftovers.

    Yields:
        ``out`` as a Path; the lock is released when the block ends, on any error too.

    Raises:
        OutDirError: ``out`` is a file or a dangling symbolic link, cannot be created, is not
            writable, or holds a folder where a run's file goes (a ValueError).
        OutDirBusyError: another run holds the lock.
    """
    out = Path(out)
    check_out_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:  # a parent is a file
        blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        raise OutDirError(f"<out_dir> {out}: cannot create the folder, {blocking or err.filename} is a file") from err
    except OSError as err:
        raise _not_writable(out, err) from err
    check_output_files(out, OUTPUT_NAMES)  # before any work: a folder named checkpoint.npz would fail after an epoch
    try:
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise _not_writable(out, err) from err
    try:
        _lock(fd, out)
        try:  # the lock file may already exist in a read-only folder: test an actual write
            probe_fd, probe = tempfile.mkstemp(dir=out, prefix=f".{_PROBE}.", suffix=".tmp")
            os.close(probe_fd)
            os.unlink(probe)
        except OSError as err:
            raise _not_writable(out, err) from err
        with contextlib.suppress(OSError):  # who holds the lock, for the message a second run prints
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_leftovers(out)
        yield out
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting run)


def _lock(fd: int, out: Path) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, one run at a time is up to the user
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            pid = int(os.pread(fd, 32, 0).decode().strip() or 0)
            holder = f" (process {pid})" if pid else ""
        raise OutDirBusyError(
            f"<out_dir> {out} is in use by another twins-np run{holder}: wait for it to end, or choose another <out_dir>"
        ) from None


@contextlib.contextmanager
def writing_into(path: str | os.PathLike) -> Iterator[None]:
    """Give a file-system error raised while writing into ``path`` that path's name.

    ``write()`` on a full disk raises ``OSError(ENOSPC)`` without a file name; the user
    needs to know which folder or file could not be written.
    """
    try:
        yield
    except OSError as err:
        if err.errno is None or err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
