# %% [markdown]
# # 04 · Locally-grouped self-attention (LSA): windows, padding, and a backward you can step through
#
# Twins-SVT (Chu et al. 2021, section 3.2) alternates two attentions. The first, **LSA**,
# cuts the $H\times W$ token map into non-overlapping $\texttt{ws}\times\texttt{ws}$ windows
# ($\texttt{ws} = 7$ in the paper) and runs ordinary multi-head attention inside each window
# only, so its cost is $O(HW\cdot\texttt{ws}^2\,C)$ instead of $O((HW)^2 C)$. When $H$ or $W$ is not
# a multiple of `ws`, timm (whose weights and outputs twins-np reproduces) zero-pads the map on
# the right and at the bottom, and does **not** mask the padded tokens.
#
# **Learning goals**
#
# 1. Compute the padding (`pad_b`, `pad_r`) and see which tokens land in which window.
# 2. Run LSA's forward stage by stage with the functional pieces and match `F.lsa_forward`.
# 3. Run its backward stage by stage and match `F.lsa_backward`; follow what happens to the
#    padded tokens.
# 4. Show that padded tokens are keys and values equal to the `qkv` bias, and measure how much a
#    masked variant would differ.
# 5. Show that one LSA layer passes no gradient between windows.
#
# Derivations: `docs/derivations/windows.md`, `docs/derivations/lsa.md`,
# `docs/derivations/attention.md`.

# %%
# %load_ext autoreload
# %autoreload 2

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import twins_np
from twins_np import functional as F
from twins_np.gradcheck import TOLERANCES, check_backward, check_module, format_table
from twins_np.nn import LocallyGroupedAttn

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
# ## 1. Padding and windows
#
# A $5\times6$ token map with $\texttt{ws} = 4$ needs
#
# $$\texttt{pad\_b} = (\texttt{ws} - H \bmod \texttt{ws}) \bmod \texttt{ws} = 3, \qquad
# \texttt{pad\_r} = (\texttt{ws} - W \bmod \texttt{ws}) \bmod \texttt{ws} = 2,$$
#
# giving an $8\times8$ padded map and $n_W = 2\cdot2 = 4$ windows of $T = 16$ slots. Tokens are
# numbered row-major, $n = h\,W + w$, as everywhere in Twins.

# %%
H, W, ws = 5, 6, 4
size = (H, W)
pad_b, pad_r = F.window_pads(size, ws)
Hp, Wp = size[0] + pad_b, size[1] + pad_r  # the padded map
nW, T = (Hp // ws) * (Wp // ws), ws * ws
print(f"pad_b = {pad_b}, pad_r = {pad_r}, padded map {Hp}x{Wp}, {nW} windows of {T} slots")
assert (pad_b, pad_r) == (3, 2) and (nW, T) == (4, 16)

# Partition a map whose single channel holds "token index + 1": padded slots read 0.
ids = (np.arange(H * W) + 1.0).reshape(1, H * W, 1)
win_ids, _ = F.window_partition_forward(ids, size, ws)  # (1, nW, T, 1)
print("token index in each window slot (-1 = padding):")
print((win_ids[0, :, :, 0] - 1).astype(int))
real = win_ids[0, :, :, 0] > 0  # (nW, T): True for real tokens
print("real tokens per window:", real.sum(axis=1), "| padded slots:", int((~real).sum()))
assert real.sum() == H * W and (~real).sum() == Hp * Wp - H * W

# %%
window_of = (np.arange(Hp)[:, None] // ws) * (Wp // ws) + (np.arange(Wp)[None, :] // ws)  # (Hp, Wp)
fig, ax = plt.subplots(figsize=(5.5, 5))
ax.imshow(window_of, cmap="Pastel1", vmin=0, vmax=8)
for i in range(Hp):
    for j in range(Wp):
        if i < H and j < W:
            ax.text(j, i, str(i * W + j), ha="center", va="center", fontsize=9)
        else:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="gray", lw=0))
for b in range(0, Hp + 1, ws):
    ax.axhline(b - 0.5, color="k", lw=2)
for b in range(0, Wp + 1, ws):
    ax.axvline(b - 0.5, color="k", lw=2)
ax.plot([-0.5, W - 0.5, W - 0.5], [H - 0.5, H - 0.5, -0.5], color="tab:red", lw=2, ls="--")
ax.set_xticks(range(Wp))
ax.set_yticks(range(Hp))
ax.set_xlabel("column w (padded columns on the right)")
ax.set_ylabel("row h (padded rows at the bottom)")
ax.set_title("5x6 tokens, ws = 4: windows (colours), padding (hatched)")
plt.show()

# %% [markdown]
# Window 0 holds only real tokens; windows 1, 2 and 3 are partly padding (window 3 holds just
# two real tokens, 28 and 29, among 16 slots). The red dashed line is the border of the real map.
#
# ## 2. The forward, stage by stage
#
# LSA is a composition of functional pieces (timm's `LocallyGroupedAttn.forward`):
#
# | step | function | shape |
# |---|---|---|
# | pad + cut into windows | `window_partition_forward` | `(B, nW, T, C)` |
# | one Linear for q, k, v | `linear_forward(win, qkv_w, qkv_b)` | `(B, nW, T, 3C)` |
# | split | `split_qkv(qkv, 3, heads)` | 3 x `(B, nW, heads, T, hd)` |
# | attention in every window | `attention_forward(q, k, v)` | `(B, nW, heads, T, hd)` |
# | merge heads | `merge_heads` | `(B, nW, T, C)` |
# | glue windows + crop | `window_reverse_forward` | `(B, N, C)` |
# | output projection | `linear_forward(y, proj_w, proj_b)` | `(B, N, C)` |
#
# Random weights *and* random biases (zero biases would make the padded tokens exactly zero
# and hide what they do):

# %%
B, C, heads = 2, 8, 2
x = rng.standard_normal((B, H * W, C))
qkv_w, qkv_b = 0.5 * rng.standard_normal((3 * C, C)), rng.standard_normal(3 * C)
proj_w, proj_b = 0.5 * rng.standard_normal((C, C)), rng.standard_normal(C)

win, part_cache = F.window_partition_forward(x, size, ws)
qkv, qkv_cache = F.linear_forward(win, qkv_w, qkv_b)
q, k, v = F.split_qkv(qkv, 3, heads)
o, attn_cache = F.attention_forward(q, k, v)
o_merged = F.merge_heads(o)
y, rev_cache = F.window_reverse_forward(o_merged, size, ws)
out_steps, proj_cache = F.linear_forward(y, proj_w, proj_b)
for name, arr in [("x", x), ("win", win), ("qkv", qkv), ("q", q), ("attention out", o), ("merged", o_merged),
                  ("reversed + cropped", y), ("out", out_steps)]:  # fmt: skip
    print(f"{name:20s} {arr.shape}")

out, cache = F.lsa_forward(x, size, qkv_w, qkv_b, proj_w, proj_b, num_heads=heads, ws=ws)
print("LSACache fields:", cache._fields)
assert rel_err(out_steps, out) < 1e-15

# %% [markdown]
# ## 3. The backward, stage by stage
#
# Each step is undone by the backward of the same op, in reverse order (the chain rule written
# as code, `docs/derivations/lsa.md`). Note the two window functions: the backward of
# "glue + crop" is "zero-pad + cut" and vice versa, because they are each other's transposes.

# %%
dout = rng.standard_normal(out.shape)

# BEGIN SOLUTION lsa_backward
dy, dproj_w, dproj_b = F.linear_backward(dout, proj_cache)
do = F.window_reverse_backward(dy, rev_cache)  # (B, nW, T, C): zeros at padded query slots
dq, dk, dv = F.attention_backward(F.split_heads(do, heads), attn_cache)
dqkv = F.join_qkv([dq, dk, dv])
dwin, dqkv_w, dqkv_b = F.linear_backward(dqkv, qkv_cache)
dx = F.window_partition_backward(dwin, part_cache)  # the pad's backward is a slice
# END SOLUTION

grads = F.lsa_backward(dout, cache)
for name, mine, lib in zip(["dx", "dqkv_w", "dqkv_b", "dproj_w", "dproj_b"], [dx, dqkv_w, dqkv_b, dproj_w, dproj_b], grads):
    print(f"{name:8s} step by step vs F.lsa_backward: {rel_err(mine, lib):.1e}")
    assert rel_err(mine, lib) < 1e-15

# %% [markdown]
# What the padded slots receive (`pad` selects them in the `(nW, T)` window layout):
#
# * as **queries** they get exactly zero gradient: their outputs were cropped away;
# * as **keys and values** they get gradient, because real queries attended to them;
# * that gradient flows into `qkv_b` (and nowhere else): the padded rows of `win` are zero, so
#   they add nothing to `dqkv_w`, and `window_partition_backward` drops `dwin` at padded slots.

# %%
pad = ~real  # (nW, T)
dq_pad = np.abs(dq.transpose(0, 1, 3, 2, 4)[:, pad]).max()  # (B, nW, T, heads, hd) -> padded slots
dk_pad = np.abs(dk.transpose(0, 1, 3, 2, 4)[:, pad]).max()
dv_pad = np.abs(dv.transpose(0, 1, 3, 2, 4)[:, pad]).max()
dwin_pad = np.abs(dwin[:, pad]).max()
print(f"max |dq| at padded slots:   {dq_pad:.2e}")
print(f"max |dk|, |dv| at padded:   {dk_pad:.2f}, {dv_pad:.2f}")
print(f"max |dwin| at padded slots: {dwin_pad:.2f} (dropped by the slice)")
assert dq_pad == 0.0 and dk_pad > 0.1 and dv_pad > 0.1 and dwin_pad > 0.1

# %% [markdown]
# ## 4. Padded keys are not masked
#
# The padded slots of `win` are zero, so the `qkv` Linear outputs exactly its bias there:
# $k_z = b_k$ and $v_z = b_v$ for every padded slot $z$. Each real query in a padded window
# therefore attends to several copies of the key $b_k$ and mixes in the value $b_v$. This is what
# timm does (the official classification code has no padding at all; its segmentation code has
# a mask), so twins-np does it too.

# %%
b_k, b_v = qkv_b[C : 2 * C], qkv_b[2 * C :]
k_tok = F.merge_heads(k)  # (B, nW, T, C), head-split undone
v_tok = F.merge_heads(v)
assert np.array_equal(qkv[:, pad], np.broadcast_to(qkv_b, qkv[:, pad].shape))
assert np.allclose(k_tok[:, pad], b_k) and np.allclose(v_tok[:, pad], b_v)
probs_w1 = attn_cache.probs[:, 1]  # window 1: (B, heads, T queries, T keys)
share = probs_w1[..., pad[1]].sum(axis=-1)  # weight on the padded keys, per query
print(f"window 1: real queries put {share[..., real[1]].mean():.0%} of their attention on its {pad[1].sum()} padded keys")
assert share[..., real[1]].min() > 0.0

# %% [markdown]
# A **masked** variant would set the scores of padded keys to $-\infty$ before the softmax, so
# that they get zero weight. We build it from the same pieces (this is *not* what twins-np or
# timm compute) and compare the outputs token by token:

# %%
key_is_pad = pad[None, :, None, None, :]  # broadcast over (B, nW, heads, T_query, T_key)
scores = attn_cache.scale * q @ k.swapaxes(-1, -2)
probs_masked, _ = F.softmax_forward(np.where(key_is_pad, -np.inf, scores))
y_masked, _ = F.window_reverse_forward(F.merge_heads(probs_masked @ v), size, ws)
out_masked, _ = F.linear_forward(y_masked, proj_w, proj_b)

diff = np.linalg.norm(out - out_masked, axis=-1) / np.linalg.norm(out, axis=-1)  # (B, N) per token
print(f"relative difference, masked vs unmasked (whole output): {rel_err(out_masked, out):.2f}")

fig, ax = plt.subplots(figsize=(5, 4))
im = ax.imshow(diff[0].reshape(H, W), cmap="magma")
for b in range(0, H + 1, ws):
    ax.axhline(b - 0.5, color="w", lw=2)
for b in range(0, W + 1, ws):
    ax.axvline(b - 0.5, color="w", lw=2)
ax.set_xlabel("column w")
ax.set_ylabel("row h")
ax.set_title("|out - out_masked| / |out| per token")
plt.colorbar(im, ax=ax)
plt.show()

in_window0 = (np.arange(H)[:, None] < ws) & (np.arange(W)[None, :] < ws)
print(f"window 0 (no padding): max difference {diff[:, in_window0.ravel()].max():.1e}; "
      f"padded windows: mean {diff[:, ~in_window0.ravel()].mean():.2f}")  # fmt: skip
assert diff[:, in_window0.ravel()].max() < 1e-14  # identical where there is no padding
assert diff[:, ~in_window0.ravel()].min() > 1e-3 and rel_err(out_masked, out) > 0.1

# %% [markdown]
# Inside window 0 (no padding) both variants agree exactly; everywhere else the difference is
# not a rounding effect but tens of percent. The smaller the map compared with the window, the
# larger the padded share and the difference (at a $3\times3$ map with $\texttt{ws} = 7$, 40 of the
# 49 slots of the only window are padding). Weights trained with one convention do not carry
# over to the other, which is why twins-np follows timm exactly.
#
# ## 5. No gradient crosses a window border
#
# A token's output depends only on the tokens of its own window, so
# $\partial\,\text{out}[t] / \partial x[s] = 0$ for every $s$ outside $t$'s window. We check it by
# sending an upstream gradient into a single output token $t$ and looking at which input
# tokens receive gradient:

# %%
def grad_from_one_token(t):
    d = np.zeros_like(out)
    d[0, t] = rng.standard_normal(C)
    return np.linalg.norm(F.lsa_backward(d, cache)[0][0], axis=-1).reshape(H, W)


targets = [(1, 2), (4, 5)]  # (row, column) of the output token
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, (r_, c_) in zip(axes, targets):
    g_map = grad_from_one_token(r_ * W + c_)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("lightgray")  # exactly zero entries are shown grey
    im = ax.imshow(np.where(g_map == 0.0, np.nan, g_map), cmap=cmap)
    ax.plot(c_, r_, "r*", ms=14)
    for b in range(0, H + 1, ws):
        ax.axhline(b - 0.5, color="w", lw=2)
    for b in range(0, W + 1, ws):
        ax.axvline(b - 0.5, color="w", lw=2)
    ax.set_title(f"|d out[token {r_ * W + c_}] / d x| (grey: exactly 0)")
    ax.set_xlabel("column w")
    ax.set_ylabel("row h")
    plt.colorbar(im, ax=ax)
    same = (np.arange(H)[:, None] // ws == r_ // ws) & (np.arange(W)[None, :] // ws == c_ // ws)
    assert np.all(g_map[~same] == 0.0), "gradient leaked across a window border"
    assert np.all(g_map[same] > 0.0), "every token of the window influences the output"
plt.tight_layout()
plt.show()

# %% [markdown]
# The gradient outside the window is *exactly* zero, not just small. A stack of LSA layers
# alone would never let information cross a window border; Twins-SVT interleaves GSA
# (notebook 05), which lets every token see a summary of the whole map, and the PEG's
# $3\times3$ convolution also straddles window borders.
#
# ## 6. Gradient checks
#
# The functional pair, every element of every input (`full` mode), and the module
# `LocallyGroupedAttn` (timm's name and parameter names `qkv.*`, `proj.*`) on a sample of
# elements:

# %%
args = [x, size, qkv_w, qkv_b, proj_w, proj_b, heads, ws]
# device=DEVICE: the analytic pass on TWINS_NP_DEVICE's device, the finite differences on the host
rows = check_backward(F.lsa_forward, F.lsa_backward, args, wrt=[0, 2, 3, 4, 5],
                      names=["x", "qkv_w", "qkv_b", "proj_w", "proj_b"], device=DEVICE)  # fmt: skip
print(format_table(rows, TOL, seed=0))
assert max(r.max_rel_err for r in rows) < TOL

lsa = LocallyGroupedAttn(C, heads, ws=ws, rng=1)
for p in lsa.parameters():  # random biases: zeros would hide bugs
    p.data = p.data + 0.2 * rng.standard_normal(p.shape).astype(p.data.dtype)
print(lsa)
rows = check_module(lsa, x, size, device=DEVICE)
print(format_table(rows, TOL, seed=0))
assert max(r.max_rel_err for r in rows) < TOL

# %% [markdown]
# ## Exercises
#
# 1. **The masked LSA's backward.** Complete `masked_lsa_forward` / `masked_lsa_backward`
#    below from the functional pieces (the only change is the $-\infty$ scores of padded keys;
#    hint: `F.attention_backward` can be reused if you put the masked probabilities in the
#    cache, or use `F.softmax_backward` directly) and run `check_backward` on it. Which padded
#    slots now get zero gradient as keys?
# 2. **Where the padding's gradient goes.** Split `dqkv_b` into the padded and the real slots'
#    shares. Show that the *key* third of `dqkv_b` is zero in total (notebook 03, section 4),
#    while the padded slots' key share is not zero on its own.
# 3. **Padding overhead.** For a $100\times100$ image, the SVT stage maps are $25^2, 12^2, 6^2, 3^2$
#    with $\texttt{ws} = 7$. Use `F.window_pads` to compute the fraction of padded slots per stage,
#    and the extra multiply-adds of the `qkv` Linear ($3N_pC^2$ instead of $3NC^2$).
# 4. **A mask bug.** The official segmentation code builds its mask with `mask[:, -pad_b:, :]`.
#    What does `np.zeros((1, 4, 4))[:, -0:, :]` select? When is that code's mask active?
# 5. **Receptive field.** Stack two `LocallyGroupedAttn` layers on the $5\times6$ map. Which input
#    tokens influence output token 0 now? Why does stacking not help?

# %%
def masked_lsa_forward(x, size, qkv_w, qkv_b, proj_w, proj_b, num_heads, ws):
    """Exercise 1: LSA with padded keys masked out; return (out, cache)."""
    # BEGIN SOLUTION nb04_masked_lsa
    scale = (x.shape[-1] // num_heads) ** -0.5
    win, part_cache = F.window_partition_forward(x, size, ws)  # (B, nW, T, C)
    real, _ = F.window_partition_forward(np.ones((*x.shape[:2], 1)), size, ws)  # 1 at real slots, 0 at padding
    qkv, qkv_cache = F.linear_forward(win, qkv_w, qkv_b)
    q, k, v = F.split_qkv(qkv, 3, num_heads)  # (B, nW, heads, T, hd)
    scores = np.where(real[:, :, None, None, :, 0] > 0, scale * (q @ k.swapaxes(-1, -2)), -np.inf)
    P, sm_cache = F.softmax_forward(scores)  # padded keys get probability 0
    y, rev_cache = F.window_reverse_forward(F.merge_heads(P @ v), size, ws)
    out, proj_cache = F.linear_forward(y, proj_w, proj_b)
    return out, (part_cache, qkv_cache, q, k, v, sm_cache, scale, rev_cache, proj_cache, num_heads)
    # END SOLUTION


def masked_lsa_backward(dout, cache):
    """Exercise 1: return dx, dqkv_w, dqkv_b, dproj_w, dproj_b."""
    # BEGIN SOLUTION nb04_masked_lsa
    part_cache, qkv_cache, q, k, v, sm_cache, scale, rev_cache, proj_cache, heads = cache
    dy, dproj_w, dproj_b = F.linear_backward(dout, proj_cache)
    do = F.split_heads(F.window_reverse_backward(dy, rev_cache), heads)
    dv = sm_cache.y.swapaxes(-1, -2) @ do
    dS = scale * F.softmax_backward(do @ v.swapaxes(-1, -2), sm_cache)  # 0 at the masked keys
    dqkv = F.join_qkv([dS @ k, dS.swapaxes(-1, -2) @ q, dv])
    dwin, dqkv_w, dqkv_b = F.linear_backward(dqkv, qkv_cache)
    return F.window_partition_backward(dwin, part_cache), dqkv_w, dqkv_b, dproj_w, dproj_b
    # END SOLUTION


try:
    rows = check_backward(masked_lsa_forward, masked_lsa_backward, args, wrt=[0, 2, 3, 4, 5],
                          names=["x", "qkv_w", "qkv_b", "proj_w", "proj_b"])  # fmt: skip
    print(format_table(rows, TOL, seed=0))
except NotImplementedError:
    print("exercise 1 not done yet")
