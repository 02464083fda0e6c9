# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 07 · Complexity: why Twins alternates local and global attention
#
# Full self-attention over $N = HW$ tokens costs $O(N^2 d)$: quadratic in the number of
# pixels, which rules it out at the resolutions of detection and segmentation. Twins-SVT
# (Chu et al. 2021, section 3.2) replaces it by a pair of cheaper layers:
#
# - **LSA** attends inside $k \times k$ windows: each of the $HW/k^2$ windows does a
#   $k^2 \times k^2$ attention, so one attention product costs
#   $\frac{HW}{k^2} \cdot k^2 \cdot k^2 \cdot d = k^2 HW d$;
# - **GSA** lets every token attend to one key per $k \times k$ window (a sub-sampling
#   conv with ratio $s_r = k$), i.e. $HW/k^2$ keys: $HW \cdot \frac{HW}{k^2} \cdot d
#   = \frac{H^2W^2 d}{k^2}$ per product.
#
# Alternating them costs
#
# $$\Omega(k) = \frac{H^2 W^2 d}{k^2} + k^2 HW d \;\ge\; 2 HW d \sqrt{HW},$$
#
# by the AM–GM inequality, with equality at $k^2 = \sqrt{HW}$. The pair therefore scales as
# $(HW)^{1.5}$ instead of $(HW)^2$, and the best window for a $56 \times 56$ map is
# $k = 56^{1/2} \approx 7.5$ — the $k = 7$ that Twins uses.
#
# **Learning goals**
#
# - Count the multiply-adds (MACs) of LSA and GSA with twins-np's FLOP counter
#   (`twins_np.analysis`) and match them term by term with the paper's formula, including
#   where padding and flooring make them differ.
# - Find the best window size $k$ by a sweep and compare it with $k^2 = \sqrt{HW}$.
# - Fit the scaling exponents of full, local and alternating attention on a log–log plot.
# - Measure real time and memory of the NumPy layers, compare them with a MAC-based
#   prediction, and learn which claims about timings can be trusted.
# - Read the whole-model FLOP budget of Twins-SVT-S and Twins-PCPVT-S, and reproduce the
#   paper's 2.9 G and 3.8 G.

# %%
# %load_ext autoreload
# %autoreload 2

# %%
import contextlib
import os
import time
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import least_squares

import twins_np
from twins_np import analysis, nn
from twins_np.backend import synchronize
from twins_np.gradcheck import TOLERANCES

# the device of the device-aware cells: TWINS_NP_DEVICE=gpu runs them on CuPy (a CUDA GPU); default the CPU
DEVICE = os.environ.get("TWINS_NP_DEVICE", "cpu")
assert DEVICE == "cpu" or (DEVICE == "gpu" and twins_np.cupy_available()), f"TWINS_NP_DEVICE={DEVICE!r}: no CUDA GPU here"

T_START = time.perf_counter()
print("twins-np", twins_np.__version__, "| GPU available:", twins_np.cupy_available())

# %% [markdown]
# ## 1. The counter vs the paper's formula, term by term
#
# `analysis.attention_terms(kind, H, W, C, ws_or_sr)` returns the MACs of one LSA or GSA
# layer per term (one multiply-add counts as one FLOP, the convention of the paper). Its
# `attn` term holds **both** attention products, $q k^\top$ and $\text{attn} \cdot v$,
# which cost the same, so it is **twice** the paper's per-product expression ($d = C$):
#
# $$\text{LSA}_\text{attn} = 2 k^2 HW C, \qquad \text{GSA}_\text{attn} = 2 \frac{H^2W^2 C}{k^2}
#   \quad (s_r = k).$$
#
# When $k$ divides $H$ and $W$ these hold exactly, and we assert integer equality. When it
# does not, the implementation departs from the formula in two ways that the counter
# follows:
#
# - LSA zero-pads the map on the right and bottom to $H_p \times W_p$ with
#   $H_p = \lceil H/k \rceil k$; the padded tokens are computed like real ones, so the cost
#   is $2 k^2 H_p W_p C$ (more than the formula);
# - GSA's conv floors, leaving $N_s = \lfloor H/k \rfloor \lfloor W/k \rfloor$ keys, so the
#   cost is $2 HW N_s C$ (less than the formula).

# %%
C = 32


def paper_attn(kind, H, W, C, k):
    """The paper's expression for the two attention products (2x the per-product cost)."""
    return 2 * k * k * H * W * C if kind == "lsa" else 2 * (H * W) ** 2 * C // (k * k)


def padded_attn(kind, H, W, C, k):
    """The same, with LSA's right/bottom padding and GSA's flooring conv."""
    if kind == "lsa":
        Hp, Wp = -(-H // k) * k, -(-W // k) * k
        return 2 * k * k * Hp * Wp * C
    return 2 * H * W * (H // k) * (W // k) * C


print(f"{'H x W':>8} {'k':>3} {'kind':>4} {'counter':>14} {'paper formula':>14} {'counter/paper':>14}")
for H, W, k in [(56, 56, 7), (28, 28, 7), (56, 56, 8), (112, 112, 16), (30, 30, 7), (57, 57, 7), (64, 96, 7)]:
    for kind in ("lsa", "gsa"):
        counted = analysis.attention_terms(kind, H, W, C, k)["attn"]
        formula = paper_attn(kind, H, W, C, k)
        print(f"{H:>3} x {W:<3} {k:>3} {kind:>4} {counted:>14,} {formula:>14,} {counted / formula:>14.4f}")
        assert counted == padded_attn(kind, H, W, C, k)  # the counter is the padded/floored formula, exactly
        if H % k == 0 and W % k == 0:
            assert counted == formula  # divisible: the paper's formula, exactly
        elif kind == "lsa":
            assert counted > formula  # padded tokens are computed too
        else:
            assert counted < formula  # floored rows/columns feed no key

# %% [markdown]
# The other terms of a layer do not depend on $k$ (for a divisible map): LSA's qkv Linear
# costs $3NC^2$ and proj $NC^2$; GSA's q and proj $NC^2$ each, its sub-sampling conv
# $N_s k^2 C^2 = NC^2$. Only GSA's kv Linear, $2N_sC^2 = 2NC^2/k^2$, shrinks with $k$. They
# are linear in $N$, so they dominate at small maps and small $d$; the paper's $O(\cdot)$
# is about the attention products alone, and so are the sweeps below.
#
# At $224 \times 224$, Twins-SVT-S has $k = 7$ and $s_r = 8, 4, 2, 1$: $k^2 = 49$ and
# $N_s = 49$ in every stage, so its LSA and GSA attention products cost the same
# everywhere — the balance the paper designed for.

# %%
terms_lsa = analysis.attention_terms("lsa", 56, 56, 64, 7)
terms_gsa = analysis.attention_terms("gsa", 56, 56, 64, 7)
print("LSA, 56x56, C=64, k=7:", terms_lsa)
print("GSA, 56x56, C=64, sr=7:", terms_gsa)
N = 56 * 56
assert terms_lsa["qkv"] == 3 * N * 64**2 and terms_lsa["proj"] == N * 64**2
assert terms_gsa["sr"] == N * 64**2 and terms_gsa["kv"] == 2 * N * 64**2 // 49
assert terms_lsa["attn"] / sum(terms_lsa.values()) < 0.3  # the Linears dominate an SVT-S stage-1 layer
for H, C_s, sr in [(56, 64, 8), (28, 128, 4), (14, 256, 2), (7, 512, 1)]:  # SVT-S stages at 224
    assert analysis.attention_terms("lsa", H, H, C_s, 7)["attn"] == analysis.attention_terms("gsa", H, H, C_s, sr)["attn"]

# the counter also works on built modules: module_flops walks an nn.LocallyGroupedAttn
lsa_module = nn.LocallyGroupedAttn(64, num_heads=2, ws=7, rng=0)
assert analysis.module_flops(lsa_module, 56) == analysis.attention_macs("lsa", 56, 56, 64, 7) == sum(terms_lsa.values())

# %% [markdown]
# ## 2. The best window size
#
# Sweep $k$ at fixed $H = W$ for three map sizes and count the alternating pair's attention
# products, $\text{LSA}_\text{attn}(k) + \text{GSA}_\text{attn}(s_r = k)$:
#
# - over the **divisors** of $H$, where the counter equals the formula and the sweep is
#   exactly symmetric under $k \leftrightarrow H/k$ (the two terms swap), so two divisors
#   tie;
# - over **every** $k$, where padding and flooring move the curve.
#
# The continuous optimum is $k^* = (HW)^{1/4}$, where the pair costs $4 C (HW)^{3/2}$.


# %%
def pair_attn(H, k, C=C):
    """Attention-product MACs of one LSA (window k) plus one GSA (sr = k) on an H x H map."""
    return analysis.attention_terms("lsa", H, H, C, k)["attn"] + analysis.attention_terms("gsa", H, H, C, k)["attn"]


SIZES = (28, 56, 112)
fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
BEST = {}
for ax, H in zip(axes, SIZES):
    k_star = (H * H) ** 0.25
    ks = np.arange(2, H // 2 + 1)
    cost = np.array([pair_attn(H, k) for k in ks])
    divisors = np.array([k for k in ks if H % k == 0])
    dcost = np.array([pair_attn(H, k) for k in divisors])
    k_grid = np.linspace(2, H // 2, 400)
    ideal = 2 * C * (k_grid**2 * H * H + H**4 / k_grid**2)
    ax.semilogy(k_grid, ideal, "k--", lw=1, label=r"formula $2C(k^2HW + H^2W^2/k^2)$")
    ax.semilogy(ks, cost, ".-", label="counter, every k (padding, flooring)")
    ax.semilogy(divisors, dcost, "o", ms=8, mfc="none", label="counter, divisors of H")
    ax.axvline(k_star, color="r", lw=1, label=r"$k^* = (HW)^{1/4}$")
    ax.set_xlabel("window size k (= GSA sr)")
    ax.set_title(f"{H}x{H}: $k^*$ = {k_star:.2f}, best k = {ks[np.argmin(cost)]}", fontsize=10)
    ax.tick_params(which="both", labelsize=7)
    BEST[H] = dict(k_star=k_star, every=int(ks[np.argmin(cost)]), divisor=int(divisors[np.argmin(dcost)]),
                   min_cost=int(cost.min()), divisors=divisors, dcost=dcost)  # fmt: skip
axes[0].set_ylabel("attention-product MACs (LSA + GSA)")
axes[0].legend(fontsize=7, loc="upper center")
fig.suptitle(f"Cost of one LSA + GSA pair vs window size (C = {C}; the legend holds for every panel)")
fig.tight_layout()
plt.show()

for H, b in BEST.items():
    print(f"H = W = {H:3d}: k* = {b['k_star']:.2f}, argmin over divisors = {b['divisor']}, argmin over every k = {b['every']}, "
          f"min cost / 4C(HW)^1.5 = {b['min_cost'] / (4 * C * H**3):.3f}")  # fmt: skip

# %% [markdown]
# What the sweep shows, asserted:
#
# - **On the divisors the counter is the formula**, and the best divisor is a grid
#   neighbour of $k^*$: one of the two divisors that bracket it (at $56$: $7$ and $8$ tie,
#   since $7^2 + 56^2/7^2 = 49 + 64 = 8^2 + 56^2/8^2$).
# - **Over every $k$** the argmin is within one of $k^*$ at $28$ ($k = 5$) and $56$
#   ($k = 7$), but at $112$ it is $k = 9$ rather than $10$ or $11$: $112 = 12 \cdot 9 + 4$,
#   so GSA's conv floors to $12^2 = 144$ keys instead of the formula's $112^2/81 \approx
#   155$, which makes $k = 9$ cheaper than the formula says. The valley is flat, though:
#   the best integer $k$ costs within $5\%$ of the continuous optimum $4C(HW)^{3/2}$.

# %%
for H, b in BEST.items():
    k_star, divisors = b["k_star"], b["divisors"]
    for k, c in zip(divisors, b["dcost"]):
        assert c == paper_attn("lsa", H, H, C, k) + paper_attn("gsa", H, H, C, k)  # exact on divisors
    below, above = divisors[divisors <= k_star].max(), divisors[divisors >= k_star].min()
    assert b["divisor"] in (below, above), (H, b["divisor"])  # within one step of the divisor grid
    ideal_int = min(range(2, H // 2 + 1), key=lambda k: k**2 * H * H + H**4 / k**2)
    assert abs(ideal_int - k_star) <= 1  # the formula's best integer k is within one of k*
    assert abs(b["min_cost"] / (4 * C * H**3) - 1) < 0.05  # a flat valley
assert abs(BEST[28]["every"] - BEST[28]["k_star"]) <= 1 and abs(BEST[56]["every"] - BEST[56]["k_star"]) <= 1
assert BEST[56]["divisor"] == 7 and BEST[56]["every"] == 7  # the k = 7 of Twins at the 56 x 56 stage
assert BEST[112]["every"] == 9 and (112 // 9) ** 2 == 144  # the flooring effect described above

# %% [markdown]
# ## 3. Scaling exponents
#
# Now fix the design and grow the map, $H = W = 14, 28, \dots, 224$ (multiples of 7, so a
# $k = 7$ window never pads), and fit $\log(\text{MACs}) = a + b \log(HW)$:
#
# | layer | attention-product MACs | slope $b$ |
# |---|---|---|
# | full global attention (GSA with $s_r = 1$) | $2 (HW)^2 C$ | 2 |
# | LSA, fixed $k = 7$ | $2 \cdot 49\, HW C$ | 1 |
# | LSA + GSA at the best $k$ for each size | $\approx 4 C (HW)^{3/2}$ | 1.5 |

# %%
HS = np.arange(14, 225, 14)
NS = HS**2
full = np.array([analysis.attention_terms("gsa", H, H, C, 1)["attn"] for H in HS])
local = np.array([analysis.attention_terms("lsa", H, H, C, 7)["attn"] for H in HS])
best_k = [min(range(2, H // 2 + 1), key=lambda k, H=H: pair_attn(H, k)) for H in HS]
alternating = np.array([pair_attn(H, k) for H, k in zip(HS, best_k)])

SLOPES = {}
fig, ax = plt.subplots(figsize=(7, 4.5))
for name, macs, theory in [("full attention", full, 2.0), ("LSA, k = 7", local, 1.0),
                           ("LSA + GSA, best k", alternating, 1.5)]:  # fmt: skip
    slope, intercept = np.polyfit(np.log(NS), np.log(macs), 1)
    SLOPES[name] = (slope, theory)
    line = ax.loglog(NS, macs, "o", ms=4)[0]
    ax.loglog(
        NS, np.exp(intercept) * NS**slope, "-", color=line.get_color(), label=f"{name}: slope {slope:.3f} (theory {theory})"
    )
ax.set_xlabel("tokens N = HW")
ax.set_ylabel("attention-product MACs")
ax.set_title(f"Scaling of the attention products, C = {C}")
ax.legend(fontsize=8)
ax.grid(alpha=0.3, which="both")
plt.show()

print("best k per size:", dict(zip(HS.tolist(), best_k)))
for name, (slope, theory) in SLOPES.items():
    print(f"{name:20s} slope {slope:.4f}  theory {theory}")
    assert abs(slope - theory) <= 0.05, name

# %% [markdown]
# ## 4. Measured time and memory on NumPy
#
# MACs are a model of cost; the clock is the truth. We time one forward **and** backward of
# three twins-np layers with $C = 32$ and one head, for $H = W \in \{14, 28, 42, 56\}$:
#
# - LSA with $k = 7$, GSA with $s_r = 7$ (one key per $7 \times 7$ window), and full global
#   attention (GSA with $s_r = 1$);
# - the prediction: the backward of a Linear or a matmul costs two products of the forward's
#   size, so a forward + backward does about $3\times$ the forward MACs ($M$, from
#   `analysis.module_flops`). We fit $t \approx t_0 + 3M / \theta$ (a fixed overhead $t_0$
#   and a throughput $\theta$) by least squares on $\log t$;
# - the timings are medians of 7 interleaved repeats (`time.perf_counter`), and the memory
#   is the peak that `tracemalloc` sees during one forward + backward (NumPy reports its
#   array allocations to it).
#
# Timings on a shared machine are noisy: other processes steal the cores, and a
# multi-threaded BLAS call then waits for its slowest thread, which can multiply a
# millisecond call by ten. So we time with BLAS limited to **one thread** (through
# `threadpoolctl`, when it is installed), which measures the work rather than the
# scheduler, and we assert only what is robust: the growth of full attention versus LSA
# (on the *minimum* over repeats, the least disturbed sample) and the memory, which is
# deterministic.

# %%
KINDS = {"LSA (k = 7)": ("lsa", 7), "GSA (sr = 7)": ("gsa", 7), "full attention": ("gsa", 1)}
TIME_SIZES = (14, 28, 42, 56)


def make_layer(kind, k, device="cpu"):
    """One twins-np attention layer with C channels and one head, on the given device."""
    layer = (
        nn.LocallyGroupedAttn(C, num_heads=1, ws=k, rng=0) if kind == "lsa" else nn.GlobalSubSampleAttn(C, 1, sr_ratio=k, rng=0)
    )
    return layer.to_device(device)


def fwd_bwd_step(layer, H, device="cpu"):
    """A closure that runs one forward + backward on fixed random tokens and waits for the device."""
    rng = np.random.default_rng(H)
    x = twins_np.to_device(rng.standard_normal((1, H * H, C)).astype(np.float32), device)
    g = twins_np.to_device(rng.standard_normal((1, H * H, C)).astype(np.float32), device)

    def step():
        layer(x, (H, H))
        dx = layer.backward(g)
        synchronize()  # a no-op on the CPU; CuPy work is asynchronous
        return dx

    return step


def one_blas_thread():
    """A context that limits BLAS to one thread (threadpoolctl), or does nothing without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def time_layers(sizes, device="cpu", repeats=7):
    """{(name, H): all sample times (s) of forward + backward}, repeats interleaved over all cases."""
    steps = {(name, H): fwd_bwd_step(make_layer(kind, k, device), H, device) for name, (kind, k) in KINDS.items() for H in sizes}
    samples = {key: [] for key in steps}
    for step in steps.values():
        step()  # warm-up (allocations, BLAS threads, CUDA kernels)
    for _ in range(repeats):
        for key, step in steps.items():
            t0 = time.perf_counter()
            step()
            samples[key].append(time.perf_counter() - t0)
    return samples


def peak_memory(sizes):
    """{(name, H): peak bytes traced during one forward + backward on the CPU}."""
    peaks = {}
    for name, (kind, k) in KINDS.items():
        for H in sizes:
            step = fwd_bwd_step(make_layer(kind, k), H)
            tracemalloc.start()
            step()
            peaks[name, H] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    return peaks


t0 = time.perf_counter()
with one_blas_thread():
    SAMPLES = time_layers(TIME_SIZES)
TIMES = {key: float(np.median(v)) for key, v in SAMPLES.items()}  # shown and fitted
FASTEST = {key: float(np.min(v)) for key, v in SAMPLES.items()}  # asserted on
PEAKS = peak_memory(TIME_SIZES)
WORK = {(name, H): 3 * analysis.module_flops(make_layer(kind, k), H) for name, (kind, k) in KINDS.items() for H in TIME_SIZES}
print(f"timed {len(TIMES)} cases in {time.perf_counter() - t0:.1f} s")


def fit_throughput(times, work):
    """Fit t = t0 + work / theta by least squares on log(t) (each case counts the same); returns (t0, theta)."""
    keys = list(times)
    t = np.array([times[k] for k in keys])
    w = np.array([work[k] for k in keys], dtype=float)

    def residual(p):  # p = (log t0, log seconds-per-MAC): both stay positive
        return np.log(np.exp(p[0]) + w * np.exp(p[1])) - np.log(t)

    p = least_squares(residual, x0=[np.log(t.min()), np.log(np.median(t / w))]).x
    return float(np.exp(p[0])), float(np.exp(-p[1]))


T0, THETA = fit_throughput(TIMES, WORK)
print(f"fit: overhead t0 = {T0 * 1e3:.2f} ms, throughput = {THETA / 1e9:.2f} GMAC/s")
print(f"{'layer':16s} {'H':>4} {'fwd+bwd MACs':>14} {'time (ms)':>10} {'predicted':>10} {'peak MB':>8}")
for name, H in TIMES:
    pred = T0 + WORK[name, H] / THETA
    print(
        f"{name:16s} {H:>4} {WORK[name, H]:>14,} {TIMES[name, H] * 1e3:>10.2f} {pred * 1e3:>10.2f} {PEAKS[name, H] / 1e6:>8.2f}"
    )

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
for name in KINDS:
    Ns = np.array(TIME_SIZES) ** 2
    t = np.array([TIMES[name, H] for H in TIME_SIZES])
    pred = np.array([T0 + WORK[name, H] / THETA for H in TIME_SIZES])
    line = axes[0].loglog(Ns, t * 1e3, "o-", label=f"{name} (measured)")[0]
    axes[0].loglog(Ns, pred * 1e3, "--", color=line.get_color(), label=f"{name} (predicted)")
    axes[1].loglog(Ns, [PEAKS[name, H] / 1e6 for H in TIME_SIZES], "o-", color=line.get_color(), label=name)
    axes[2].loglog(pred * 1e3, t * 1e3, "o", color=line.get_color(), label=name)
axes[1].loglog(Ns, 4 * Ns**2 / 1e6, "k:", label=r"one float32 $N \times N$ map")
lims = [min(TIMES.values()) * 1e3 / 2, max(TIMES.values()) * 1e3 * 2]
axes[2].loglog(lims, lims, "k--", lw=1, label="measured = predicted")
axes[0].set(xlabel="tokens N = HW", ylabel="forward + backward time (ms)", title="NumPy time, median of repeats")
axes[1].set(xlabel="tokens N = HW", ylabel="peak traced memory (MB)", title="tracemalloc peak, forward + backward")
axes[2].set(xlabel="predicted time (ms)", ylabel="measured time (ms)",
            title=f"t = {T0 * 1e3:.2f} ms + 3M / ({THETA / 1e9:.1f} GMAC/s)")  # fmt: skip
for ax in axes[:2]:  # the measured sizes as tick labels (log-axis minor labels overlap at this width)
    ax.set_xticks(Ns, [f"{H}²" for H in TIME_SIZES])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
for ax in axes:
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    ax.tick_params(which="both", labelsize=8)
axes[0].set_title("NumPy time, median of repeats", fontsize=10)
axes[1].set_title("tracemalloc peak, forward + backward", fontsize=10)
axes[2].set_title(axes[2].get_title(), fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# Full attention's cost grows with $N^2$ and soon leaves the other two behind; LSA and GSA
# grow roughly linearly once the fixed Python/BLAS overhead of a call stops dominating (at
# $14 \times 14$ every layer costs about the same). One throughput is only a first
# approximation: the MAC count leaves out elementwise work such as the softmax (its
# exponentials and its backward are $O(N^2)$ for full attention, $O(N k^2)$ for LSA), and
# small matrices run at a different speed from large ones. Memory tells the same story without
# noise: full attention must keep its $N \times N$ probabilities for the backward, LSA only
# $k^2 \times k^2$ per window.

# %%
small, large = TIME_SIZES[0], TIME_SIZES[-1]
growth = {name: FASTEST[name, large] / FASTEST[name, small] for name in KINDS}
print("time growth from", small, "to", large, "(fastest of the repeats):", {k: round(v, 1) for k, v in growth.items()})
assert growth["full attention"] > growth["LSA (k = 7)"]  # quadratic vs linear
assert FASTEST["full attention", large] > FASTEST["LSA (k = 7)", large]
N_large = large * large
assert PEAKS["full attention", large] >= 4 * N_large**2  # the float32 N x N attention map is kept for the backward
assert PEAKS["LSA (k = 7)", large] < 4 * N_large**2  # LSA never builds it
assert PEAKS["full attention", large] / PEAKS["full attention", small] > PEAKS["LSA (k = 7)", large] / PEAKS["LSA (k = 7)", small]

# %% [markdown]
# ### The same on a GPU (CuPy)
#
# With CuPy and a CUDA GPU, the same layers run unchanged on the device. GPU kernels are
# asynchronous, so every timed step ends with `twins_np.backend.synchronize()`. At these
# sizes a GPU is dominated by kernel-launch overhead (tens of microseconds per kernel), so
# expect the times to be nearly flat until the work is large. The check asserted here is
# the robust one: the GPU computes the same gradient as the CPU, to float32 precision.

# %%
if twins_np.cupy_available():
    print("GPU:", twins_np.backend.gpu_description())
    GPU_SIZES = (14, 28, 56, 112)
    GPU_TIMES = {key: float(np.median(v)) for key, v in time_layers(GPU_SIZES, device="gpu").items()}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in KINDS:
        ax.loglog(np.array(GPU_SIZES) ** 2, [GPU_TIMES[name, H] * 1e3 for H in GPU_SIZES], "o-", label=name)
    ax.set(xlabel="tokens N = HW", ylabel="forward + backward time (ms)", title="CuPy time, median of repeats")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    plt.show()
    for name, H in GPU_TIMES:
        print(f"{name:16s} {H:>4} {GPU_TIMES[name, H] * 1e3:8.3f} ms")
    for name, (kind, k) in KINDS.items():
        dx_cpu = fwd_bwd_step(make_layer(kind, k, "cpu"), 28, "cpu")()
        dx_gpu = twins_np.asnumpy(fwd_bwd_step(make_layer(kind, k, "gpu"), 28, "gpu")())
        rel = np.abs(dx_gpu - dx_cpu).max() / np.abs(dx_cpu).max()
        assert rel < TOLERANCES["parity_f32_rel"], (name, rel)
else:
    print("no CUDA GPU here: the CuPy timings are skipped")

# %% [markdown]
# ## 5. The whole model: where the FLOPs of Twins go
#
# `analysis.count_flops(name)` walks a model's structure (no weights, no forward pass) and
# reports the MACs of every layer at $224 \times 224$; `.groups()` sums them into the
# breakdown below. The paper's numbers, 2.9 G for Twins-SVT-S and 3.8 G for Twins-PCPVT-S,
# *include* the attention products; the official README's 2.8 G and 3.7 G leave them out
# (`include_attention=False`).

# %%
MODELS = ("twins_svt_small", "twins_pcpvt_small")
REPORTS = {m: analysis.count_flops(m) for m in MODELS}
GROUPS = list(analysis.GROUPS)
print(f"{'GMAC':18s}" + "".join(f"{g:>20s}" for g in GROUPS) + f"{'total':>10s}")
for m, rep in REPORTS.items():
    g = rep.groups()
    print(f"{m:18s}" + "".join(f"{g[k] / 1e9:>20.3f}" for k in GROUPS) + f"{rep.total / 1e9:>10.3f}")

fig, ax = plt.subplots(figsize=(8.5, 5))
bottom = np.zeros(len(MODELS))
for group in GROUPS:
    vals = np.array([REPORTS[m].groups()[group] / 1e9 for m in MODELS])
    ax.bar([m.replace("twins_", "") for m in MODELS], vals, bottom=bottom, label=group)
    bottom += vals
for i, m in enumerate(MODELS):
    ax.text(i, bottom[i] + 0.05, f"{REPORTS[m].total / 1e9:.2f} G", ha="center")
ax.set_ylabel("G multiply-adds at 224 x 224")
ax.set_title("Where the MACs go (attention products included)")
ax.set_ylim(0, bottom.max() * 1.15)
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="group")
fig.tight_layout()
plt.show()

# %%
svt, pcpvt = REPORTS["twins_svt_small"], REPORTS["twins_pcpvt_small"]
assert round(svt.total / 1e9, 1) == 2.9  # the paper's Twins-SVT-S
assert round(pcpvt.total / 1e9, 1) == 3.8  # the paper's Twins-PCPVT-S
assert round(analysis.count_flops("twins_svt_small", include_attention=False).total / 1e9, 1) == 2.8  # README
assert round(analysis.count_flops("twins_pcpvt_small", include_attention=False).total / 1e9, 1) == 3.7  # README
for rep in REPORTS.values():
    assert sum(rep.groups().values()) == rep.total
    assert rep.groups()["attention matmuls"] / rep.total < 0.05  # the products are a small share at 224
    assert rep.groups()["mlp"] == max(rep.groups().values())  # the MLPs are the largest group
print(f"SVT-S {svt.total / 1e9:.1f} G, PCPVT-S {pcpvt.total / 1e9:.1f} G (paper: 2.9 G, 3.8 G)")

# %% [markdown]
# At $224 \times 224$ the attention products are only about 4% of either model: the windows
# and sub-sampling keep them small, and the MLPs and projections — linear in $N$ — carry the
# cost. The $(HW)^{1.5}$ versus $(HW)^2$ argument matters as the input grows: at the
# resolutions of segmentation the quadratic term of full attention would dominate
# everything else.

# %%
print(f"notebook ran in {time.perf_counter() - T_START:.1f} s")

# %% [markdown]
# ## Summary
#
# - twins-np's counter reproduces the paper's LSA and GSA costs exactly on divisible maps
#   and follows the implementation (padding, flooring) elsewhere.
# - The best window satisfies $k^2 \approx \sqrt{HW}$ ($k = 7$ at $56 \times 56$), with a
#   flat valley around it; alternating LSA/GSA scales as $(HW)^{1.5}$, between LSA's
#   $(HW)^1$ and full attention's $(HW)^2$.
# - Measured NumPy time follows the MAC count once the per-call overhead is paid; memory
#   shows full attention's $N^2$ map directly.
# - The whole-model counts give the paper's 2.9 G (SVT-S) and 3.8 G (PCPVT-S).
#
# ## Exercises
#
# 1. Redo the $k$ sweep with the **whole** layer cost (`analysis.attention_macs` instead of
#    the `attn` term) and $C = 64$. Does the best $k$ move, and why (look at the kv term)?
# 2. The paper uses $s_r = 8, 4, 2, 1$ rather than one key per $7 \times 7$ window. At
#    $224 \times 224$, how many GSA keys does each stage of Twins-SVT-S get with $s_r = 7$,
#    and why did the authors avoid that (Twins issue #9)?
# 3. Find the input size at which the attention products make up half of Twins-SVT-S's
#    MACs (use `count_flops(name, input_size=...)`). Repeat for a hypothetical model with
#    full attention in stage 1.
# 4. Add a fourth layer to `KINDS`: GSA with $s_r = 2$. Predict its growth exponent, then
#    measure it.
# 5. Time the layers in float64 (`make_layer(...).astype(np.float64)` and float64 inputs).
#    Is the fitted throughput halved?
