# %% [markdown]
# # 01 · The array backend, and gradient checks that can fail
#
# twins-np implements Twins (Chu et al. 2021, *Twins: Revisiting the Design of Spatial
# Attention in Vision Transformers*: Twins-PCPVT in section 3.1, Twins-SVT with its
# locally-grouped (LSA) and global sub-sampled (GSA) attention in section 3.2) with every
# forward **and** backward pass written by hand. Before we look at any layer, this notebook
# sets up the two tools every later notebook relies on: the array backend (one code path for
# NumPy and CuPy) and the finite-difference gradient checker.
#
# **Learning goals**
#
# 1. Find the array module of some arrays with `get_xp`, move arrays and whole modules between
#    devices with `to_device`, and bring results home with `asnumpy`.
# 2. Compute a numerical gradient with central differences and compare it with a hand-written
#    backward using `twins_np.gradcheck.check_backward`.
# 3. Explain why the upstream gradient of a check must be random (a wrong softmax backward
#    survives an all-ones upstream gradient).
# 4. Explain why finite differences must run in float64: truncation error vs rounding error.
# 5. Run the gradient checks of every Twins layer and read the report.
#
# Background pages: `docs/derivations/notation.md` (shapes and the one rule behind every
# backward), `docs/derivations/gradcheck.md` (the design of the checker: random upstream
# gradients, float64, the error measure) and `docs/derivations/softmax.md` (the softmax
# Jacobian used below).

# %%
# %load_ext autoreload
# %autoreload 2

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import twins_np
from twins_np import functional as F
from twins_np import gradcheck_suite
from twins_np.gradcheck import TOLERANCES, check_backward, format_table, numerical_grad
from twins_np.nn import Linear

# the device of the device-aware cells: TWINS_NP_DEVICE=gpu runs them on CuPy (a CUDA GPU); default the CPU
DEVICE = os.environ.get("TWINS_NP_DEVICE", "cpu")
assert DEVICE == "cpu" or (DEVICE == "gpu" and twins_np.cupy_available()), f"TWINS_NP_DEVICE={DEVICE!r}: no CUDA GPU here"

GPU = twins_np.cupy_available()
TOL = TOLERANCES["gradcheck_rel"]
print(f"twins-np {twins_np.__version__}; CuPy with a CUDA GPU available: {GPU}")
print(f"gradient-check tolerance (max relative error): {TOL:g}")

# %% [markdown]
# ## 1. One code path for NumPy and CuPy
#
# Every op in `twins_np.functional` asks its inputs which array library they belong to and
# then uses that module, called `xp`, for everything it computes:
#
# ```python
# xp = get_xp(x=x, weight=w)   # numpy or cupy
# out = xp.matmul(x, w.T)
# ```
#
# CuPy mirrors NumPy's API, so the same line runs on the CPU (`numpy.ndarray`) and on an
# NVIDIA GPU (`cupy.ndarray`). Only `twins_np/backend.py` ever imports CuPy, and importing
# twins-np never fails on a machine without a GPU.

# %%
rng = np.random.default_rng(0)
a = rng.standard_normal((2, 3)).astype(np.float32)
w = rng.standard_normal((4, 3)).astype(np.float32)

xp = twins_np.get_xp(x=a, weight=w)
print("array module of (a, w):", xp.__name__)
assert xp is np

# asnumpy and to_device(..., "cpu") hand a NumPy array back unchanged (no copy)
assert twins_np.asnumpy(a) is a
assert twins_np.to_device(a, "cpu") is a

# %% [markdown]
# Asking for the GPU on a machine without one is an error with a message that says what is
# missing, not a crash deep inside CuPy:

# %%
if not GPU:
    try:
        twins_np.to_device(a, "gpu")
    except RuntimeError as e:
        print("RuntimeError:", e)
        raised = True
    else:
        raised = False
    assert raised, "to_device(..., 'gpu') must refuse when no GPU is present"
else:
    print("a GPU is present: to_device(a, 'gpu') works (next cell)")

# %% [markdown]
# On a GPU machine the same functions move arrays to the device. Mixing a CuPy array with a
# NumPy array in one op is the most common mistake in NumPy/CuPy code; instead of a cryptic
# error deep inside a matrix product, twins-np raises a `TypeError` that names the offending
# argument and suggests the fix.

# %%
if GPU:
    a_gpu = twins_np.to_device(a, "gpu")
    print("array module of a_gpu:", twins_np.get_xp(a_gpu).__name__)
    assert twins_np.get_xp(a_gpu).__name__ == "cupy"
    try:
        F.linear_forward(a_gpu, w, None)  # x on the GPU, weight on the CPU
    except TypeError as e:
        print("TypeError:", e)
        message = str(e)
    else:
        message = ""
    assert "to_device" in message and "weight" in message
    out_gpu, _ = F.linear_forward(a_gpu, twins_np.to_device(w, "gpu"), None)
    out_cpu, _ = F.linear_forward(a, w, None)
    err = np.abs(twins_np.asnumpy(out_gpu) - out_cpu).max() / np.abs(out_cpu).max()
    print(f"GPU vs CPU, float32, relative difference: {err:.2e}")
    assert err < TOLERANCES["parity_f32_rel"]
else:
    print("skipped: no CuPy GPU here (this cell runs only where twins_np.cupy_available() is True)")

# %% [markdown]
# Modules (everything in `twins_np.nn`) move all their parameters at once, in place, with
# `module.to_device(device)` or `twins_np.to_device(module, device)`. The module's `xp`
# property tells where its parameters live.

# %%
lin = Linear(3, 4, rng=0)
print(lin, "| parameters on:", lin.xp.__name__)
assert twins_np.to_device(lin, "cpu") is lin and lin.xp is np
y_cpu = lin(a)

if GPU:
    twins_np.to_device(lin, "gpu")
    print("after to_device(lin, 'gpu'):", lin.xp.__name__)
    y_gpu = lin(twins_np.to_device(a, "gpu"))
    err = np.abs(twins_np.asnumpy(y_gpu) - y_cpu).max() / np.abs(y_cpu).max()
    assert err < TOLERANCES["parity_f32_rel"]
    twins_np.to_device(lin, "cpu")
    assert lin.xp is np
else:
    print("skipped: moving the module to the GPU (no CuPy GPU here)")

# %% [markdown]
# ## 2. Numerical gradients
#
# A backward pass computes the gradient of a scalar loss $L$ with respect to a layer's inputs,
# given the upstream gradient $\mathrm{d}y = \partial L/\partial y$ of its output. To check it
# without knowing the rest of the network we *define* the loss as
#
# $$L(x) = \sum_i y_i(x)\, \mathrm{d}y_i ,$$
#
# whose gradient is exactly what `backward(dout, cache)` must return. Each entry of the
# gradient can then be estimated by a **central difference**
#
# $$\frac{\partial L}{\partial x_j} \approx \frac{L(x + h e_j) - L(x - h e_j)}{2h},$$
#
# whose error is $O(h^2)$ (the $h^1$ terms of the two Taylor series cancel).
#
# `twins_np.gradcheck.numerical_grad(f, x, eps)` does exactly this: it perturbs the float64
# array `x` in place, one element at a time, and calls `f()` twice per element. A first test on
# a function whose gradient we know, $f(x) = \sum_j c_j \sin x_j$ with
# $\partial f/\partial x_j = c_j\cos x_j$:

# %%
x = rng.standard_normal(6)
c = rng.standard_normal(6)
num = numerical_grad(lambda: float(np.sum(c * np.sin(x))), x, eps=1e-6)
exact = c * np.cos(x)
rel = np.abs(num - exact).max() / np.abs(exact).max()
print("numeric:", np.round(num, 6))
print("exact:  ", np.round(exact, 6))
print(f"max relative error: {rel:.2e}")
assert rel < TOL

# %% [markdown]
# `check_backward(forward, backward, args)` wraps the whole procedure for a functional pair:
# it converts the inputs to float64, runs `forward`, draws a random upstream gradient
# `dout`, calls `backward(dout, cache)`, computes the numerical gradient of
# $L = \sum y\odot \mathrm{d}y$ for every input element, and compares, using the relative error
#
# $$\text{rel err} = \frac{\max_i |a_i - n_i|}{\max(\max_i |n_i|, \max_i |a_i|)}$$
#
# (analytic $a$, numeric $n$; the error is measured against the array's own scale, so tiny
# entries do not blow it up). Here it is on the softmax of `twins_np.functional`, whose
# backward is the Jacobian-vector product $\mathrm{d}x = y\odot(\mathrm{d}y - \langle \mathrm{d}y, y\rangle)$
# derived in `docs/derivations/softmax.md`:

# %%
x = rng.standard_normal((3, 5))
rows = check_backward(F.softmax_forward, F.softmax_backward, [x], names=["x"])
print(format_table(rows, TOL, seed=0))
assert rows[0].max_rel_err < TOL

# %% [markdown]
# ## 3. Why the upstream gradient must be random
#
# Consider this **deliberately wrong** softmax backward, which subtracts the plain mean of
# `dout` instead of the probability-weighted mean $\langle \mathrm{d}y, y\rangle$:
#
# $$\mathrm{d}x_\text{wrong} = y\odot\mathrm{d}y - y \odot \operatorname{mean}(\mathrm{d}y).$$
#
# With an all-ones upstream gradient, $\operatorname{mean}(\mathrm{d}y) = 1 = \langle \mathrm{d}y, y\rangle$
# (the probabilities sum to one), so the wrong and the right formula give the same answer:
# zero. The finite-difference gradient is zero too, because $L = \sum_i y_i$ is the constant
# number of rows. A check with ones compares zero with zero.

# %%
def wrong_softmax_backward(dout, cache):
    """WRONG on purpose (for teaching): a plain mean instead of the y-weighted one."""
    y = cache.y
    return y * dout - y * dout.mean(axis=-1, keepdims=True)


ones = np.ones_like(x)
y, cache = F.softmax_forward(x.copy())
right_ones = F.softmax_backward(ones, cache)
wrong_ones = wrong_softmax_backward(ones, cache)
num_ones = numerical_grad(lambda: float(np.sum(F.softmax_forward(x)[0] * ones)), x)
print(f"dout = ones: max |right| = {np.abs(right_ones).max():.1e}, max |wrong| = {np.abs(wrong_ones).max():.1e}, "
      f"max |numeric| = {np.abs(num_ones).max():.1e}")
print("np.allclose(numeric, wrong backward):", np.allclose(num_ones, wrong_ones))
# the usual absolute comparison cannot tell the wrong backward from the right one
assert np.allclose(num_ones, wrong_ones) and np.allclose(right_ones, wrong_ones, atol=1e-15)

# %% [markdown]
# The wrong backward "passes" an absolute comparison such as `np.allclose`, and it passes
# `check_backward` too. The table marks its row `yes (zero)`: numeric and analytic gradient
# both lie below the *resolution* of the finite differences (the rounding error of $L$ divided by
# the step), so no relative error can be measured and all the check can confirm is "both are
# zero". The correct backward gets exactly the same verdict. With ones, the check cannot tell
# right from wrong:

# %%
for name, bwd in [("correct", F.softmax_backward), ("wrong", wrong_softmax_backward)]:
    rows = check_backward(F.softmax_forward, bwd, [x], names=["x"], dout=ones)
    print(f"--- {name} backward, dout = ones ---\n{format_table(rows, TOL, seed=0)}\n")
    assert rows[0].zero and rows[0].passed(TOL)  # passes, as "both gradients are zero"
# the quantity being compared is pure rounding noise, for both backwards
assert np.abs(num_ones).max() < 1e-8 and np.abs(right_ones).max() < 1e-15 and np.abs(wrong_ones).max() < 1e-15

# %% [markdown]
# With the default, a random upstream gradient $\mathrm{d}y\sim\mathcal N(0, 1)$, the two
# means differ and the bug shows up at once. The correct backward passes, the wrong one
# raises an `AssertionError` whose message is the report table:

# %%
rows = check_backward(F.softmax_forward, F.softmax_backward, [x], names=["x"])
print("correct backward, random dout:", f"{rows[0].max_rel_err:.1e}")
try:
    check_backward(F.softmax_forward, wrong_softmax_backward, [x], names=["x"])
    caught = None
except AssertionError as e:
    caught = str(e)
    print(caught)
assert rows[0].max_rel_err < TOL
assert caught is not None, "the wrong backward must fail with a random upstream gradient"

# %% [markdown]
# The same trap exists for LayerNorm: with $\mathrm{d}y = \mathbf 1$ and $\gamma = \mathbf 1$
# (its initial value) the true $\mathrm{d}x$ is zero, and a backward that forgets a whole
# term of the formula still passes (see `docs/derivations/layernorm.md`). That is why the
# checks of twins-np use random upstream gradients, random $\gamma$, $\beta$ and random biases.
#
# ## 4. Why finite differences must run in float64
#
# The central difference has two errors that pull in opposite directions:
#
# * **truncation**: the Taylor remainder, $\approx \frac{h^2}{6} |f'''|$, shrinks with $h$;
# * **rounding**: $L$ is only known to a relative precision $\epsilon_\text{mach}$
#   ($1.2\times10^{-7}$ in float32, $2.2\times10^{-16}$ in float64), and dividing by $2h$
#   amplifies that to $\approx \epsilon_\text{mach}|L|/h$, which grows as $h$ shrinks.
#
# The total is smallest near $h \approx \epsilon_\text{mach}^{1/3}$ and is then
# $\approx\epsilon_\text{mach}^{2/3}$: about $10^{-5}$ in float32 at best, but $10^{-11}$ in
# float64. That is why `numerical_grad` refuses anything but float64:

# %%
try:
    numerical_grad(lambda: 0.0, np.zeros(3, dtype=np.float32))
    refused = False
except TypeError as e:
    print("TypeError:", e)
    refused = True
assert refused

# %% [markdown]
# To see both regimes we write a central difference that works in the array's own dtype and
# sweep the step $h$, for the gradient of $L = \sum y \odot \mathrm{d}y$ through LayerNorm
# (input `(4, 8)`), against the analytic float64 backward:

# %%
def central_difference(f, x, eps):
    """Central differences in x's own dtype (float32 or float64); f reads x."""
    grad = np.zeros(x.shape)
    h = x.dtype.type(eps)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + h
        fp = float(f())
        x[idx] = old - h
        fm = float(f())
        x[idx] = old
        grad[idx] = (fp - fm) / (2.0 * float(h))
    return grad


x64 = rng.standard_normal((4, 8))
gamma64, beta64 = 1.0 + 0.5 * rng.standard_normal(8), rng.standard_normal(8)
dout64 = rng.standard_normal((4, 8))
exact = F.layernorm_backward(dout64, F.layernorm_forward(x64, gamma64, beta64)[1])[0]

steps = np.logspace(-1, -10, 28)


def fd_errors(dtype):
    """Max relative error of the central-difference gradient in ``dtype``, for every step."""
    xd, gd, bd, dd = (arr.astype(dtype) for arr in (x64, gamma64, beta64, dout64))

    def loss():
        return np.sum(F.layernorm_forward(xd, gd, bd)[0] * dd)

    return np.array([np.abs(central_difference(loss, xd, h) - exact).max() / np.abs(exact).max() for h in steps])


errors = {dtype.__name__: fd_errors(dtype) for dtype in (np.float32, np.float64)}

fig, ax = plt.subplots(figsize=(6.5, 4))
for name, err in errors.items():
    ax.loglog(steps, err, "o-", ms=3, label=name)
ax.axhline(TOL, color="k", ls="--", lw=1, label=f"tolerance {TOL:g}")
ax.axvline(TOLERANCES["eps"], color="gray", ls=":", lw=1, label=f"twins-np step h = {TOLERANCES['eps']:g}")
ax.set_xlabel("finite-difference step h")
ax.set_ylabel("max relative error of the gradient")
ax.set_title("Central differences: truncation (right) vs rounding (left)")
ax.invert_xaxis()
ax.legend(fontsize=8)
plt.show()

for name, err in errors.items():
    k = int(np.argmin(err))
    at_default = err[np.argmin(np.abs(steps - TOLERANCES["eps"]))]
    print(f"{name}: best error {err[k]:.1e} at h = {steps[k]:.0e}; at h = 1e-6: {at_default:.1e}")

# %% [markdown]
# On the right of the plot, the error falls like $h^2$ (truncation); on the left it rises like
# $1/h$ (rounding), until in float32 the perturbation is lost entirely and the "gradient" is
# zero (relative error 1). float64 goes four to five orders of magnitude below the tolerance
# over a wide range of steps; float32 never reaches it, and at the step twins-np uses
# ($h = 10^{-6}$) it is off by more than 1 %.

# %%
err32, err64 = errors["float32"], errors["float64"]
i_default = int(np.argmin(np.abs(steps - TOLERANCES["eps"])))
assert err64.min() < 1e-8, "float64 finite differences reach below 1e-8"
assert err32.min() > TOL, "float32 finite differences can never pass the gradient check"
assert err32[i_default] > 1e-2, "float32 with h = 1e-6 is off by more than 1 %"
assert err64[i_default] < TOL

# %% [markdown]
# The usual remedies for a failing float32 check (loosen the tolerance, try another step)
# hide real bugs of that size. twins-np instead always copies the inputs to float64 on the
# host before differencing, whatever dtype and device the layer normally runs in.
#
# ## 5. The gradient checks of every Twins layer
#
# `twins_np.gradcheck_suite` lists one check per layer (functional ops and modules), on the
# smallest shapes that still exercise the interesting code paths (LSA padding, GSA flooring).
# It is what `twins-np gradcheck` runs and what the tests run. Small tensors are checked
# element by element (`full`), modules on a random sample of elements (`sampled`), whole
# blocks along a random direction (`directional`).

# %%
t0 = time.perf_counter()
results = gradcheck_suite.run_all("cpu", progress=False)
print(f"{len(results)} checks in {time.perf_counter() - t0:.1f} s")
names = [name for name, _, _ in results]
# worst relative error per check; rows marked "zero" (a gradient that is exactly zero, e.g.
# with a single attention key) have no measurable relative error and are counted separately
worst = [max([r.max_rel_err for r in rows if not r.zero], default=0.0) if rows else np.nan for _, rows, _ in results]
n_zero = [sum(r.zero for r in rows) if rows else 0 for _, rows, _ in results]
for name, err, nz in zip(names, worst, n_zero):
    print(f"  {name:30s} {err:9.2e}" + (f"  ({nz} zero-gradient rows)" if nz else ""))

# %%
fig, ax = plt.subplots(figsize=(7, 6))
ax.barh(names, worst, color="tab:blue")
ax.axvline(TOL, color="tab:red", ls="--", label=f"tolerance {TOL:g}")
ax.set_xscale("log")
ax.set_xlim(1e-12, 1e-4)
ax.invert_yaxis()
ax.set_xlabel("max relative error (float64 finite differences vs backward)")
ax.set_ylabel("check")
ax.set_title("twins_np.gradcheck_suite on the CPU")
ax.legend(loc="lower right")
plt.tight_layout()
plt.show()

# %%
failed = [(name, msg) for name, rows, msg in results if rows is None]
assert not failed, failed
assert all(r.passed(TOL) for _, rows, _ in results for r in rows)
assert max(worst) < TOL
# every check has real signal: the errors are rounding-sized, not exactly zero
assert min(worst) > 0.0

# %%
if GPU:
    t0 = time.perf_counter()
    gpu_results = gradcheck_suite.run_all("gpu", progress=False)
    print(f"GPU: {len(gpu_results)} checks in {time.perf_counter() - t0:.1f} s")
    assert all(rows is not None for _, rows, _ in gpu_results)
else:
    print("skipped: the suite on the GPU (the analytic backward runs in CuPy float64)")

# %% [markdown]
# ## Exercises
#
# 1. **Another wrong backward.** Complete `my_wrong_softmax_backward` below with the bug
#    "forgets the factor $y$": $\mathrm{d}x = \mathrm{d}y - \langle \mathrm{d}y, y\rangle$. Check it
#    with `dout = ones` and with the default random `dout`. Which check catches it? Why does an
#    absolute comparison with ones not?
# 2. **LayerNorm without its variance term.** Write a backward that returns
#    $\rho\,(g - \operatorname{mean}(g))$ (forgetting $-\hat x\operatorname{mean}(g\odot\hat x)$, see
#    `docs/derivations/layernorm.md`), and show that with $\gamma = \mathbf 1$ and
#    `dout = ones` the true gradient and your wrong one are both zero, while
#    `check_backward` with random `dout` and random $\gamma$ fails.
# 3. **The step.** Run `check_backward` on the correct softmax with `eps=1e-3`, `1e-6` and
#    `1e-9`. Which pass? Relate the result to the float64 curve of section 4.
# 4. **Directional checks.** Run `check_backward(..., mode="directional")` on the wrong softmax
#    backward. How many function evaluations does it use, compared with `mode="full"`? Does a
#    single random direction catch the bug? Try a few seeds.
# 5. **(GPU)** On a machine with CuPy, time `gradcheck_suite.run_all("gpu")` against the CPU.
#    Why is the GPU not faster here?

# %%
def my_wrong_softmax_backward(dout, cache):
    """Exercise 1: forget the factor y, i.e. return dout - <dout, y> per row."""
    # hint: use cache.y; sum over the last axis with keepdims=True
    # BEGIN SOLUTION nb01_wrong_softmax
    return dout - (dout * cache.y).sum(axis=-1, keepdims=True)
    # END SOLUTION


try:
    for d in (ones, None):
        try:
            check_backward(F.softmax_forward, my_wrong_softmax_backward, [x], names=["x"], dout=d)
            print("dout =", "ones" if d is not None else "random", "-> passed")
        except AssertionError as e:
            print("dout =", "ones" if d is not None else "random", "->", str(e).splitlines()[0])
except NotImplementedError:
    print("exercise 1 not done yet")
