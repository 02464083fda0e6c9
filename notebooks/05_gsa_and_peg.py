# %% [markdown]
# # 05 · Global sub-sampled attention (GSA) and the positional encoding generator (PEG)
#
# LSA (notebook 04) never lets information cross a window border. Twins-SVT (Chu et al. 2021,
# section 3.2) therefore follows every LSA block with a **GSA** block: every token is a query,
# but the keys and values come from a *summary* of the map, made by a convolution with
# kernel = stride = `sr` (followed by a LayerNorm). Twins-PCPVT (section 3.1) uses GSA in
# every block, as PVT does. Both replace absolute position embeddings by the **PEG** of CPVT, a
# $3\times3$ depthwise convolution with a residual, applied once per stage after the first block.
#
# **Learning goals**
#
# 1. Write the non-overlapping sub-sampling conv as "patchify + one matrix product" and check it
#    against a naive loop.
# 2. See what flooring does on a map not divisible by `sr`: dropped tokens feed no key or value,
#    yet still receive gradient as queries.
# 3. Step through GSA's forward and backward with the functional pieces; read the $N\times N_s$
#    attention map; see that `sr = 1` is plain global multi-head attention.
# 4. Write the depthwise $3\times3$ conv as nine shifted products and check it against a naive loop.
# 5. See how the PEG's zero padding tells border tokens where they are.
#
# Derivations: `docs/derivations/gsa.md`, `docs/derivations/conv.md` (patch conv, depthwise
# conv, and the PEG in its section 3), and for the pieces `docs/derivations/attention.md` and
# `docs/derivations/layernorm.md`.

# %%
# %load_ext autoreload
# %autoreload 2

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import twins_np
from twins_np import functional as F
from twins_np.gradcheck import TOLERANCES, check_backward, check_module, format_table
from twins_np.nn import GlobalSubSampleAttn, PosConv

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
# ## 1. The sub-sampling conv is a matrix product
#
# A convolution with kernel = stride = $k$ and no padding looks at non-overlapping
# $k\times k$ patches. Flatten every patch (channels-last map `(B, H, W, C_in)`, weight in
# PyTorch's layout `(C_out, C_in, k, k)`) into a row of the patch matrix
# $X_\text{cols}\in\mathbb R^{(B H_s W_s)\times(C_\text{in}k^2)}$; then
#
# $$\text{out} = X_\text{cols}\,W_\text{flat}^\top + b, \qquad W_\text{flat}\in\mathbb R^{C_\text{out}\times C_\text{in}k^2}.$$
#
# "Patchify" is a reshape and a transpose, so the conv costs one matrix product, on NumPy and
# CuPy alike. The same function serves the patch embedding ($k = 4$ or 2) and GSA ($k = \texttt{sr}$).

# %%
def patch_conv_naive(x, w, b):
    """Reference: a loop over output pixels (slow, obvious)."""
    B_, H_, W_, _ = x.shape
    Co, _, k_, _ = w.shape
    out = np.zeros((B_, H_ // k_, W_ // k_, Co))
    for i in range(H_ // k_):
        for j in range(W_ // k_):
            patch = x[:, i * k_ : (i + 1) * k_, j * k_ : (j + 1) * k_, :]  # (B, k, k, C_in)
            out[:, i, j, :] = np.einsum("buvc,ocuv->bo", patch, w) + b
    return out


xm = rng.standard_normal((2, 32, 24, 16))  # a 32x24 map, 16 channels, k = 2
wk, bk = rng.standard_normal((16, 16, 2, 2)), rng.standard_normal(16)
t0 = time.perf_counter()
ref = patch_conv_naive(xm, wk, bk)
t_naive = time.perf_counter() - t0
t0 = time.perf_counter()
out, pc_cache = F.patch_conv_forward(xm, wk, bk)
t_fast = time.perf_counter() - t0
print(f"out {out.shape}, patch matrix {pc_cache.cols.shape}; naive loop {t_naive * 1e3:.2f} ms, patchify {t_fast * 1e3:.2f} ms")
assert rel_err(out, ref) < 1e-14
assert pc_cache.cols.shape == (2 * 16 * 12, 16 * 2 * 2)

# %% [markdown]
# ## 2. Flooring: a $7\times5$ map with `sr = 2`
#
# The conv floors: $H_s = \lfloor 7/2\rfloor = 3$, $W_s = \lfloor 5/2\rfloor = 2$, so
# $N_s = 6$ summary tokens, and the last row **and** the last column of the map (11 of the 35
# tokens) fall into no patch.

# %%
H, W, sr = 7, 5, 2
Hs, Ws = H // sr, W // sr
N, Ns = H * W, Hs * Ws
dropped = np.ones((H, W), dtype=bool)
dropped[: Hs * sr, : Ws * sr] = False
print(f"N = {N} tokens -> Ns = {Ns} summary tokens; {dropped.sum()} tokens feed no key/value")
assert (Hs, Ws, Ns) == (3, 2, 6) and dropped.sum() == 11

patch_id = np.where(dropped, -1, (np.arange(H)[:, None] // sr) * Ws + np.arange(W)[None, :] // sr)
fig, ax = plt.subplots(figsize=(4, 5))
ax.imshow(np.where(dropped, np.nan, patch_id), cmap="Pastel1", vmin=0, vmax=8)
for i in range(H):
    for j in range(W):
        if dropped[i, j]:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="gray", lw=0))
        else:
            ax.text(j, i, f"s{patch_id[i, j]}", ha="center", va="center", fontsize=9)
ax.set_xlabel("column w")
ax.set_ylabel("row h")
ax.set_title("7x5 map, sr = 2: which summary token\neach token feeds (hatched: dropped)")
plt.show()

# %% [markdown]
# ## 3. GSA, stage by stage
#
# | step | function | shape |
# |---|---|---|
# | queries from every token | `linear_forward(x, q_w, q_b)` | `(B, N, C)` |
# | sub-sampling conv (k = s = sr) | `patch_conv_forward(x as (B, H, W, C), sr_w, sr_b)` | `(B, Hs, Ws, C)` |
# | LayerNorm, eps $10^{-5}$ | `layernorm_forward` | `(B, Ns, C)` |
# | keys and values | `linear_forward(s, kv_w, kv_b)`, `split_qkv(kv, 2, heads)` | 2 x `(B, heads, Ns, hd)` |
# | attention | `attention_forward(split_heads(q), k, v)` | `(B, heads, N, hd)` |
# | merge heads, projection | `merge_heads`, `linear_forward(., proj_w, proj_b)` | `(B, N, C)` |
#
# The number of queries stays $N$, so the output has the input's shape, while the attention
# map is only $N\times N_s$: the cost falls from $N^2$ to $N N_s = N^2/\texttt{sr}^2$.

# %%
B, C, heads = 2, 8, 2
x = rng.standard_normal((B, N, C))
q_w, q_b = 0.5 * rng.standard_normal((C, C)), rng.standard_normal(C)
kv_w, kv_b = 0.5 * rng.standard_normal((2 * C, C)), rng.standard_normal(2 * C)
proj_w, proj_b = 0.5 * rng.standard_normal((C, C)), rng.standard_normal(C)
sr_w, sr_b = 0.3 * rng.standard_normal((C, C, sr, sr)), rng.standard_normal(C)
norm_w, norm_b = 1.0 + 0.3 * rng.standard_normal(C), rng.standard_normal(C)

q, q_cache = F.linear_forward(x, q_w, q_b)
s4, sr_cache = F.patch_conv_forward(x.reshape(B, H, W, C), sr_w, sr_b)
s, norm_cache = F.layernorm_forward(s4.reshape(B, Ns, C), norm_w, norm_b, 1e-5)
kv, kv_cache = F.linear_forward(s, kv_w, kv_b)
k, v = F.split_qkv(kv, 2, heads)
o, attn_cache = F.attention_forward(F.split_heads(q, heads), k, v)
out_steps, proj_cache = F.linear_forward(F.merge_heads(o), proj_w, proj_b)

gsa_args = [x, (H, W), q_w, q_b, kv_w, kv_b, proj_w, proj_b, heads, sr, (sr_w, sr_b), norm_w, norm_b]
out, cache = F.gsa_forward(*gsa_args)
print("GSACache fields:", cache._fields)
print("summary tokens:", s.shape, "| keys:", k.shape, "| attention map:", cache.attn.probs.shape)
assert rel_err(out_steps, out) < 1e-15
assert cache.attn.probs.shape == (B, heads, N, Ns)

# the LayerNorm makes every summary token zero-mean, unit-variance before its affine map
assert np.abs(norm_cache.xhat.mean(axis=-1)).max() < 1e-14
assert np.abs(norm_cache.xhat.var(axis=-1) - 1.0).max() < 1e-3

# %%
fig, ax = plt.subplots(figsize=(4, 6))
im = ax.imshow(cache.attn.probs[0, 0], cmap="viridis", aspect="auto", vmin=0, vmax=1)
ax.set_xlabel(f"summary key (Ns = {Ns})")
ax.set_ylabel(f"query token n = h*W + w (N = {N})")
ax.set_title("GSA attention map, batch 0, head 0")
plt.colorbar(im, ax=ax, label="probability")
plt.show()

# %% [markdown]
# Every row is a distribution over the six summary keys, *including* the rows of the 11 dropped
# tokens: they still ask questions (queries), they just are not part of any answer (keys).
#
# ## 4. The backward: two paths from $x$
#
# $x$ enters GSA twice, as queries and through the summary as keys and values, so its gradient
# is the sum of two paths. Running the backward step by step keeps them apart:

# %%
dout = rng.standard_normal(out.shape)
# BEGIN SOLUTION gsa_backward
do, dproj_w, dproj_b = F.linear_backward(dout, proj_cache)
dq, dk, dv = F.attention_backward(F.split_heads(do, heads), attn_cache)
ds, dkv_w, dkv_b = F.linear_backward(F.join_qkv([dk, dv]), kv_cache)
dx_query, dq_w, dq_b = F.linear_backward(F.merge_heads(dq), q_cache)  # path 1: queries
ds, dnorm_w, dnorm_b = F.layernorm_backward(ds, norm_cache)
dx4, dsr_w, dsr_b = F.patch_conv_backward(ds.reshape(B, Hs, Ws, C), sr_cache)
dx_keyvalue = dx4.reshape(B, N, C)  # path 2: keys and values through the summary
# END SOLUTION

# gsa_backward returns one gradient per array argument, in gsa_forward's order
g_x, g_q_w, g_q_b, g_kv_w, g_kv_b, g_proj_w, g_proj_b, (g_sr_w, g_sr_b), g_norm_w, g_norm_b = F.gsa_backward(dout, cache)
assert rel_err(dx_query + dx_keyvalue, g_x) < 1e-14
for name, mine, theirs in [("q_w", dq_w, g_q_w), ("kv_w", dkv_w, g_kv_w), ("proj_w", dproj_w, g_proj_w),
                           ("sr_w", dsr_w, g_sr_w), ("norm_w", dnorm_w, g_norm_w), ("sr_b", dsr_b, g_sr_b)]:
    assert rel_err(mine, theirs) < 1e-14, name

# %%
fig, axes = plt.subplots(1, 3, figsize=(10, 4.5), layout="constrained")
maps = [("query path", dx_query), ("key/value path", dx_keyvalue), ("total dx", g_x)]
norms = [np.linalg.norm(d[0], axis=-1).reshape(H, W) for _, d in maps]
vmax = max(float(m.max()) for m in norms)  # one colour scale: the two paths' shares of the total compare
cmap = plt.get_cmap("viridis").copy()
cmap.set_bad("lightgray")
for ax, (title, _), m in zip(axes, maps, norms):
    im = ax.imshow(np.where(m == 0.0, np.nan, m), cmap=cmap, vmin=0.0, vmax=vmax)
    ax.axhline(Hs * sr - 0.5, color="r", ls="--")
    ax.axvline(Ws * sr - 0.5, color="r", ls="--")
    ax.set_title(f"|dx| per token: {title}", fontsize=10)
    ax.set_xlabel("column w")
    ax.set_ylabel("row h")
fig.colorbar(im, ax=axes, shrink=0.8, label="|dx| (one scale for all three)")
fig.suptitle("GSA input gradient, 7x5 map, sr = 2 (grey: exactly 0; red: floor border)")
plt.show()

# %%
kv_dropped = np.abs(dx_keyvalue.reshape(B, H, W, C)[:, dropped]).max()
q_dropped = np.linalg.norm(dx_query.reshape(B, H, W, C)[:, dropped], axis=-1).min()
print(f"dropped tokens: max |dx| via keys/values = {kv_dropped}, min |dx| via queries = {q_dropped:.3f}")
assert kv_dropped == 0.0  # exactly zero: they fed no patch of the conv
assert q_dropped > 0.0  # but every one of them still gets gradient as a query
assert np.linalg.norm(dx_keyvalue.reshape(B, H, W, C)[:, ~dropped], axis=-1).min() > 0.0

# %% [markdown]
# ## 5. `sr = 1` is plain global multi-head attention
#
# With `sr_ratio = 1` there is no conv and no extra LayerNorm: the keys and values come from
# all $N$ tokens, and GSA is the global multi-head self-attention of ViT (with separate `q` and
# `kv` Linears). On a square map this is exactly an LSA whose single window covers the whole
# map, with the fused weight `qkv_w = [q_w; kv_w]`:

# %%
Hg = Wg = 4
xg = rng.standard_normal((B, Hg * Wg, C))
out_g, cache_g = F.gsa_forward(xg, (Hg, Wg), q_w, q_b, kv_w, kv_b, proj_w, proj_b, heads, 1)
assert cache_g.sr is None and cache_g.norm is None
qg = F.split_heads(F.linear_forward(xg, q_w, q_b)[0], heads)
kg, vg = F.split_qkv(F.linear_forward(xg, kv_w, kv_b)[0], 2, heads)
og = F.linear_forward(F.merge_heads(F.attention_forward(qg, kg, vg)[0]), proj_w, proj_b)[0]
out_lsa, _ = F.lsa_forward(xg, (Hg, Wg), np.concatenate([q_w, kv_w]), np.concatenate([q_b, kv_b]), proj_w, proj_b,
                           num_heads=heads, ws=Hg)  # fmt: skip
print(f"sr = 1 vs manual global MHSA: {rel_err(out_g, og):.1e}; vs LSA with one {Hg}x{Wg} window: {rel_err(out_g, out_lsa):.1e}")
assert rel_err(out_g, og) < 1e-14 and rel_err(out_g, out_lsa) < 1e-14

# %% [markdown]
# ## 6. The depthwise $3\times3$ conv as nine shifted products
#
# The PEG's conv has one $3\times3$ filter per channel (`groups = C`), stride 1 and zero padding 1:
#
# $$\text{out}[i, j, c] = b_c + \sum_{u=0}^{2}\sum_{v=0}^{2} x_\text{pad}[i+u,\, j+v,\, c]\; w[c, 0, u, v].$$
#
# Read the sum the other way round: for each of the nine taps $(u, v)$, every output pixel reads
# the input pixel at offset $(u-1, v-1)$, so the tap is the whole map *shifted* by $(1-u, 1-v)$
# and multiplied by one number per channel. Nine slice-multiply-adds, no loop over pixels, the
# same code on NumPy and CuPy. An "L"-shaped input makes the shifts visible:

# %%
Hd, Wd, Cd = 7, 7, 3
xd = np.zeros((1, Hd, Wd, Cd))
xd[0, 1:5, 2, :] = 1.0  # vertical stroke
xd[0, 4, 2:5, :] = 1.0  # horizontal stroke
wd, bd = rng.standard_normal((Cd, 1, 3, 3)), rng.standard_normal(Cd)

xpad = np.pad(xd, ((0, 0), (1, 1), (1, 1), (0, 0)))
contrib = np.zeros((3, 3, Hd, Wd, Cd))
for u in range(3):
    for v in range(3):
        contrib[u, v] = xpad[0, u : u + Hd, v : v + Wd, :] * wd[:, 0, u, v]
out_shift = contrib.sum(axis=(0, 1)) + bd

naive = np.zeros((Hd, Wd, Cd))
for i in range(Hd):
    for j in range(Wd):
        for c in range(Cd):
            naive[i, j, c] = bd[c] + np.sum(xpad[0, i : i + 3, j : j + 3, c] * wd[c, 0])

out_dw, _ = F.depthwise_conv3x3_forward(xd, wd, bd)
assert rel_err(out_shift, out_dw[0]) < 1e-14 and rel_err(naive, out_dw[0]) < 1e-14

fig, axes = plt.subplots(3, 4, figsize=(10, 7.5))
lim = np.abs(contrib[..., 0]).max()
for u in range(3):
    for v in range(3):
        ax = axes[u, v]
        ax.imshow(contrib[u, v, :, :, 0], cmap="coolwarm", vmin=-lim, vmax=lim)
        ax.set_title(f"tap (u={u}, v={v}), w = {wd[0, 0, u, v]:+.2f}", fontsize=9)
        ax.set_xticks(np.arange(-0.5, Wd), minor=True)
        ax.set_yticks(np.arange(-0.5, Hd), minor=True)
        ax.grid(which="minor", color="w", lw=0.5)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
axes[0, 3].imshow(xd[0, :, :, 0], cmap="gray")
axes[0, 3].set_title("input, channel 0")
axes[1, 3].imshow(out_dw[0, :, :, 0] - bd[0], cmap="coolwarm")
axes[1, 3].set_title("sum of the 9 taps")
axes[2, 3].axis("off")
for ax in axes[:2, 3]:
    ax.set_xlabel("column")
    ax.set_ylabel("row")
plt.suptitle("Depthwise 3x3 conv of channel 0: tap (u, v) is the input shifted by (1-u, 1-v), times one weight")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. The PEG: conv plus residual
#
# $$\operatorname{PEG}(x) = x + \operatorname{DWConv}_{3\times3}(x),$$
#
# applied to the tokens viewed as an $H\times W$ map. Its backward is the residual's
# $\mathrm dout$ plus the conv's backward (each tap's backward is the opposite shift).

# %%
Hp_, Wp_ = 6, 7
xp = rng.standard_normal((B, Hp_ * Wp_, C))
w_peg, b_peg = 0.5 * rng.standard_normal((C, 1, 3, 3)), rng.standard_normal(C)
out_peg, peg_cache = F.peg_forward(xp, (Hp_, Wp_), w_peg, b_peg)
conv_only, _ = F.depthwise_conv3x3_forward(xp.reshape(B, Hp_, Wp_, C), w_peg, b_peg)
assert rel_err(out_peg, xp + conv_only.reshape(B, -1, C)) < 1e-15

# %% [markdown]
# **What the PEG does to position information.** Twins has no position embedding; the PEG
# (from CPVT, which Twins-PCPVT adopts in section 3.1) is what lets tokens know where they are.
# Feed it a map in which *every token is the same vector*. An interior token sees nine copies of
# that vector; a border token sees some zeros of the padding instead; a corner token sees the
# most zeros. So the output separates nine kinds of position (interior, four edges, four
# corners) although the input carried no position at all:

# %%
const_token = rng.standard_normal(C)
x_const = np.broadcast_to(const_token, (1, Hp_ * Wp_, C)).copy()
y_const, _ = F.peg_forward(x_const, (Hp_, Wp_), w_peg, b_peg)
norms = np.linalg.norm(y_const[0], axis=-1).reshape(Hp_, Wp_)

fig, ax = plt.subplots(figsize=(5.5, 4.5))
im = ax.imshow(norms, cmap="viridis")
for i in range(Hp_):
    for j in range(Wp_):
        ax.text(j, i, f"{norms[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
ax.set_xlabel("column w")
ax.set_ylabel("row h")
ax.set_title("|PEG(x)| per token for a constant input map")
plt.colorbar(im, ax=ax)
plt.show()

# %%
interior = norms[1:-1, 1:-1]
corners = [norms[0, 0], norms[0, -1], norms[-1, 0], norms[-1, -1]]
print(f"interior: {interior.min():.6f} .. {interior.max():.6f}; corners: {np.round(corners, 4)}")
assert np.ptp(interior) < 1e-12 * interior.max()  # all interior tokens identical
assert all(abs(c_ - interior[0, 0]) > 1e-3 for c_ in corners)  # corners differ from the interior
n_kinds = len(np.unique(np.round(y_const[0], 10), axis=0))
print("distinct output tokens:", n_kinds)
assert n_kinds == 9  # interior, 4 edges, 4 corners

# %% [markdown]
# Stacked stages and blocks spread this signal inwards: after a few layers, a token's features
# depend on its distance to the border. Padding with something other than zeros (e.g.
# replicating the border) would remove the signal entirely (exercise 3).
#
# ## 8. Gradient checks
#
# The functional pairs, every element (`full`), with flooring (`sr = 2` on $7\times5$), and the
# modules `GlobalSubSampleAttn` (timm's parameter names `q.*`, `kv.*`, `proj.*`, `sr.*`,
# `norm.*`) and `PosConv` (`proj.0.*`) on samples of elements:

# %%
names = ["x", "q_w", "q_b", "kv_w", "kv_b", "proj_w", "proj_b", "sr_w", "sr_b", "norm_w", "norm_b"]


def gsa_flat(x, q_w, q_b, kv_w, kv_b, proj_w, proj_b, sr_w, sr_b, norm_w, norm_b):
    """gsa_forward with every checked array a positional argument, in gsa_backward's order."""
    return F.gsa_forward(x, (H, W), q_w, q_b, kv_w, kv_b, proj_w, proj_b, heads, sr, (sr_w, sr_b), norm_w, norm_b)


flat_args = [x, q_w, q_b, kv_w, kv_b, proj_w, proj_b, sr_w, sr_b, norm_w, norm_b]
# device=DEVICE: the analytic passes on TWINS_NP_DEVICE's device, the finite differences on the host
rows = check_backward(gsa_flat, F.gsa_backward, flat_args, names=names, device=DEVICE)
print(format_table(rows, TOL, seed=0))
assert max(r.max_rel_err for r in rows) < TOL

rows = check_backward(F.peg_forward, F.peg_backward, [xp, (Hp_, Wp_), w_peg, b_peg], wrt=[0, 2, 3], names=["x", "w", "b"],
                      device=DEVICE)  # fmt: skip
print(format_table(rows, TOL, seed=0))
assert max(r.max_rel_err for r in rows) < TOL

for module in (GlobalSubSampleAttn(C, heads, sr_ratio=sr, rng=1), PosConv(C, C, rng=1)):
    for p in module.parameters():  # random, non-trivial parameters: zero biases hide bugs
        p.data = p.data + 0.2 * rng.standard_normal(p.shape).astype(p.data.dtype)
    rows = check_module(module, x, (H, W), device=DEVICE)
    print(type(module).__name__)
    print(format_table(rows, TOL, seed=0))
    assert max(r.max_rel_err for r in rows) < TOL

# %% [markdown]
# ## Exercises
#
# 1. **Average pooling instead of a conv.** The Twins authors report that a learned conv
#    sub-sampler slightly beats average pooling. Complete `avgpool_forward` / `avgpool_backward`
#    below (non-overlapping $\texttt{sr}\times\texttt{sr}$ means on a `(B, H, W, C)` map, flooring
#    like the conv) and run `check_backward`. Which pixels get zero gradient?
# 2. **One key.** At a $32\times32$ input, every SVT stage's GSA has $N_s = 1$ (e.g. $8\times8$ with
#    `sr = 8`). Run `F.gsa_forward` on an $8\times8$ map with `sr = 8` and show that `dq_w` and
#    `dq_b` are exactly zero. Why? (Notebook 03, exercise 2.)
# 3. **Replicate padding.** Pad the constant map of section 7 by repeating its border
#    (`np.pad(..., mode="edge")`) instead of zeros, apply the nine taps, and show that all output
#    tokens are then equal: the position signal came from the zeros.
# 4. **Cost.** At stage 1 of a 224x224 image ($56\times56$ tokens, `sr = 8`), compare $N^2$ with
#    $N N_s$, and the extra $N_s\,\texttt{sr}^2 C^2$ multiply-adds of the conv.
# 5. **Queries only.** Perturb the input at one dropped token (bottom-right corner) of the
#    $7\times5$ map and show that only that token's output changes. Then perturb a kept token:
#    why do all outputs change?

# %%
def avgpool_forward(x, sr):
    """Exercise 1: (B, H, W, C) -> (B, H // sr, W // sr, C) patch means; return (out, cache)."""
    # BEGIN SOLUTION nb05_avgpool
    B_, H_, W_, C_ = x.shape
    Hs, Ws = H_ // sr, W_ // sr  # floor like the conv: the last rows / columns are dropped
    patches = x[:, : Hs * sr, : Ws * sr].reshape(B_, Hs, sr, Ws, sr, C_)
    return patches.mean(axis=(2, 4)), (x.shape, sr)
    # END SOLUTION


def avgpool_backward(dout, cache):
    """Exercise 1: return dx of shape (B, H, W, C)."""
    # BEGIN SOLUTION nb05_avgpool
    shape, sr = cache
    B_, Hs, Ws, C_ = dout.shape
    dx = np.zeros(shape, dtype=dout.dtype)  # dropped rows / columns get zero gradient
    share = np.broadcast_to(dout[:, :, None, :, None, :] / (sr * sr), (B_, Hs, sr, Ws, sr, C_))
    dx[:, : Hs * sr, : Ws * sr] = share.reshape(B_, Hs * sr, Ws * sr, C_)
    return dx
    # END SOLUTION


try:
    rows = check_backward(avgpool_forward, avgpool_backward, [x.reshape(B, H, W, C), sr], wrt=[0], names=["x"])
    print(format_table(rows, TOL, seed=0))
except NotImplementedError:
    print("exercise 1 not done yet")
