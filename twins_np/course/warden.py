"""The warden: starts one worker in a sandbox and makes sure nothing it started outlives it.

Run by :mod:`twins_np.course.runner` as ``python -I -S -B warden.py`` (standard library only,
never imported), with its instructions as JSON on stdin. In order:

1. **Namespaces**, where the system allows: new mount, PID, network, IPC and UTS namespaces
   (and a user namespace when not root, mapping the caller to root inside it). The warden's
   child is PID 1 of the new PID namespace: the init of everything the worker starts, and
   when it exits the kernel kills every process left in the namespace. Without namespaces
   the warden is a *child subreaper* instead: every orphan of the worker is re-parented to
   it, and it kills them all once the worker has ended.
2. **The view of the file system** (namespaces only): a new root that holds only what the
   worker needs (the system's programs and libraries, Python, the folders NumPy comes from,
   the worker's own folder), bound read-only, with PyTorch's packages and any other copy of
   twins_np in them covered by empty mounts; its own ``/proc`` (the namespace's processes),
   ``/dev`` (null, zero, random) and ``/tmp``; a small empty ``tmpfs`` for the working
   folder, the only place it can write. The instructor's project is simply not there.
3. **The worker process**: its own session; limits on memory (address space), CPU time,
   processes, file size and open files; stdin/stdout/stderr on ``/dev/null``; an
   environment of a few fixed variables; as root, the user ``nobody`` (or the one given)
   with no supplementary groups, without namespaces no capabilities at all; no new
   privileges. Then ``exec`` of the worker's Python.

It reports on a status pipe (JSON lines): ``{"event": "started", "namespaces": ..., ...}``
before the worker runs and ``{"event": "exit", "status": ..., "stragglers": n}`` after.
SIGTERM from the runner ends the worker and everything it started.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 24, 28
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 36, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT | _LOCKED, NO_SETUID_FIXUP | _LOCKED, KEEP_CAPS_LOCKED: uid 0 gets no capabilities from exec
SECBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20

_libc = ctypes.CDLL(None, use_errno=True)


def _call(fn: str, *args: object) -> int:
    r = getattr(_libc, fn)(*args)
    return 0 if r == 0 else ctypes.get_errno() or -1


def _prctl(option: int, arg: int = 0) -> int:
    return _call("prctl", ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> int:
    enc = (lambda s: None if s is None else s.encode())
    return _call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def _report(fd: int, **event: object) -> None:
    try:
        os.write(fd, (json.dumps(event) + "\n").encode())
    except OSError:
        pass


def _unshare(spec: dict, root: bool) -> str:
    """Enter new namespaces; returns "" or why not."""
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.getuid(), os.getgid()
    if not root:
        flags |= CLONE_NEWUSER
    err = _call("unshare", ctypes.c_int(flags))
    if err:
        return f"unshare: {os.strerror(err) if err > 0 else 'failed'}"
    if not root:  # map the caller to root inside, to mount; the worker gives every capability up
        try:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"0 {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"0 {gid} 1")
        except OSError as e:
            return f"user namespace: {e}"
    return ""


def _bind(src: str, dst: str) -> int:
    """Bind ``src`` at ``dst`` (made as a folder, a file or a symlink, like ``src``)."""
    if os.path.islink(src) and os.path.dirname(src) == "/":  # merged /usr: /lib -> usr/lib
        os.symlink(os.readlink(src), dst)
        return 0
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.exists(dst):
            open(dst, "w").close()
    return _mount(src, dst, None, MS_BIND | MS_REC)


def _mounts(spec: dict) -> list[str]:
    """The worker's file system (inside the new mount namespace): a new root holding only what
    it needs, read-only, and an empty working folder. Returns what could not be done."""
    if _mount("none", "/", None, MS_REC | MS_PRIVATE):
        return ["cannot make the mounts private"]
    new = spec["newroot"]
    if _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755"):
        return ["cannot mount the new root"]
    problems = []
    os.makedirs(new + "/proc", exist_ok=True)
    if _mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC):
        problems.append("cannot mount a private /proc")
    os.makedirs(new + "/tmp", exist_ok=True)  # before the binds: the grading run's folder may be in /tmp
    _mount("tmpfs", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=1777")
    os.makedirs(new + "/dev", exist_ok=True)
    for node in ("null", "zero", "full", "random", "urandom"):
        if os.path.exists("/dev/" + node):
            _bind("/dev/" + node, f"{new}/dev/{node}")
    for src in spec["binds"]:  # the system's programs and libraries, Python, NumPy, the worker's folder
        if os.path.lexists(src):
            err = _bind(src, new + src)
            if err:
                problems.append(f"cannot bind {src}: {os.strerror(err)}")
    for path in spec["hide"]:  # inside what was bound: PyTorch's packages, other copies of twins_np
        target = new + path
        if os.path.isdir(target):
            err = _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16k,mode=0755")
            if not err:  # a package that says why it is not there (an empty folder would import as nothing)
                with open(target + "/__init__.py", "w") as f:
                    f.write(f"raise ImportError({os.path.basename(path) + ' is not available when grading'!r})\n")
        elif os.path.exists(target):
            err = _mount("/dev/null", target, None, MS_BIND)
        else:
            continue
        if err:
            problems.append(f"cannot hide {path}: {os.strerror(err)}")
    try:
        with open("/proc/self/mountinfo") as f:
            targets = [line.split()[4] for line in f]
    except OSError:
        targets = []
    for t in targets:  # every mount read-only (a few may refuse: they stay as they were)
        t = t.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
        if t == new or t.startswith(new + "/"):
            _mount(None, t, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    _mount(None, new, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    uid = spec["uid"] if spec["uid"] is not None else 0
    gid = spec["gid"] if spec["gid"] is not None else 0
    err = _mount("tmpfs", new + spec["workdir"], "tmpfs", MS_NOSUID | MS_NODEV,
                 f"size={spec['workdir_mb']}m,mode=0700,uid={uid},gid={gid}")  # fmt: skip
    if err:
        problems.append(f"cannot mount the working folder: {os.strerror(err)}")
    return problems


def _become_worker(spec: dict, root: bool, userns: bool, chroot: bool = False) -> None:
    """In the child: limits, a new session, another user, then exec the worker. Never returns."""
    code = 126
    try:
        os.setsid()
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        if spec.get("stderr_fd") is not None:  # the instructor's debugging: TWINS_NP_WORKER_STDERR
            os.dup2(spec["stderr_fd"], 2)
        status = spec["status_fd"]  # kept until exec (close-on-exec): to report a failure to start
        os.set_inheritable(status, False)
        keep = sorted({0, 1, 2, status, *spec["fds"]})
        lo = 3
        for fd in keep:  # close every other descriptor (the status pipe, the warden's stdin, ...)
            if fd >= lo:
                os.closerange(lo, fd)
                lo = fd + 1
        os.closerange(lo, 65536)
        for fd in spec["fds"]:
            os.set_inheritable(fd, True)
        limits = spec["limits"]
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, name), (value, value))
        if chroot:
            os.chroot(spec["newroot"])  # only what _mounts bound is there
        os.chdir(spec["workdir"])
        if root and not userns and spec["uid"] is not None:
            os.setgroups([])
            os.setresgid(spec["gid"], spec["gid"], spec["gid"])
            os.setresuid(spec["uid"], spec["uid"], spec["uid"])  # drops every capability
        elif userns:  # root of the user namespace: give every capability up for good
            _prctl(PR_SET_SECUREBITS, SECBITS)
            for cap in range(64):
                _prctl(PR_CAPBSET_DROP, cap)
            _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.execve(spec["argv"][0], spec["argv"], spec["env"])
    except BaseException as e:  # noqa: BLE001 - reported to the runner, which stops grading with it
        _report(spec["status_fd"], event="exec_failed", reason=f"{type(e).__name__}: {e}")
    os._exit(code)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and int(fields[1]) == pid:
                out.append(int(name))
    return out


def _reap_all(me: int) -> int:
    """Kill and reap every child of this subreaper until none is left; returns how many there were."""
    killed: set[int] = set()
    for _ in range(1000):
        kids = _children(me)
        if not kids:
            break
        for k in kids:
            killed.add(k)
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.005)
    return len(killed)


def _init(spec: dict, status_fd: int, root: bool, userns: bool) -> None:
    """PID 1 of the new PID namespace: mount, start the worker, wait, exit (which kills the rest)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the warden gone (killed by the runner) means we go too
    problems = _mounts(spec)
    if problems and spec.get("strict_mounts", True):
        _report(status_fd, event="setup_failed", reason="; ".join(problems))
        os._exit(125)
    worker = os.fork()
    if worker == 0:
        _become_worker(spec, root, userns, chroot=True)
    _report(status_fd, event="started", namespaces=True, user=_user(spec, root, userns), problems=problems)
    status = 0
    while True:
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == worker:
            status = os.waitstatus_to_exitcode(st)
            break
    proc = spec["newroot"] + "/proc"  # the namespace's own /proc
    left = sum(1 for n in os.listdir(proc) if n.isdigit() and int(n) != 1) if os.path.isdir(proc + "/1") else 0
    _report(status_fd, event="exit", status=status, stragglers=left)
    os._exit(0)  # the kernel now kills every process left in the namespace


def _user(spec: dict, root: bool, userns: bool) -> str:
    if root and not userns and spec["uid"] is not None:
        return f"uid {spec['uid']}"
    return "the caller's user (no capabilities)" if userns else "the caller's user"


def _probe() -> None:
    """Print "ok" when namespaces, a private /proc and hidden folders work here, else why not."""
    root = os.geteuid() == 0
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        why = _unshare({}, root)
        if not why:
            init = os.fork()
            if init == 0:
                err = _mount("none", "/", None, MS_REC | MS_PRIVATE)
                err = err or _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                err = err or _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=4k")
                os.write(w, b"ok" if not err else f"mount: {os.strerror(err) if err > 0 else 'failed'}".encode())
                os._exit(0)
            os.waitpid(init, 0)
        else:
            os.write(w, why.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    print(os.read(r, 4096).decode() or "the probe failed")


def main() -> None:
    if sys.argv[1:] == ["--probe"]:
        _probe()
        return
    spec = json.loads(sys.stdin.read())
    status_fd = spec["status_fd"]
    root = os.geteuid() == 0
    why_not = _unshare(spec, root) if spec["namespaces"] else "not asked for"
    ns = not why_not
    userns = ns and not root
    if not ns:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    child = os.fork()
    if child == 0:
        if ns:
            _init(spec, status_fd, root, userns)
        _become_worker(spec, root, userns)
    if not ns:
        _report(status_fd, event="started", namespaces=False, why=why_not, user=_user(spec, root, userns), problems=[])

    def stop(signum: int, frame: object) -> None:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, stop)
    status = None
    while True:
        try:
            pid, st = os.waitpid(child, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        if pid == child:
            status = os.waitstatus_to_exitcode(st)
            break
    if not ns:
        stragglers = _reap_all(os.getpid())
        _report(status_fd, event="exit", status=status, stragglers=stragglers)
    elif status not in (0, None):  # init was killed (SIGTERM from the runner): the namespace is gone
        _report(status_fd, event="exit", status=status, stragglers=0)
    os._exit(0)


if __name__ == "__main__":
    main()
