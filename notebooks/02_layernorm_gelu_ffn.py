# %% [markdown]
# # 02 · LayerNorm, GELU and the feed-forward network
#
# Every Twins block (Chu et al. 2021, section 3.1 for PCPVT and 3.2 for SVT) is *pre-norm*:
#
# $$x \leftarrow x + \operatorname{Attn}(\operatorname{LN}_1(x)), \qquad
# x \leftarrow x + \operatorname{MLP}(\operatorname{LN}_2(x)),$$
#
# with $\operatorname{MLP} = \mathrm{fc}_2 \circ \operatorname{GELU} \circ \mathrm{fc}_1$. This notebook takes apart
# the non-attention half of a block: LayerNorm, the exact GELU and the MLP (also called the
# FFN), forward and backward.
#
# **Learning goals**
#
# 1. Compute LayerNorm's forward by hand (mean, variance, `inv_std`, `xhat`) and read its cache.
# 2. Derive and compute the three-term backward of LayerNorm step by step, and check it against
#    `F.layernorm_backward` and finite differences.
# 3. Explain why a constant row needs the $\varepsilon$ inside the square root.
# 4. Tell the exact (erf) GELU from its tanh approximation, in value and in derivative.
# 5. Run the FFN as a functional pair and as the `nn.Mlp` module, gradient-check both, and
#    compare with PyTorch when it is installed.
#
# Derivations: `docs/derivations/layernorm.md`, `docs/derivations/gelu.md`,
# `docs/derivations/linear.md`, `docs/derivations/mlp.md`, and for the residual block around
# them `docs/derivations/block.md`.

# %%
# %load_ext autoreload
# %autoreload 2

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from scipy.special import erf

import twins_np
from twins_np import functional as F
from twins_np.gradcheck import TOLERANCES, check_backward, check_module, format_table, numerical_grad
from twins_np.nn import Mlp

# the device of the device-aware cells: TWINS_NP_DEVICE=gpu runs them on CuPy (a CUDA GPU); default the CPU
DEVICE = os.environ.get("TWINS_NP_DEVICE", "cpu")
assert DEVICE == "cpu" or (DEVICE == "gpu" and twins_np.cupy_available()), f"TWINS_NP_DEVICE={DEVICE!r}: no CUDA GPU here"

TOL = TOLERANCES["gradcheck_rel"]
rng = np.random.default_rng(0)
print("twins-np", twins_np.__version__)


def rel_err(a, b):
    """max|a - b| / max|b|: the error measured against the reference's own scale."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# %% [markdown]
# ## 1. LayerNorm forward, step by step
#
# LayerNorm normalises each token (each row of $C$ channels) on its own:
#
# $$\mu = \frac1C\sum_c x_c,\qquad \sigma^2 = \frac1C\sum_c (x_c-\mu)^2,\qquad
# \rho = \frac{1}{\sqrt{\sigma^2+\varepsilon}},\qquad \hat x = (x-\mu)\,\rho,\qquad
# y = \gamma\odot\hat x + \beta .$$
#
# The variance is the *biased* one (divide by $C$), as in PyTorch. Twins uses
# $\varepsilon = 10^{-6}$ in the blocks and $10^{-5}$ in the patch embedding and the GSA
# sub-sampling norm. Here are the steps on two tokens of $C = 5$ channels:

# %%
C, eps = 5, 1e-6
x = np.array([[1.0, 2.0, 3.0, 4.0, 10.0], [-2.0, 0.5, 0.0, 1.5, 0.0]])
gamma = np.array([1.0, 0.5, 2.0, -1.0, 1.5])
beta = np.array([0.0, 0.1, -0.2, 0.3, 0.0])

mean = x.mean(axis=-1, keepdims=True)
var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
inv_std = 1.0 / np.sqrt(var + eps)
xhat = (x - mean) * inv_std
y_hand = gamma * xhat + beta
print("mean    =", mean.ravel())
print("var     =", var.ravel())
print("inv_std =", inv_std.ravel())
print("xhat    =\n", np.round(xhat, 4))

y, cache = F.layernorm_forward(x, gamma, beta, eps)
print("cache fields:", cache._fields)
assert rel_err(y, y_hand) < 1e-14
assert rel_err(cache.xhat, xhat) < 1e-14 and rel_err(cache.inv_std, inv_std) < 1e-14
# each row of xhat has mean 0 and (almost) unit variance: sigma^2 rho^2 = 1 - eps rho^2 < 1
assert np.abs(xhat.mean(axis=-1)).max() < 1e-15
assert np.all(xhat.var(axis=-1) < 1.0) and np.all(xhat.var(axis=-1) > 1.0 - 1e-5)

# %% [markdown]
# The cache holds exactly what the backward needs: $\hat x$, $\rho$ (one number per row) and
# $\gamma$. Neither $x$ nor $\mu$ nor $\beta$ are kept.
#
# ## 2. The backward: three paths from $x$ to $\hat x$
#
# $\gamma$ and $\beta$ are easy: $\mathrm d\gamma = \sum_\text{rows}\mathrm dy\odot\hat x$ and
# $\mathrm d\beta = \sum_\text{rows} \mathrm dy$. The gradient reaching $\hat x$ is
# $g = \mathrm dy\odot\gamma$. Now $x$ influences $\hat x = (x-\mu)\rho$ along three paths:
# directly, through the mean $\mu$, and through the variance inside $\rho$. Following each
# (`docs/derivations/layernorm.md` does it in full) gives
#
# $$\mathrm dx = \underbrace{\rho\, g}_{\text{direct}}
# \;-\; \underbrace{\rho\,\operatorname{mean}_c(g)}_{\text{through }\mu}
# \;-\; \underbrace{\rho\,\hat x\odot\operatorname{mean}_c(g\odot\hat x)}_{\text{through }\sigma^2} .$$
#
# Each term computed on its own, for a random upstream gradient:

# %%
dout = rng.standard_normal(x.shape)
g = dout * gamma
direct = inv_std * g
through_mean = -inv_std * g.mean(axis=-1, keepdims=True)
through_var = -inv_std * xhat * (g * xhat).mean(axis=-1, keepdims=True)
dx_hand = direct + through_mean + through_var
dgamma_hand = (dout * xhat).sum(axis=0)
dbeta_hand = dout.sum(axis=0)

dx, dgamma, dbeta = F.layernorm_backward(dout, cache)
print(f"dx vs F.layernorm_backward: {rel_err(dx_hand, dx):.1e}")
assert rel_err(dx_hand, dx) < 1e-14
assert rel_err(dgamma_hand, dgamma) < 1e-14 and rel_err(dbeta_hand, dbeta) < 1e-14

# and against finite differences of L = sum(y * dout), one element of x at a time
x_fd = x.copy()
num = numerical_grad(lambda: float(np.sum(F.layernorm_forward(x_fd, gamma, beta, eps)[0] * dout)), x_fd)
print(f"dx vs finite differences:   {rel_err(dx_hand, num):.1e}")
assert rel_err(dx_hand, num) < TOL

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
row, width, ch = 0, 0.2, np.arange(C)
for i, (label, term) in enumerate(
    [("direct $\\rho g$", direct), ("through $\\mu$", through_mean), ("through $\\sigma^2$", through_var), ("sum = dx", dx_hand)]
):
    ax.bar(ch + (i - 1.5) * width, term[row], width, label=label)
ax.axhline(0, color="k", lw=0.5)
ax.set_xlabel("channel c")
ax.set_ylabel("gradient")
ax.set_title("LayerNorm backward of row 0: the three terms and their sum")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Two consequences are visible in the formula:
#
# * every row of $\mathrm dx$ **sums to zero**, because LayerNorm ignores a constant added to its
#   input row (the mean path exactly cancels the direct path's mean, and $\hat x$ has mean zero);
# * with $\mathrm dy = \mathbf 1$ and $\gamma = \mathbf 1$ (the initial value) all three terms
#   cancel: $g = \mathbf 1$, so $\mathrm dx = \rho(1 - 1 - \hat x\cdot 0) = 0$. A gradient check
#   with ones and the initial $\gamma$ would pass even if the variance term were missing
#   (notebook 01, section 3). Hence the random $\gamma$ and `dout` above.

# %%
print("row sums of dx:", dx.sum(axis=-1))
assert np.abs(dx.sum(axis=-1)).max() < 1e-12 * np.abs(dx).max()



def layernorm_backward_no_var(dout, cache):
    """WRONG on purpose (for teaching): forgets the path through the variance."""
    g = dout * cache.gamma
    return cache.inv_std * (g - g.mean(axis=-1, keepdims=True))


_, cache_init = F.layernorm_forward(x, np.ones(C), np.zeros(C), eps)
ones = np.ones_like(x)
right, wrong = F.layernorm_backward(ones, cache_init)[0], layernorm_backward_no_var(ones, cache_init)
print(f"dout = 1, gamma = 1:      max |right| = {np.abs(right).max():.1e}, max |wrong| = {np.abs(wrong).max():.1e}")
assert np.abs(right).max() < 1e-12 and np.abs(wrong).max() < 1e-12  # indistinguishable
wrong_random = layernorm_backward_no_var(dout, cache)
print(f"random dout and gamma:    relative error of the wrong backward = {rel_err(wrong_random, dx):.2f}")
assert rel_err(wrong_random, dx) > 0.1

# %% [markdown]
# `check_backward` runs the same comparison for every input at once (here on a `(2, 3, 6)`
# input with random $\gamma$ and $\beta$):

# %%
args = [rng.standard_normal((2, 3, 6)), 1.0 + rng.standard_normal(6), rng.standard_normal(6)]
# device=DEVICE: the analytic forward and backward run on TWINS_NP_DEVICE's device (CuPy on
# "gpu"), the finite differences on the host in float64
rows = check_backward(lambda x_, g_, b_: F.layernorm_forward(x_, g_, b_, 1e-6), F.layernorm_backward, args,
                      names=["x", "gamma", "beta"], device=DEVICE)  # fmt: skip
print(format_table(rows, TOL, seed=0))
assert max(r.max_rel_err for r in rows) < TOL

# %% [markdown]
# ## 3. Why a constant row needs $\varepsilon$
#
# A token whose channels are all equal has $\sigma^2 = 0$. Without $\varepsilon$, $\rho = 1/0$ and
# $\hat x = 0\cdot\infty$ is NaN, which then spreads through the whole network. With
# $\varepsilon > 0$, $\hat x = 0$ and $y = \beta$ exactly. The backward stays finite but is
# amplified: $\mathrm dx = \varepsilon^{-1/2}(g - \operatorname{mean}_c g)$, a factor 1000 for
# $\varepsilon = 10^{-6}$.

# %%
const = np.full((1, C), 3.0)
with np.errstate(divide="ignore", invalid="ignore"):
    y0, _ = F.layernorm_forward(const, gamma, beta, eps=0.0)
y1, c1 = F.layernorm_forward(const, gamma, beta, eps=1e-6)
print("eps = 0:   ", y0.ravel())
print("eps = 1e-6:", y1.ravel(), "(= beta)")
assert np.isnan(y0).all()
assert np.array_equal(y1[0], beta)

d = rng.standard_normal((1, C))
dx1 = F.layernorm_backward(d, c1)[0]
gd = d * gamma
expected = (gd - gd.mean()) / np.sqrt(1e-6)
print(f"max |dx| of the constant row: {np.abs(dx1).max():.0f} (upstream max {np.abs(d).max():.2f})")
assert rel_err(dx1, expected) < 1e-12

# %% [markdown]
# ## 4. GELU: the exact form, not the tanh approximation
#
# Twins' MLP uses PyTorch's default `nn.GELU()`, the exact form
#
# $$\operatorname{GELU}(x) = x\,\Phi(x), \qquad \Phi(x) = \tfrac12\big(1+\operatorname{erf}(x/\sqrt2)\big),
# \qquad \operatorname{GELU}'(x) = \Phi(x) + x\,\varphi(x),$$
#
# with $\varphi$ the standard normal density. A popular approximation replaces $\Phi$ by
# $\tfrac12\big(1+\tanh(\sqrt{2/\pi}\,(x+0.044715x^3))\big)$. Below, `F.gelu_forward` and
# `F.gelu_backward` against the approximation (written here, since twins-np does not implement
# it) and its derivative.

# %%
k0, k1 = np.sqrt(2.0 / np.pi), 0.044715


def gelu_tanh(t):
    """The tanh approximation (NOT what twins-np or timm's Twins use)."""
    return 0.5 * t * (1.0 + np.tanh(k0 * (t + k1 * t**3)))


def gelu_tanh_grad(t):
    u = k0 * (t + k1 * t**3)
    sech2 = 1.0 - np.tanh(u) ** 2
    return 0.5 * (1.0 + np.tanh(u)) + 0.5 * t * sech2 * k0 * (1.0 + 3.0 * k1 * t**2)


t = np.linspace(-5, 5, 2001)
exact, gcache = F.gelu_forward(t)
exact_grad = F.gelu_backward(np.ones_like(t), gcache)  # dout = 1 gives the derivative itself
approx, approx_grad = gelu_tanh(t), gelu_tanh_grad(t)

fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
axes[0].plot(t, exact, label="exact (erf)")
axes[0].plot(t, approx, "--", label="tanh approximation")
axes[0].plot(t, np.maximum(t, 0), ":", color="gray", label="ReLU")
axes[0].set_title("GELU(x)")
axes[1].plot(t, exact_grad, label="exact")
axes[1].plot(t, approx_grad, "--", label="tanh approximation")
axes[1].set_title("GELU'(x)")
axes[2].plot(t, exact - approx, label="value")
axes[2].plot(t, exact_grad - approx_grad, label="derivative")
axes[2].set_title("exact minus approximation")
for ax in axes:
    ax.set_xlabel("x")
    ax.legend(fontsize=8)
axes[0].set_ylabel("output")
axes[1].set_ylabel("derivative")
axes[2].set_ylabel("difference")
plt.tight_layout()
plt.show()

diff, diff_grad = np.abs(exact - approx).max(), np.abs(exact_grad - approx_grad).max()
print(f"max |exact - tanh|: value {diff:.1e}, derivative {diff_grad:.1e}")
# close enough to train with, but 10^6 times the float64 parity tolerance: not the same function
assert 1e-4 < diff < 1e-3 and 1e-4 < diff_grad < 2e-3
assert diff > 1e6 * TOLERANCES["parity_f64_rel"]

# %% [markdown]
# A few facts from `docs/derivations/gelu.md` to check by eye on the middle plot:
# $\operatorname{GELU}'(0) = \tfrac12$, the derivative is negative for $x < -0.7518$ (unlike ReLU)
# with its minimum $-0.1289$ at $x = -\sqrt2$, and $\operatorname{GELU}'(x)+\operatorname{GELU}'(-x) = 1$.
# The exact $\Phi$ is also available from SciPy, which confirms the forward independently.

# %%
assert abs(exact_grad[np.argmin(np.abs(t))] - 0.5) < 1e-12
i_min = int(np.argmin(exact_grad))
print(f"minimum of GELU': {exact_grad[i_min]:.4f} at x = {t[i_min]:.3f}")
assert abs(t[i_min] + np.sqrt(2)) < 0.01 and abs(exact_grad[i_min] + 0.1289) < 1e-4
assert np.abs(exact_grad + exact_grad[::-1] - 1.0).max() < 1e-12  # t is symmetric around 0
assert rel_err(exact, t * 0.5 * (1 + erf(t / np.sqrt(2)))) < 1e-15

rows = check_backward(F.gelu_forward, F.gelu_backward, [2.0 * rng.standard_normal((4, 6))], names=["x"], device=DEVICE)
print(format_table(rows, TOL, seed=0))
assert rows[0].max_rel_err < TOL

# %% [markdown]
# ## 5. The feed-forward network (timm's `Mlp`)
#
# $$\mathrm{MLP}(x) = \operatorname{GELU}(x W_1^\top + b_1)\,W_2^\top + b_2, \qquad
# W_1\in\mathbb R^{rC\times C},\; W_2 \in\mathbb R^{C\times rC}$$
#
# with expansion ratio $r$ (PCPVT: 8, 8, 4, 4 over the four stages; SVT: 4 everywhere). Its backward is the chain of
# the three backwards in reverse: `linear_backward` for fc2, `gelu_backward`, `linear_backward`
# for fc1 (`docs/derivations/linear.md`: $\mathrm dx = \mathrm dy\,W$,
# $\mathrm dW = \mathrm dy^\top x$, $\mathrm db = \sum \mathrm dy$).
#
# First the functional pair, checked step by step against its three pieces:

# %%
B, N, C, r = 2, 3, 8, 4
xm = rng.standard_normal((B, N, C))
w1, b1 = 0.3 * rng.standard_normal((r * C, C)), rng.standard_normal(r * C)
w2, b2 = 0.3 * rng.standard_normal((C, r * C)), rng.standard_normal(C)

out, mcache = F.mlp_forward(xm, w1, b1, w2, b2)
print("cache fields:", mcache._fields, "| out", out.shape)
h, _ = F.linear_forward(xm, w1, b1)
a, _ = F.gelu_forward(h)
out_steps, _ = F.linear_forward(a, w2, b2)
assert rel_err(out, out_steps) < 1e-14

dm = rng.standard_normal(out.shape)
dxm, dw1, db1, dw2, db2 = F.mlp_backward(dm, mcache)
da = dm @ w2  # back through fc2
dh = da * (mcache.act.cdf + h * np.exp(-0.5 * h * h) / np.sqrt(2.0 * np.pi))  # back through GELU
assert rel_err(dxm, dh @ w1) < 1e-13
assert rel_err(dw2, dm.reshape(-1, C).T @ a.reshape(-1, r * C)) < 1e-13

rows = check_backward(F.mlp_forward, F.mlp_backward, [xm, w1, b1, w2, b2], names=["x", "fc1_w", "fc1_b", "fc2_w", "fc2_b"],
                      device=DEVICE)  # fmt: skip
print(format_table(rows, TOL, seed=0))
assert max(r_.max_rel_err for r_ in rows) < TOL

# %% [markdown]
# The module `twins_np.nn.Mlp` owns the four parameters under timm's names (`fc1.weight`,
# `fc1.bias`, `fc2.weight`, `fc2.bias`), calls the same functional pair and *adds* the
# parameter gradients into `.grad` (call `zero_grad()` between steps). Its initial biases are
# zero, which would hide bias bugs, so we randomise them before checking:

# %%
mlp = Mlp(C, r * C, rng=0).astype(np.float64)
for _, p in mlp.named_parameters():
    p.data = p.data + 0.2 * rng.standard_normal(p.shape)
print(mlp)
print({name: p.shape for name, p in mlp.named_parameters()})

out_mod = mlp(xm)
out_fn, fcache = F.mlp_forward(xm, *(p.data for p in mlp.parameters()))
assert rel_err(out_mod, out_fn) < 1e-14
dx_mod = mlp.backward(dm)
dx_fn, *pgrads = F.mlp_backward(dm, fcache)
assert rel_err(dx_mod, dx_fn) < 1e-14
for (name, p), gref in zip(mlp.named_parameters(), pgrads):
    assert rel_err(p.grad, gref) < 1e-14, name

rows = check_module(mlp, xm, mode="sampled", n_samples=10, device=DEVICE)  # moves mlp to DEVICE
print(format_table(rows, TOL, seed=0))
assert max(r_.max_rel_err for r_ in rows) < TOL

# %% [markdown]
# ## 6. Parity with PyTorch (when it is installed)
#
# PyTorch is the oracle of twins-np: in float64 the forward and every gradient must agree to
# `TOLERANCES["parity_f64_rel"]` ($10^{-10}$, relative to the array's scale). PyTorch's
# tanh-GELU, on the other hand, is far outside that tolerance.

# %%
try:
    import torch
except ImportError:
    torch = None
    print("skipped: PyTorch is not installed")

if torch is not None:
    T = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    PAR = TOLERANCES["parity_f64_rel"]
    # LayerNorm
    xt, gt, bt = T(args[0]), T(args[1]), T(args[2])
    yt = torch.nn.functional.layer_norm(xt, (6,), gt, bt, eps=1e-6)
    d_ln = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(d_ln))
    y_np, c_np = F.layernorm_forward(*args, 1e-6)
    grads_np = F.layernorm_backward(d_ln, c_np)
    errs = [rel_err(y_np, yt.detach().numpy())] + [rel_err(gn, t_.grad.numpy()) for gn, t_ in zip(grads_np, (xt, gt, bt))]
    print("LayerNorm  y, dx, dgamma, dbeta:", ", ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < PAR
    # MLP: fc1 -> exact GELU -> fc2
    xt, w1t, b1t, w2t, b2t = (T(v) for v in (xm, w1, b1, w2, b2))
    ot = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(xt, w1t, b1t)), w2t, b2t)
    ot.backward(torch.tensor(dm))
    errs = [rel_err(out, ot.detach().numpy())] + [
        rel_err(gn, t_.grad.numpy()) for gn, t_ in zip((dxm, dw1, db1, dw2, db2), (xt, w1t, b1t, w2t, b2t))
    ]
    print("MLP        out, dx, dW1, db1, dW2, db2:", ", ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < PAR
    # exact GELU agrees, the tanh form does not
    tt = torch.tensor(t)
    e_exact = rel_err(exact, torch.nn.functional.gelu(tt).numpy())
    e_tanh = rel_err(exact, torch.nn.functional.gelu(tt, approximate="tanh").numpy())
    print(f"GELU vs torch exact: {e_exact:.1e}; vs torch tanh: {e_tanh:.1e}")
    assert e_exact < PAR and e_tanh > 1e4 * PAR

# %% [markdown]
# ## Exercises
#
# 1. **The Jacobian form.** For one row, LayerNorm's normalisation has the Jacobian
#    $J = \frac{\rho}{C}\left(C I - \mathbf 1\mathbf 1^\top - \hat x\hat x^\top\right)$. Build it with
#    NumPy for row 0 of section 1 and check that $J^\top g$ equals `dx[0]`. Which term of $J$ is
#    which path?
# 2. **RMSNorm.** Complete `rmsnorm_forward` / `rmsnorm_backward` below
#    ($y = \gamma\odot x/\sqrt{\operatorname{mean}_c(x^2)+\varepsilon}$, no mean subtraction, no
#    $\beta$) and run `check_backward` on them. How many terms does its $\mathrm dx$ have?
# 3. **The second identity.** Show numerically that
#    $\langle \mathrm dx, \hat x\rangle = C\varepsilon\rho^3\operatorname{mean}_c(g\odot\hat x)$ per row, and
#    that it becomes zero with $\varepsilon = 0$. Which invariance of LayerNorm does this express?
# 4. **tanh-GELU in a network.** Replace the exact GELU derivative in section 5's manual chain
#    by `gelu_tanh_grad`. How large is the relative error of `dx` then? Would a float32 parity
#    test (tolerance `TOLERANCES["parity_f32_rel"]`) notice?
# 5. **Counting.** How many parameters does `Mlp(C, r*C)` have? Check your formula
#    $2rC^2 + rC + C$ against `sum(p.data.size for p in mlp.parameters())` for $C = 64$, $r = 8$.

# %%
def rmsnorm_forward(x, gamma, eps=1e-6):
    """Exercise 2: return (y, cache)."""
    # BEGIN SOLUTION nb02_rmsnorm
    inv_rms = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    xhat = x * inv_rms
    return gamma * xhat, (xhat, inv_rms, gamma)
    # END SOLUTION


def rmsnorm_backward(dout, cache):
    """Exercise 2: return (dx, dgamma)."""
    # BEGIN SOLUTION nb02_rmsnorm
    xhat, inv_rms, gamma = cache
    g = dout * gamma
    # two terms: the direct path, and the path through the rms (no mean path: nothing is subtracted)
    dx = inv_rms * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dgamma = (dout * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
    return dx, dgamma
    # END SOLUTION


try:
    rows = check_backward(rmsnorm_forward, rmsnorm_backward, [rng.standard_normal((3, 6)), 1.0 + rng.standard_normal(6)],
                          names=["x", "gamma"])  # fmt: skip
    print(format_table(rows, TOL, seed=0))
except NotImplementedError:
    print("exercise 2 not done yet")
