"""The runner: starts the processes of a grading run and talks to them.

Two kinds of process, both outside the grader's own:

- **the reference process** (trusted): a Python that imports the instructor's twins-np and
  runs :mod:`twins_np.course.reference`; it computes, from the secret seed, every case's
  inputs and the reference solution's outputs. It runs as the grader's user.
- **a worker per task** (untrusted): ``worker.py`` with ``wire.py`` beside it in a fresh
  folder, the student copy's library (every task stripped) and the student's files of that
  task, started by ``warden.py`` in a sandbox (see there): as root, the user ``nobody`` (or
  ``TWINS_NP_WORKER_USER``), new namespaces where the system allows (no network, its
  own processes, the instructor's files hidden, a read-only file system), limits on memory,
  CPU time, processes, file size and open files; and every process it started is killed
  when it ends.

What the sandbox can do depends on who runs the grader: :func:`sandbox` says, and
``docs/instructors.md`` has the table. Messages from a worker are read with size limits and
no pickle (:mod:`twins_np.course.wire`); nothing in them is trusted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import pwd
import random
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import wire  # the grader reads the workers' data through this module: `runner.wire`

__all__ = ["Reference", "Sandbox", "Worker", "WorkerError", "binds", "exposed", "hidden_paths", "sandbox", "wire",
           "write_library"]  # fmt: skip

HERE = pathlib.Path(__file__).resolve().parent
# packages hidden from the worker when the sandbox can hide folders (and blocked in it anyway)
AUTODIFF = ("torch", "torchvision", "timm", "functorch", "jax", "jaxlib", "autograd", "tensorflow")
MAX_BYTES = 256 << 20  # of arrays in one message from a worker (the largest case's outputs are a few MB)
# the worker's whole environment: every fused kernel off (their files are not in its library either)
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
        "TWINS_NP_CPU_KERNELS": "0"}  # fmt: skip


class WorkerError(Exception):
    """A worker did not answer: it exited, ran past its time, or sent something that is not a message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "exit", "timeout" or "protocol"


@dataclass
class Sandbox:
    """What the sandbox does for a grading run, found by :func:`sandbox`."""

    root: bool  # the grader runs as root: the worker runs as another user
    namespaces: bool  # new mount, PID and network namespaces (hidden folders, no network, read-only files)
    user: str  # the worker's user
    python: str  # the Python the worker runs
    why: str = ""  # why there are no namespaces

    def describe(self) -> str:
        who = f"as {self.user}" if self.root else "as the grader's own user"
        ns = "namespaces (no network, own processes, hidden folders, read-only files)" if self.namespaces else (
            f"no namespaces ({self.why})")  # fmt: skip
        return f"worker {who}; {ns}"


_SANDBOX: dict[bool, Sandbox] = {}


def _world_executable(path: str) -> bool:
    """Every folder on the way is searchable and the file readable and executable by anyone."""
    p = pathlib.Path(path).resolve()
    return _runnable_by_anyone(p, p.parents)


def _executable_in_its_view(path: str) -> bool:
    """Anyone can run ``path`` inside the worker's new root (namespaces): there the folders above
    the Python's installation, which is bound whole, are new and searchable by every user, so
    only the installation's own folders and the file count (a pyenv Python under a private home)."""
    p = pathlib.Path(path).resolve()
    base = p.parent.parent
    return _runnable_by_anyone(p, (base, *(q for q in p.parents if base in q.parents)))


def _runnable_by_anyone(p: pathlib.Path, folders: Iterable[pathlib.Path]) -> bool:
    """The folders are searchable and the file readable and executable by every user."""
    try:
        if any(not d.stat().st_mode & stat.S_IXOTH for d in folders):
            return False
        mode = p.stat().st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IXOTH and mode & stat.S_IROTH)


def worker_python(root: bool, namespaces: bool = False) -> str:
    """The Python the worker runs: this one, or (as root, when another user could not run this
    one) a system Python of the same version, or, with namespaces and no such Python, this one
    when its installation can be bound into the worker's view (a pyenv Python under a private
    home: the worker then sees that installation, nothing else of the home)."""
    if not root or _world_executable(sys.executable):
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (shutil.which(version), f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if cand and _world_executable(cand):
            return cand
    if namespaces and _executable_in_its_view(sys.executable):
        # the only one is under a private home (pyenv's): its installation alone is bound in the worker's view
        return sys.executable
    raise RuntimeError(
        f"as root the worker runs as another user, who cannot run {sys.executable}; install {version} "
        "where every user can run it (e.g. the system's python3)"
    )


UID_RANGE = (61000, 64999)  # the workers' own user ids (as root): no account has them
_TAKEN: set[int] = set()
_TAKEN_LOCK = threading.Lock()


def _worker_user() -> tuple[str, int, int]:
    """(name, uid, gid) of the next worker, as root: the user ``TWINS_NP_WORKER_USER`` if
    set, else a user id of its own, one that no account and no running process has, so a
    worker cannot signal, trace or limit another (another student's, or a system service's)."""
    name = os.environ.get("TWINS_NP_WORKER_USER")
    if name:
        entry = pwd.getpwnam(name)
        return name, entry.pw_uid, entry.pw_gid
    busy = _users_with_processes()
    with _TAKEN_LOCK:
        for uid in random.sample(range(UID_RANGE[0], UID_RANGE[1] + 1), UID_RANGE[1] - UID_RANGE[0] + 1):
            if uid in _TAKEN or uid in busy:
                continue
            try:
                pwd.getpwuid(uid)
                continue
            except KeyError:
                _TAKEN.add(uid)
                return f"uid {uid}", uid, uid
    raise RuntimeError(f"no free user id in {UID_RANGE}")


def _users_with_processes() -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                out.add(os.stat(f"/proc/{name}").st_uid)
            except OSError:
                continue
    return out


def _linux() -> None:
    if not sys.platform.startswith("linux"):
        raise OSError(f"the grader runs its workers in a Linux sandbox; this system is {sys.platform}")


def sandbox(namespaces: bool | None = None) -> Sandbox:
    """What the sandbox can do here (probed once per process: a warden is started that tries).

    Args:
        namespaces: use namespaces where the system allows them (default: unless the
            environment sets ``TWINS_NP_NAMESPACES=0``).
    """
    _linux()
    if namespaces is None:
        namespaces = os.environ.get("TWINS_NP_NAMESPACES", "1") != "0"
    if namespaces in _SANDBOX:
        return _SANDBOX[namespaces]
    root = os.geteuid() == 0
    if root:
        user = os.environ.get("TWINS_NP_WORKER_USER") or f"a user id of its own ({UID_RANGE[0]}-{UID_RANGE[1]}, no account)"
    else:
        user = pwd.getpwuid(os.getuid()).pw_name
    why = "not asked for"
    ns = False
    if namespaces:
        r = subprocess.run([sys.executable, "-I", "-S", "-B", str(HERE / "warden.py"), "--probe"], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
        ns = r.returncode == 0 and r.stdout.strip() == "ok"
        why = "" if ns else (r.stdout.strip() or r.stderr.strip().splitlines()[-1:] or ["unshare failed"])[0]
    python = worker_python(root, ns)
    _SANDBOX[namespaces] = Sandbox(root, ns, user, python, why)
    return _SANDBOX[namespaces]


def exposed(paths: list[pathlib.Path]) -> list[str]:
    """Those of ``paths`` that every user can read: without namespaces, a worker can too."""
    return [str(p) for p in paths if p.exists() and _world_readable(p)]


def _world_readable(path: pathlib.Path) -> bool:
    p = path.resolve()
    try:
        if any(not d.stat().st_mode & stat.S_IXOTH for d in p.parents):
            return False
        return bool(p.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def site_dirs() -> list[str]:
    """The folders the worker needs NumPy (and SciPy, if present) from."""
    out = []
    for name in ("numpy", "scipy"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            d = str(pathlib.Path(list(spec.submodule_search_locations)[0]).parent)
            if d not in out:
                out.append(d)
    return out


_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/ld.so.conf",
           "/etc/ld.so.conf.d", "/etc/localtime")  # fmt: skip


def binds(python: str, tmp: pathlib.Path) -> list[str]:
    """What the worker's new root holds (namespaces only): the system's programs and libraries,
    the worker's Python (its installation and virtualenv), the folders NumPy comes from, and
    the grading run's folder ``tmp``. Everything else (homes, the instructor's project, other
    checkouts) is not there."""
    py = pathlib.Path(python)
    wanted = [*_SYSTEM, str(py.parent.parent), str(py.resolve().parent.parent), *site_dirs(), str(tmp)]
    out: list[str] = []
    for p in wanted:
        if os.path.lexists(p) and p not in out:
            out.append(p)
    # a path inside another one is bound with it (except the top-level symlinks, kept as links)
    return [p for p in out if not any(q != p and p.startswith(q.rstrip("/") + "/") and not os.path.islink(q) for q in out)]


def hidden_paths(secret: list[pathlib.Path], inside: list[str], keep: list[pathlib.Path]) -> list[str]:
    """The paths to cover in the worker's view: those of ``secret`` (the instructor's project,
    the manifest, ...), every other twins_np on this Python's path and the autodiff packages,
    where they lie inside the bound folders ``inside``; a path that holds something the worker
    needs (``keep``) is split into its entries."""
    found = list(secret)
    for entry in sys.path:  # other copies of twins_np: an installed one, a checkout on the path
        if entry and (pathlib.Path(entry) / "twins_np" / "__init__.py").is_file():
            found.append(pathlib.Path(entry) / "twins_np")
    for module in list(sys.modules.values()):  # setuptools' editable finders map a name to a folder
        mapping = getattr(module, "MAPPING", None)
        if isinstance(mapping, dict) and "twins_np" in mapping:
            found.append(pathlib.Path(str(mapping["twins_np"])))
    for name in AUTODIFF:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            found.extend(pathlib.Path(p) for p in spec.submodule_search_locations)
    keep_r = [k.resolve() for k in keep]
    roots = [pathlib.Path(b) for b in inside]
    out: list[str] = []

    def add(p: pathlib.Path) -> None:
        if not p.exists() or not any(p == r or r in p.parents for r in roots):
            return
        inner = [k for k in keep_r if k == p or p in k.parents]
        if not inner:
            if str(p) not in out:
                out.append(str(p))
            return
        if any(k == p for k in inner) or not p.is_dir():
            return  # needed whole
        for child in sorted(p.iterdir()):
            add(child)

    for p in found:
        add(p.resolve())
        add(p.absolute())
    return out


def write_library(files: dict[str, str], dest: pathlib.Path) -> None:
    """Write the worker's library (relative path -> text), readable by everyone, writable by none."""
    for rel, text in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o444)
    for d in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        d.chmod(0o555)


class _Pipe:
    """Reads exact byte counts from a file descriptor, with a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.deadline = float("inf")

    def read_exact(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            wait = self.deadline - time.monotonic()
            if wait <= 0:
                raise WorkerError("timeout", "time limit")
            ready, _, _ = select.select([self.fd], [], [], min(wait, 3600))
            if not ready:
                continue
            b = os.read(self.fd, min(left, 1 << 22))
            if not b:
                raise WorkerError("exit", "the process ended")
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)


@dataclass
class WorkerExit:
    """How a worker ended, as its warden saw it."""

    status: int | None = None  # the worker's exit status (negative: killed by that signal)
    stragglers: int = 0  # processes it started that were still running, and were killed
    tampered: str = ""  # the warden itself did not end as it should: something interfered
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed_to_start(self) -> str:
        """Why the sandbox or the worker's Python could not start ("" when it did), as the warden
        reported it before any student code ran (so a submission cannot fake it)."""
        for e in self.events:
            if e.get("event") in ("setup_failed", "exec_failed"):
                return str(e.get("reason", "unknown"))
        return ""


class Worker:
    """One task's worker in its sandbox.

    Args:
        tmp: a folder of this grading run readable by the worker (the runner makes ``tmp/<name>``).
        name: the task id (the folder's name).
        library: the library folder (written by :func:`write_library`).
        overlay: module name -> the student's file for it.
        modules: the modules to import first (the task's files).
        proxies: the other tasks' functions, answered by the grader.
        limits: ``{"memory_mb", "cpu_s", "file_mb", "processes", "open_files"}``.
        hide: paths covered in the worker's view (namespaces only; see :func:`hidden_paths`).
        box: the sandbox to use (:func:`sandbox`).
    """

    def __init__(
        self, tmp: pathlib.Path, name: str, library: pathlib.Path, overlay: dict[str, str], modules: list[str],
        proxies: list[str], limits: dict[str, float], hide: list[str], box: Sandbox,
    ) -> None:  # fmt: skip
        self.box = box
        folder = tmp / name
        folder.mkdir()
        folder.chmod(0o755)  # whatever the umask: the worker's user reads it
        for script in ("worker.py", "wire.py", "warden.py"):  # run from here: no command line names the install
            shutil.copyfile(HERE / script, folder / script)
        student = folder / "student"
        student.mkdir()
        files = {}
        for module, path in overlay.items():  # the student's files, readable, not writable, by the worker
            dest = student.joinpath(*module.split(".")).with_suffix(".py")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            dest.chmod(0o444)
            files[module] = str(dest)
        for d in [student, *(p for p in student.rglob("*") if p.is_dir())]:
            d.chmod(0o555)
        workdir = folder / "work"
        workdir.mkdir()
        workdir.chmod(0o700)
        # the mount point of the worker's new root (namespaces only), outside the folder it binds
        self.newroot = tempfile.mkdtemp(prefix="twins-np-root-")
        uid = gid = None
        self.uid: int | None = None
        if box.root:
            _, uid, gid = _worker_user()
            os.chown(workdir, uid, gid)
            self.uid = uid
        to_worker_r, self.to_worker = os.pipe()
        self.from_worker, from_worker_w = os.pipe()
        status_r, status_w = os.pipe()
        argv = [box.python, "-I", "-S", "-B", str(folder / "worker.py"), str(to_worker_r), str(from_worker_w),
                os.pathsep.join(site_dirs())]
        fds = [to_worker_r, from_worker_w]
        debug = os.environ.get("TWINS_NP_WORKER_STDERR")  # a file for the workers' stderr, to debug a sandbox
        stderr_fd = os.open(f"{debug}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if debug else None
        if stderr_fd is not None:
            fds.append(stderr_fd)
        # RLIMIT_NPROC counts every process of the user: the worker may start `processes` more
        processes = int(limits["processes"]) + _processes_of(uid if uid is not None else os.getuid())
        spec = {
            "namespaces": box.namespaces, "status_fd": status_w, "fds": fds, "stderr_fd": stderr_fd, "argv": argv,
            "env": {**_ENV, "HOME": str(workdir), "TMPDIR": str(workdir)}, "workdir": str(workdir),
            "workdir_mb": int(limits["file_mb"]), "uid": uid, "gid": gid, "hide": hide,
            "newroot": self.newroot, "binds": binds(box.python, tmp),
            "limits": {"RLIMIT_AS": int(limits["memory_mb"]) << 20, "RLIMIT_CPU": int(limits["cpu_s"]) + 1,
                       "RLIMIT_FSIZE": int(limits["file_mb"]) << 20, "RLIMIT_NPROC": processes,
                       "RLIMIT_NOFILE": int(limits["open_files"]), "RLIMIT_CORE": 0},
        }  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(folder / "warden.py")], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(*fds, status_w), start_new_session=True,
        )  # fmt: skip
        for fd in (*fds, status_w):
            os.close(fd)
        self.status_fd = status_r
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec).encode())
        self.proc.stdin.close()
        self.pipe = _Pipe(self.from_worker)
        os.set_blocking(self.to_worker, False)
        self.killed_hard = False
        self.send({"op": "setup", "library": str(library), "overlay": files, "modules": modules, "proxies": proxies})

    def send(self, header: dict[str, Any], arrays: list[np.ndarray] = (), deadline: float = float("inf")) -> None:  # type: ignore[assignment]
        """Send a message, by ``deadline``: a worker that stops reading cannot block the grader."""
        data = memoryview(wire.pack_message(header, list(arrays)))
        while data:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise WorkerError("timeout", "time limit")
            _, ready, _ = select.select([], [self.to_worker], [], min(wait, 3600))
            if not ready:
                continue
            try:
                n = os.write(self.to_worker, data[: 1 << 16])
            except BlockingIOError:
                continue
            except OSError as e:
                raise WorkerError("exit", "the process ended") from e
            data = data[n:]

    def recv(self, deadline: float) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The worker's next message, by ``deadline`` (time.monotonic()).

        Raises:
            WorkerError: it exited, ran past the deadline, or sent something malformed.
        """
        self.pipe.deadline = deadline
        try:
            return wire.read_message(self.pipe.read_exact, MAX_BYTES)
        except wire.ProtocolError as e:
            raise WorkerError("protocol", str(e)) from None
        except MemoryError:
            raise WorkerError("protocol", "a message too large to read") from None

    def close(self, kill: bool = False) -> WorkerExit:
        """End the worker and everything it started (at once with ``kill``, else when it has
        read the end of its input); how it ended."""
        for fd in (self.to_worker, self.from_worker):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=0 if kill else 2)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)  # the warden kills the worker and all it started
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.killed_hard = True
                self.proc.kill()
                self.proc.wait()
        info = WorkerExit()
        data = b""
        while True:
            ready, _, _ = select.select([self.status_fd], [], [], 0)
            if not ready:
                break
            chunk = os.read(self.status_fd, 1 << 16)
            if not chunk:
                break
            data += chunk
        os.close(self.status_fd)
        try:
            os.rmdir(self.newroot)  # its mounts lived in the worker's namespace only: it is empty here
        except OSError:
            pass
        if self.uid is not None:
            with _TAKEN_LOCK:
                _TAKEN.discard(self.uid)
        for line in data.decode(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            info.events.append(event)
            if event.get("event") == "exit":
                info.status, info.stragglers = event.get("status"), int(event.get("stragglers", 0))
        if self.proc.returncode != 0 and not self.killed_hard:
            info.tampered = f"the warden ended with status {self.proc.returncode}"
        elif not any(e.get("event") == "exit" for e in info.events):
            info.tampered = "the warden did not report the worker's end"
        return info


def _processes_of(uid: int) -> int:
    """How many processes (threads count too) the user has now: RLIMIT_NPROC counts them all."""
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                st = os.stat(f"/proc/{name}")
                if st.st_uid == uid:
                    with open(f"/proc/{name}/status") as f:
                        n += next((int(line.split()[1]) for line in f if line.startswith("Threads:")), 1)
            except (OSError, ValueError):
                continue
    return n


class Reference:
    """The reference process: the instructor's twins-np computing every case (trusted).

    Args:
        root: the instructor's project (its ``twins_np`` is imported).
        tasks: the tasks, in the order their messages come.
        seed: the grading run's secret seed (sent on a pipe, never on a command line).
        others: task -> the functions of the other tasks, whose calls are recorded.
    """

    def __init__(self, root: pathlib.Path, tasks: list[str], seed: int, others: dict[str, list[str]]) -> None:
        out_r, out_w = os.pipe()
        code = "import sys; sys.path.insert(0, sys.argv[2]); from twins_np.course.reference import main; main()"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}
        # the NumPy twins, never a fused kernel: the submissions are compared with and timed against them
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TWINS_NP_CPU_KERNELS="0")
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", code, str(out_w), str(root)], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr, pass_fds=(out_w,), env=env,
                                     cwd=tempfile.gettempdir())  # fmt: skip
        os.close(out_w)
        assert self.proc.stdin is not None
        request = {"tasks": tasks, "seed": seed, "others": others}
        wire.write_message(self.proc.stdin.fileno(), request)
        self.proc.stdin.close()
        self.pipe = _Pipe(out_r)

    def next(self, timeout: float = 600) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The next task's message."""
        self.pipe.deadline = time.monotonic() + timeout
        try:
            return wire.read_message(self.pipe.read_exact, 1 << 34)
        except WorkerError:
            self.proc.kill()
            self.proc.wait()
            self.stderr.seek(0)
            lines = self.stderr.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError("the reference process failed: " + (lines[-1] if lines else "no output")) from None

    def close(self) -> None:
        os.close(self.pipe.fd)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()
