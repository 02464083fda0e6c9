# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 06 · Receptive fields: what LSA, the PEG and GSA let an output token see
#
# Twins-SVT interleaves two attentions. **LSA** (locally-grouped self-attention) only mixes
# the tokens of one $k \times k$ window; **GSA** (global sub-sampled attention) lets every
# token query a summary of the whole map. The paper's claim (Chu et al. 2021, section 3.2)
# is that LSA alone would leave the windows isolated, and that one GSA, or the convolutional
# position encoding (the PEG), is what lets information cross window borders.
#
# This notebook checks that claim exactly, in two ways:
#
# 1. the **theoretical receptive field**: which input tokens *can* influence an output
#    token, computed as a boolean reachability map by composing the connectivity of every
#    layer;
# 2. the **effective receptive field** (ERF): how strongly they *do*, measured with
#    twins-np's own hand-written backward as the mean $|\partial\, \text{out}_t / \partial x|$
#    over random inputs and random weights.
#
# **Learning goals**
#
# - Write the connectivity of LSA, GSA, the PEG, the MLP and LayerNorm as boolean matrices
#   and compose them into a receptive field.
# - Measure an effective receptive field with a backward pass whose upstream gradient is
#   non-zero at a single output token.
# - See (and assert) that LSA stacks never leave their window, that the PEG widens the field
#   by exactly one token across a window border, and that one GSA makes it global.
# - Spot the edge cases: the right/bottom padding of LSA and the rows GSA's sub-sampling
#   conv floors away.

# %%
# %load_ext autoreload
# %autoreload 2

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import twins_np
from twins_np import nn

# the device of the device-aware cells: TWINS_NP_DEVICE=gpu runs them on CuPy (a CUDA GPU); default the CPU
DEVICE = os.environ.get("TWINS_NP_DEVICE", "cpu")
assert DEVICE == "cpu" or (DEVICE == "gpu" and twins_np.cupy_available()), f"TWINS_NP_DEVICE={DEVICE!r}: no CUDA GPU here"

T_START = time.perf_counter()
print("twins-np", twins_np.__version__)

# %% [markdown]
# ## 1. The theoretical receptive field as a reachability map
#
# Number the tokens of an $H \times W$ map row-major, $n = hW + w$. For one layer
# $f: x \mapsto y$, write a boolean matrix $R \in \{0,1\}^{N_\text{out} \times N_\text{in}}$
# with $R_{ts} = 1$ when the output token $t$ depends on the input token $s$ (for generic
# weights). A stack $f_L \circ \dots \circ f_1$ has the boolean product
#
# $$R^{\text{stack}} = R^{(L)} \odot R^{(L-1)} \odot \dots \odot R^{(1)}, \qquad
#   (A \odot B)_{ts} = \bigvee_u A_{tu} \wedge B_{us},$$
#
# i.e. $t$ reaches $s$ when some path of layer-by-layer dependencies connects them. The
# receptive field of $t$ is the row $R^{\text{stack}}_{t,:}$, reshaped to $H \times W$.
#
# The layers of Twins, one by one:
#
# | layer | $R_{ts} = 1$ when |
# |---|---|
# | LayerNorm, MLP | $s = t$ (they act on each token alone) |
# | LSA, window $k$ | $s$ and $t$ lie in the same $k \times k$ window |
# | GSA, ratio $s_r$ | $s = t$ (the query), or $s$ lies in a cell that the sub-sampling conv summarises |
# | PEG | $\lvert h_s - h_t \rvert \le 1$ and $\lvert w_s - w_t \rvert \le 1$ |
# | pre-norm block | $I \vee R^{\text{attn}}$ (the residual adds the identity) |
#
# Details: LSA zero-pads the map on the right and bottom to a multiple of $k$ before
# cutting windows; the padded tokens are constants (not inputs), so they belong to no field.
# GSA's conv (kernel = stride = $s_r$) makes $\lfloor H/s_r \rfloor \lfloor W/s_r \rfloor$
# keys. The PEG is a zero-padded $3 \times 3$ depthwise conv plus the identity. In a block,
# $x + \text{MLP}(\text{LN}(x))$ adds nothing to the field of $x + \text{Attn}(\text{LN}(x))$.
#
# Rows and columns that the GSA conv floors away still reach the output *as queries* (the
# token $t$ itself), but never as keys, so another token cannot see them through GSA.


# %%
def token_coords(H, W):
    """Row and column of every token, each (H*W,), row-major."""
    return np.divmod(np.arange(H * W), W)


def lsa_reach(H, W, ws):
    """(N, N) bool: same ws x ws window (windows tile the right/bottom zero-padded map)."""
    r, c = token_coords(H, W)
    windows_per_row = -(-W // ws)  # ceil: the padded map has ceil(W / ws) windows per row
    win = (r // ws) * windows_per_row + c // ws
    return win[:, None] == win[None, :]


def gsa_reach(H, W, sr):
    """(N, N) bool: the query token itself, or any token inside a cell the sr conv summarises."""
    r, c = token_coords(H, W)
    covered = (r < (H // sr) * sr) & (c < (W // sr) * sr)  # the conv floors: trailing rows/cols feed no key
    return np.eye(H * W, dtype=bool) | covered[None, :]


def peg_reach(H, W):
    """(N, N) bool: the 3x3 neighbourhood (clipped at the zero-padded border)."""
    r, c = token_coords(H, W)
    return (np.abs(r[:, None] - r[None, :]) <= 1) & (np.abs(c[:, None] - c[None, :]) <= 1)


def patch_reach(H, W, p):
    """(H//p * W//p, H*W) bool: a patch-embedding conv (kernel = stride = p, floors)."""
    r, c = token_coords(H, W)
    Ho, Wo = H // p, W // p
    ro, co = token_coords(Ho, Wo)
    return (r[None, :] // p == ro[:, None]) & (c[None, :] // p == co[:, None]) & (r[None, :] < Ho * p) & (c[None, :] < Wo * p)


def block_reach(attn):
    """A pre-norm block: the residual adds the identity; LN and the MLP are per token."""
    return attn | np.eye(attn.shape[0], dtype=bool)


def compose(*layers):
    """Reachability of layers applied in the given order (first layer first)."""
    R = layers[0]
    for L in layers[1:]:
        R = (L.astype(np.float32) @ R.astype(np.float32)) > 0  # boolean product via a path count (exact in float32)
    return R


# %% [markdown]
# A few sanity checks of these maps on a $14 \times 14$ grid with $k = 4$: the windows along
# the bottom and right edge hold only $2$ real tokens per side (the other two are padding),
# an interior PEG output sees 9 tokens, and a GSA with $s_r = 4$ summarises only the top-left
# $12 \times 12$ tokens.

# %%
R = lsa_reach(14, 14, 4)
assert R.sum(1).reshape(14, 14)[0, 0] == 16 and R.sum(1).reshape(14, 14)[13, 13] == 4
assert R.sum(1).reshape(14, 14)[0, 13] == 8  # a 4 x 2 window on the right edge
assert np.array_equal(R, R.T)  # "same window" is symmetric
assert peg_reach(14, 14).sum(1).reshape(14, 14)[5, 5] == 9 and peg_reach(14, 14).sum(1)[0] == 4
G = gsa_reach(14, 14, 4)
assert G.sum(1).reshape(14, 14)[5, 5] == 144 and G.sum(1).reshape(14, 14)[13, 13] == 145
assert gsa_reach(14, 14, 1).all()  # sr = 1: full global attention
print("tokens each output sees after LSA (k = 4) on 14 x 14:\n", R.sum(1).reshape(14, 14)[::4, ::4])

# %% [markdown]
# ## 2. The effective receptive field, with twins-np's backward
#
# For an output token $t$ and a random upstream vector $g \in \mathbb{R}^C$ placed at $t$
# only (zeros everywhere else), one backward pass returns the vector-Jacobian product
#
# $$\frac{\partial\, (g^\top y_t)}{\partial x_{s,c}} = \sum_{c'} g_{c'}\,
#   \frac{\partial y_{t,c'}}{\partial x_{s,c}} .$$
#
# The effective receptive field is its magnitude, summed over channels and averaged over
# random inputs $x$, weights $\theta$ and upstream vectors $g$:
#
# $$\text{ERF}_t(s) = \mathbb{E}_{x, \theta, g} \sum_c \left| \frac{\partial\, (g^\top y_t)}{\partial x_{s,c}} \right| .$$
#
# Where the theoretical map says $R_{ts} = 0$ no path exists, so the backward multiplies
# only exact zeros and $\text{ERF}_t(s) = 0$ *exactly* (no rounding). Where $R_{ts} = 1$
# a random draw almost surely gives a non-zero value. So we expect
# $\operatorname{supp} \text{ERF}_t = R_{t,:}$ exactly, and we assert it.
#
# The stacks are built from twins-np's own modules (`nn.Block`, `nn.PosConv`) in float64
# (so no tiny gradient can underflow), with random LayerNorm gains and biases (not the
# $1$ / $0$ init), averaged over 4 weight draws times 4 inputs each, on a $16 \times 16$
# map with $C = 32$, windows $k = 4$ and GSA ratio $s_r = 4$ (one key per window, as the
# paper suggests).

# %%
C, HEADS, WS, SR = 32, 2, 4, 4


def build_stack(kinds, seed, ws=WS, sr=SR):
    """An nn.Sequential of 'LSA' / 'GSA' blocks and 'PEG's with random norms and biases."""
    rng = np.random.default_rng(seed)
    mods = []
    for kind in kinds:
        if kind == "LSA":
            mods.append(nn.Block(C, HEADS, mlp_ratio=2.0, ws=ws, rng=rng, dtype=np.float64))
        elif kind == "GSA":
            mods.append(nn.Block(C, HEADS, mlp_ratio=2.0, ws=1, sr_ratio=sr, rng=rng, dtype=np.float64))
        elif kind == "PEG":
            mods.append(nn.PosConv(C, C, rng=rng, dtype=np.float64))
        else:
            raise ValueError(kind)
    stack = nn.Sequential(mods)
    for name, p in stack.named_parameters():
        if name.endswith("bias"):
            p.data = 0.1 * rng.standard_normal(p.shape)
        elif "norm" in name.split(".")[-2]:  # LayerNorm gains: random around 1
            p.data = 1.0 + 0.1 * rng.standard_normal(p.shape)
    return stack


def effective_rf(kinds, target, H=16, W=16, seeds=4, batch=4, ws=WS, sr=SR, device=DEVICE):
    """Mean over seeds and batch of sum_c |d(g . y_t) / dx|, as an (H, W) map (on the host).

    The stacks run on `device` (TWINS_NP_DEVICE); the random inputs are drawn on the host, so
    the map is the same on either device up to float64 rounding, and its exact zeros stay zero.
    """
    t = target[0] * W + target[1]
    erf = np.zeros((H, W))
    for seed in range(seeds):
        stack = build_stack(kinds, seed, ws, sr).to_device(device)
        rng = np.random.default_rng(1000 + seed)
        y = stack(twins_np.to_device(rng.standard_normal((batch, H * W, C)), device), (H, W))
        dy = np.zeros(y.shape)
        dy[:, t] = rng.standard_normal((batch, C))  # upstream gradient only at the target token
        dx = stack.backward(twins_np.to_device(dy, device))
        erf += twins_np.asnumpy(abs(dx).sum(-1).sum(0)).reshape(H, W)
    return erf / (seeds * batch)


def theory_rf(kinds, target, H=16, W=16, ws=WS, sr=SR):
    """The target's row of the composed reachability map, as an (H, W) bool map."""
    layer = {"LSA": lambda: block_reach(lsa_reach(H, W, ws)), "GSA": lambda: block_reach(gsa_reach(H, W, sr)),
             "PEG": lambda: peg_reach(H, W)}  # fmt: skip
    R = compose(*[layer[k]() for k in kinds])
    return R[target[0] * W + target[1]].reshape(H, W)


# %% [markdown]
# A plotting helper: $\log_{10}$ of the ERF, with exact zeros in grey, the target token
# marked with a red cross and the LSA window borders drawn as white lines. The panels of one
# figure share one colour scale (`log_range`), so that their colours compare.

# %%
CMAP = plt.get_cmap("viridis").with_extremes(bad="0.82")


def log_range(erfs):
    """(vmin, vmax) of log10 over the non-zero values of several ERF maps: one colour scale for a figure."""
    logs = np.concatenate([np.log10(e[e > 0]) for e in erfs])
    return float(logs.min()), float(logs.max())


def show_rf(ax, erf, title, target, ws=WS, cell=1, lims=None):
    """Heatmap of log10(ERF) (grey = exactly 0); target in token units, ws*cell = window in pixels (ws=None: no lines).

    lims: (vmin, vmax) shared by the figure's panels; None gives the panel its own colour bar.
    """
    vmin, vmax = lims if lims is not None else (None, None)
    im = ax.imshow(np.ma.log10(np.ma.masked_equal(erf, 0.0)), cmap=CMAP, vmin=vmin, vmax=vmax)
    for b in np.arange(ws * cell, erf.shape[0], ws * cell) - 0.5 if ws else []:
        ax.axhline(b, color="w", lw=0.8)
        ax.axvline(b, color="w", lw=0.8)
    r, c = target
    ax.add_patch(plt.Rectangle((c * cell - 0.5, r * cell - 0.5), cell, cell, fill=False, ec="red", lw=1.5))
    ax.plot(c * cell + (cell - 1) / 2, r * cell + (cell - 1) / 2, "rx", ms=6)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("column", fontsize=8)
    ax.set_ylabel("row", fontsize=8)
    ax.tick_params(labelsize=7)
    if lims is None:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=r"$\log_{10}$ ERF")
    return im


def colorbar_in(ax, im, label):
    """The figure's one colour bar, drawn in a spare panel `ax`."""
    ax.axis("off")
    ax.figure.colorbar(im, cax=ax.inset_axes([0.1, 0.05, 0.07, 0.85]), label=label)


# %% [markdown]
# ## 3. LSA, the PEG and GSA on a $16 \times 16$ map
#
# Eight stacks, all with the same output token $t = (6, 5)$, which lies in the window of
# rows 4–7 and columns 4–7:
#
# - LSA ×1, ×2, ×4: a stack of locally-grouped blocks only;
# - PEG → LSA and LSA → PEG → LSA (as in an SVT stage, where the PEG follows block 0);
# - GSA alone, LSA → GSA (one SVT pair), GSA → PEG → GSA (a PCPVT stage).

# %%
TARGET = (6, 5)
STACKS = {
    "LSA x1": ["LSA"],
    "LSA x2 (LSA -> LSA)": ["LSA", "LSA"],
    "LSA x4": ["LSA"] * 4,
    "PEG -> LSA": ["PEG", "LSA"],
    "LSA -> PEG -> LSA": ["LSA", "PEG", "LSA"],
    "GSA (sr 4)": ["GSA"],
    "LSA -> GSA (SVT pair)": ["LSA", "GSA"],
    "GSA -> PEG -> GSA (PCPVT)": ["GSA", "PEG", "GSA"],
}
t0 = time.perf_counter()
ERF = {name: effective_rf(kinds, TARGET) for name, kinds in STACKS.items()}
THEORY = {name: theory_rf(kinds, TARGET) for name, kinds in STACKS.items()}
print(f"{len(STACKS)} effective receptive fields in {time.perf_counter() - t0:.1f} s")
for name in STACKS:
    print(f"{name:28s} reachable tokens: theory {THEORY[name].sum():3d}, ERF support {(ERF[name] > 0).sum():3d}")

# %%
fig, axes = plt.subplots(2, 4, figsize=(12, 6.6), layout="constrained")
lims = log_range(ERF.values())
for ax, name in zip(axes.flat, STACKS):
    im = show_rf(ax, ERF[name], f"{name}\n{(ERF[name] > 0).sum()} of 256 tokens reach t", TARGET, lims=lims)
fig.colorbar(im, ax=axes, shrink=0.8, label=r"$\log_{10}$ ERF (one scale for all panels)")
fig.suptitle("Effective receptive field of token t = (6, 5) on a 16x16 map\n(k = 4, sr = 4; grey = exactly zero gradient)")
plt.show()

# %% [markdown]
# What the figure shows, asserted:
#
# 1. **The effective support equals the theoretical map** for every stack: no gradient
#    leaks where no path exists, and every reachable token gets a non-zero gradient.
# 2. **LSA alone stays in the window.** However many LSA blocks are stacked, the gradient
#    outside $t$'s window is exactly $0$: a window's output is a function of that window's
#    input only, and composing such functions never mixes windows.
# 3. **The PEG crosses the border by one token.** In PEG → LSA, $t$'s window collects the
#    PEG outputs of its own $16$ tokens, and each of those reads its $3 \times 3$
#    neighbourhood: the field is the window plus the one-token band around it
#    ($6 \times 6 = 36$ tokens). Put an LSA *before* the PEG too (LSA → PEG → LSA, as in
#    an SVT stage) and each band token brings its whole window along: the field becomes the
#    $3 \times 3$ block of windows around $t$'s window.
# 4. **One GSA is global.** Every one of the $256$ input tokens has a non-zero gradient
#    after a single GSA, because every token is inside one of the $4 \times 4$ summarised
#    cells (16 keys).
# 5. The ERF is sharply peaked at the target itself (the residual path): the largest value
#    is at $t$ in every stack.

# %%
H = W = 16
r, c = token_coords(H, W)
same_window = ((r // WS == TARGET[0] // WS) & (c // WS == TARGET[1] // WS)).reshape(H, W)
outside_window = ~same_window

for name in STACKS:  # 1. effective support == theoretical receptive field, exactly
    assert np.array_equal(ERF[name] > 0, THEORY[name]), name
    assert np.unravel_index(np.argmax(ERF[name]), ERF[name].shape) == TARGET, name  # 5.

for name in ("LSA x1", "LSA x2 (LSA -> LSA)", "LSA x4"):  # 2. LSA stays inside the window
    erf = ERF[name]
    assert np.all(erf[outside_window] == 0), name
    assert np.all(erf[same_window] > 0), name

# 3. the PEG: window + one-token band (PEG -> LSA); whole neighbouring windows (LSA -> PEG -> LSA)
band = np.zeros((H, W), dtype=bool)
band[3:9, 3:9] = True  # rows/cols 4..7 widened by one token on each side
assert np.array_equal(ERF["PEG -> LSA"] > 0, band)
assert np.all(ERF["PEG -> LSA"][band & outside_window] > 0)  # the neighbours' border tokens
assert (band & outside_window).sum() == 20
nine_windows = np.zeros((H, W), dtype=bool)
nine_windows[0:12, 0:12] = True  # window rows/cols 0..2 around window (1, 1)
assert np.array_equal(ERF["LSA -> PEG -> LSA"] > 0, nine_windows)
assert np.all(ERF["LSA x2 (LSA -> LSA)"][outside_window] == 0)  # without the PEG: still one window

for name in ("GSA (sr 4)", "LSA -> GSA (SVT pair)", "GSA -> PEG -> GSA (PCPVT)"):  # 4. one GSA is global
    assert np.all(ERF[name] > 0), name
print("LSA stays in its window; the PEG crosses by one token; one GSA reaches all 256 tokens")

# %% [markdown]
# ## 4. Across depth: how fast the field grows
#
# The same question as a curve: the fraction of the map in the theoretical receptive field
# of $t$ after $d$ blocks, for four stage designs (the PEG is not counted as a block):
#
# - LSA only;
# - LSA with a PEG after *every* block (a hypothetical design: each PEG adds a ring of
#   windows, like a convolution with a window-sized stride);
# - an SVT stage: LSA, PEG, GSA, LSA, GSA, … (the PEG after block 0, as in Twins);
# - a PCPVT stage: GSA, PEG, GSA, GSA, ….
#
# The markers are the supports of effective receptive fields (2 random draws each), checked
# against the lines.


# %%
def stage_kinds(design, depth):
    """The layer list of the first `depth` blocks of a stage design."""
    kinds = []
    for i in range(depth):
        if design == "LSA only":
            kinds.append("LSA")
        elif design == "LSA + PEG after every block":
            kinds += ["LSA", "PEG"] if i < depth - 1 else ["LSA"]
        elif design == "SVT stage":
            kinds.append("LSA" if i % 2 == 0 else "GSA")
        elif design == "PCPVT stage":
            kinds.append("GSA")
        if i == 0 and design in ("SVT stage", "PCPVT stage") and depth > 1:
            kinds.append("PEG")  # the PEG follows block 0 (it is applied before block 1)
    return kinds


DESIGNS = ["LSA only", "LSA + PEG after every block", "SVT stage", "PCPVT stage"]
DEPTHS = np.arange(1, 7)
fig, ax = plt.subplots(figsize=(7, 4))
for design, marker in zip(DESIGNS, "osD^"):
    frac = [theory_rf(stage_kinds(design, d), TARGET).mean() for d in DEPTHS]
    line = ax.plot(DEPTHS, frac, "-", label=design)[0]
    for d in DEPTHS[:4]:
        kinds = stage_kinds(design, d)
        support = effective_rf(kinds, TARGET, seeds=2, batch=1) > 0
        assert np.array_equal(support, theory_rf(kinds, TARGET)), (design, d)
        ax.plot(d, support.mean(), marker, color=line.get_color(), ms=6, mfc="none")
ax.set_xlabel("depth d (blocks)")
ax.set_ylabel("fraction of the 16x16 map in the receptive field")
ax.set_title("Theoretical receptive field of t = (6, 5) vs depth (markers: ERF support)")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
plt.show()

assert all(theory_rf(stage_kinds("LSA only", d), TARGET).sum() == 16 for d in DEPTHS)
assert theory_rf(stage_kinds("SVT stage", 2), TARGET).all() and theory_rf(stage_kinds("PCPVT stage", 1), TARGET).all()
peg_every = [theory_rf(stage_kinds("LSA + PEG after every block", d), TARGET).sum() for d in DEPTHS]
assert peg_every[:3] == [16, 144, 256]  # one window, then 3x3 windows, then the whole 4x4 grid
print("reachable tokens with a PEG after every LSA block:", [int(n) for n in peg_every])

# %% [markdown]
# ## 5. Edge cases: padding and flooring on a $14 \times 14$ map
#
# At $14 \times 14$ neither $k = 4$ nor $s_r = 4$ divides the map:
#
# - LSA pads the map to $16 \times 16$ on the right and bottom, so the last window row and
#   column hold $2 \times 4$, $4 \times 2$ or $2 \times 2$ real tokens. The padded tokens
#   are constants (their key/value is the qkv bias), so they are not part of any field.
# - GSA's conv floors to $\lfloor 14/4 \rfloor = 3$ cells per side: rows and columns 12–13
#   feed **no key**. A GSA output therefore sees the top-left $12 \times 12$ tokens plus
#   itself, and **LSA → GSA is not global** here: the tokens in rows/columns 12–13 sit in
#   windows that no key summarises.
# - The PEG closes that gap: in LSA → PEG → GSA (the real order of an SVT stage), the PEG
#   outputs in row 11 read row 12, whose LSA window contains row 13. This is what happens
#   in Twins-SVT at a $230 \times 230$ input, where stage 1 is $57 \times 57$ with
#   $k = 7$ and $s_r = 8$.

# %%
H14 = 14
EDGE = {
    "LSA, t = (13, 13)": (["LSA"], (13, 13)),
    "GSA, t = (6, 5)": (["GSA"], (6, 5)),
    "GSA, t = (13, 2)": (["GSA"], (13, 2)),
    "LSA -> GSA, t = (6, 5)": (["LSA", "GSA"], (6, 5)),
    "LSA -> PEG -> GSA, t = (6, 5)": (["LSA", "PEG", "GSA"], (6, 5)),
}
EDGE_ERF = {name: effective_rf(kinds, tgt, H=H14, W=H14, seeds=4) for name, (kinds, tgt) in EDGE.items()}
fig, axes = plt.subplots(2, 3, figsize=(12, 8), layout="constrained")
lims = log_range(EDGE_ERF.values())
for ax, (name, (kinds, tgt)) in zip(axes.flat, EDGE.items()):
    erf = EDGE_ERF[name]
    assert np.array_equal(erf > 0, theory_rf(kinds, tgt, H=H14, W=H14)), name
    im = show_rf(ax, erf, f"{name}\n{(erf > 0).sum()} of 196 tokens reach t", tgt, lims=lims)
colorbar_in(axes.flat[-1], im, r"$\log_{10}$ ERF (one scale for all panels)")
fig.suptitle("14x14 map, k = 4 (padded to 16), sr = 4 (floors to 12): grey = exactly zero")
plt.show()

assert (EDGE_ERF["LSA, t = (13, 13)"] > 0).sum() == 4  # a 2x2 corner window: the padding is not an input
covered = np.zeros((H14, H14), dtype=bool)
covered[:12, :12] = True
assert np.array_equal(EDGE_ERF["GSA, t = (6, 5)"] > 0, covered)
reach = covered.copy()
reach[13, 2] = True  # a floored-away token still reaches its own output, as a query
assert np.array_equal(EDGE_ERF["GSA, t = (13, 2)"] > 0, reach)
assert not np.all(EDGE_ERF["LSA -> GSA, t = (6, 5)"] > 0)
assert np.all(EDGE_ERF["LSA -> GSA, t = (6, 5)"][12:, 12:] == 0)
assert np.all(EDGE_ERF["LSA -> PEG -> GSA, t = (6, 5)"] > 0)  # the PEG makes it global again
print("padding tokens are not inputs; floored rows reach only as queries; the PEG closes the gap")

# %% [markdown]
# ## 6. Receptive fields in pixels, across the stages of a real Twins
#
# Now the whole model: `twins_svt_teach32` and `twins_pcpvt_teach32` (32×32 images,
# patch 2, three stages on 16×16 / 8×8 / 4×4 token maps, $k = 4$, $s_r = 4, 2, 1$). We take
# the gradient of **one output token of an intermediate layer with respect to the image
# pixels**. To stop after any layer we walk the model's modules in the order
# `Twins.forward_features` uses them (patch embed, block 0, the PEG, the other blocks,
# then the next stage) and run their backward in reverse; the `pos_drops` are dropout with
# $p = 0$, i.e. identities, and are skipped. A check below confirms that the walk
# reproduces `forward_features` exactly.
#
# In pixels, the theoretical map gains one more factor per stage: the patch embedding
# (kernel = stride = $p$), whose reachability is "the pixel lies in the token's patch".
#
# The target is the token whose patch contains the pixel $(15, 10)$: stage-1 token
# $(7, 5)$, which sits on the bottom row of its window, stage-2 token $(3, 2)$ and stage-3
# token $(1, 1)$.

# %%
PIXEL = (15, 10)


def model_steps(model):
    """The forward of Twins.forward_features as a flat list of (label, kind, stage, module)."""
    steps = []
    for s, (embed, stage, peg) in enumerate(zip(model.patch_embeds, model.blocks, model.pos_block)):
        steps.append((f"stage {s + 1} patch embed", "embed", s, embed))
        for i, blk in enumerate(stage):
            kind = "LSA" if isinstance(blk.attn, nn.LocallyGroupedAttn) else "GSA"
            steps.append((f"stage {s + 1} block {i} ({kind})", kind, s, blk))
            if i == 0:
                steps.append((f"stage {s + 1} PEG", "PEG", s, peg))
    return steps


def run_prefix(model, x, n_steps):
    """Run the first n_steps of model_steps on images x; returns tokens (B, N, C), size, steps run."""
    tokens, size = None, None
    steps = model_steps(model)[:n_steps]
    for _, kind, _, mod in steps:
        if kind == "embed":
            if tokens is not None:  # tokens -> NCHW between stages, as Twins does
                x = tokens.reshape(tokens.shape[0], size[0], size[1], -1).transpose(0, 3, 1, 2)
            tokens, size = mod(x)
        else:
            tokens = mod(tokens, size)
    return tokens, size, steps


def backward_prefix(dtokens, steps):
    """The backward of run_prefix: token gradient -> image gradient (B, C_in, H, W)."""
    d = dtokens
    for k in reversed(range(len(steps))):
        kind, mod = steps[k][1], steps[k][3]
        d = mod.backward(d)
        if kind == "embed" and k > 0:  # NCHW gradient -> token gradient of the previous stage
            d = d.transpose(0, 2, 3, 1).reshape(d.shape[0], -1, d.shape[1])
    return d


def randomise(model, rng):
    """Random biases and LayerNorm gains (the init has them at 0 and 1)."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data = 0.1 * rng.standard_normal(p.shape)
        elif "norm" in name.split(".")[-2]:
            p.data = 1.0 + 0.1 * rng.standard_normal(p.shape)


def pixel_erfs(name, step_counts, seeds=4, batch=2, img=32):
    """ERF in pixels of the token covering PIXEL after each of `step_counts` steps.

    For every seed one model is built (random weights, norms and biases) and each checkpoint
    gets its own forward/backward; returns {n_steps: (img, img) mean of sum_c |d(g . y_t)/dx|}.
    """
    erfs = {n: np.zeros((img, img)) for n in step_counts}
    for seed in range(seeds):
        model = twins_np.create_model(name, seed=seed, dtype=np.float64)
        rng = np.random.default_rng(2000 + seed)
        randomise(model, rng)
        model.to_device(DEVICE)  # drawn on the host, run on TWINS_NP_DEVICE's device
        x = twins_np.to_device(rng.standard_normal((batch, 3, img, img)), DEVICE)
        for n in step_counts:
            tokens, size, steps = run_prefix(model, x, n)
            stride = img // size[0]  # pixels per token side at this stage
            t = (PIXEL[0] // stride) * size[1] + PIXEL[1] // stride
            d = np.zeros(tokens.shape)
            d[:, t] = rng.standard_normal((batch, tokens.shape[-1]))
            dx = backward_prefix(twins_np.to_device(d, DEVICE), steps)
            erfs[n] += twins_np.asnumpy(abs(dx).sum(1).sum(0))
    return {n: e / (seeds * batch) for n, e in erfs.items()}


def pixel_theory(name, n_steps, img=32):
    """The theoretical pixel receptive field of the token covering PIXEL after n_steps."""
    model = twins_np.create_model(name, seed=0)
    H = W = img
    layers = []
    for _, kind, _, mod in model_steps(model)[:n_steps]:
        if kind == "embed":
            layers.append(patch_reach(H, W, mod.patch_size))
            H, W = H // mod.patch_size, W // mod.patch_size
        elif kind == "LSA":
            layers.append(block_reach(lsa_reach(H, W, mod.attn.ws)))
        elif kind == "GSA":
            layers.append(block_reach(gsa_reach(H, W, mod.attn.sr_ratio)))
        else:
            layers.append(peg_reach(H, W))
    stride = img // H
    t = (PIXEL[0] // stride) * W + PIXEL[1] // stride
    return compose(*layers)[t].reshape(img, img), stride


# the walk reproduces the model's own forward_features
m = twins_np.create_model("twins_svt_teach32", seed=0, dtype=np.float64)
x_check = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
tok, _, steps = run_prefix(m, x_check, len(model_steps(m)))
assert np.array_equal(m.norm(tok), m.forward_features(x_check))
print([label for label, *_ in model_steps(m)])

# %%
CHECKPOINTS = {  # (label, number of steps): a few layers of stage 1, then each stage's output
    "twins_svt_teach32": [("s1 block 0 (LSA)", 2), ("s1 PEG", 3), ("s1 block 1 (GSA) = stage 1", 4),
                          ("s2 block 0 (LSA)", 6), ("stage 3 output", 12)],
    "twins_pcpvt_teach32": [("s1 block 0 (GSA)", 2), ("s1 PEG", 3), ("stage 1 output", 4),
                            ("stage 2 output", 8), ("stage 3 output", 12)],
}  # fmt: skip
t0 = time.perf_counter()
PIX = {}
for name, checkpoints in CHECKPOINTS.items():
    erfs = pixel_erfs(name, [n for _, n in checkpoints])
    for label, n in checkpoints:
        theory, _ = pixel_theory(name, n)
        assert np.array_equal(erfs[n] > 0, theory), (name, label)  # effective support == theory, in pixels
        PIX[name, label] = erfs[n]
print(f"pixel ERFs in {time.perf_counter() - t0:.1f} s")

lims = log_range(PIX.values())  # one colour scale for both models' figures
for name, checkpoints in CHECKPOINTS.items():
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), layout="constrained")
    for ax, (label, n) in zip(axes.flat, checkpoints):
        erf = PIX[name, label]
        stride = pixel_theory(name, n)[1]
        target = (PIXEL[0] // stride, PIXEL[1] // stride)
        im = show_rf(ax, erf, f"{label}\n{(erf > 0).sum()} of 1024 pixels", target,
                     ws=4 if "svt" in name else None, cell=stride, lims=lims)  # fmt: skip
    colorbar_in(axes.flat[-1], im, r"$\log_{10}$ ERF (one scale for both models)")
    fig.suptitle(f"{name}: pixel receptive field of one token\n(red square: its patch; white lines: its stage's LSA windows)")
    plt.show()

# %% [markdown]
# In pixels, the same story:
#
# - after the first SVT block (LSA) the token sees exactly its $8 \times 8$-pixel window
#   ($4 \times 4$ tokens of $2 \times 2$ pixels);
# - the PEG adds the window below, because the target token is on the bottom row of its
#   window and its $3 \times 3$ neighbourhood reaches into the next window, whose LSA
#   output carries that whole window;
# - block 1 (GSA, $s_r = 4$) makes the field cover the whole image — and every later layer
#   of either model, being downstream of a global layer, stays global;
# - PCPVT is global from its very first block.
#
# The *effective* field is far from uniform, though: it is brightest on the target's own
# patch and the few tokens around it that the residual path and the PEGs reach, while
# attention at initialisation spreads its weight thinly over many keys. Below, the mean ERF
# on the target's patch is more than five times the mean on the far corner of the image
# (pixels 24–31 × 24–31) at every checkpoint, even at the stage-3 output where the patch is
# $8 \times 8$ pixels.
#
# The dark band along the bottom and right edges of the stage-3 output (pixel rows and columns
# 30–31) is not padding or GSA flooring: 32 pixels divide into every stage's windows and
# sub-sampling cells. It is where the target's convolutional paths end. Without attention, a
# stage-3 token (pixels 8–15) reaches pixels 0–23 through its stage's PEG, 0–27 through stage 2's
# and 0–29 through stage 1's (patch embeddings, PEGs and the residual path, the MLP being
# per token); pixels 30–31 reach it only through attention, which at initialisation spreads its
# weight thinly, so their ERF is over ten times smaller. The top and left edges have no band
# because the target sits near them.

# %%
svt = "twins_svt_teach32"
lsa_only = PIX[svt, "s1 block 0 (LSA)"] > 0
assert lsa_only.sum() == 64 and lsa_only[8:16, 8:16].all()  # the 8x8-pixel window of token (7, 5)
assert (PIX[svt, "s1 PEG"] > 0).sum() == 128 and (PIX[svt, "s1 PEG"] > 0)[8:24, 8:16].all()  # + the window below
for (name, label), erf in PIX.items():
    if "GSA" in label or "output" in label:
        assert np.all(erf > 0), (name, label)  # global: every pixel has a non-zero gradient
for (name, label), erf in PIX.items():
    theory, stride = pixel_theory(name, dict(CHECKPOINTS[name])[label])
    r0, c0 = (PIXEL[0] // stride) * stride, (PIXEL[1] // stride) * stride
    patch_mean = erf[r0 : r0 + stride, c0 : c0 + stride].mean()
    assert patch_mean > 5 * erf[24:, 24:].mean(), (name, label)
for name in CHECKPOINTS:  # the band: pixels 30-31 (attention only) against pixels 0-29 (also convolutions)
    erf = PIX[name, "stage 3 output"]
    assert erf[30:, :].mean() < 0.1 * erf[:30, :30].mean() and erf[:, 30:].mean() < 0.1 * erf[:30, :30].mean(), name
print("SVT: window -> two windows -> global; PCPVT: global from block 0")

# %%
print(f"notebook ran in {time.perf_counter() - T_START:.1f} s")

# %% [markdown]
# ## Summary
#
# - The receptive field of a stack is a boolean product of per-layer reachability maps; the
#   effective receptive field computed with twins-np's backward has **exactly** that support
#   (zeros where no path exists, non-zeros elsewhere), for every stack we tried.
# - LSA alone never leaves its window, at any depth. The PEG is the only local layer of
#   Twins that crosses a window border (by one token), and one GSA makes the field global —
#   which is why Twins-SVT alternates LSA with GSA and places a PEG after the first block.
# - Padding tokens are never part of a field; rows and columns floored away by the GSA
#   conv reach other tokens only through other layers (such as the PEG).
#
# ## Exercises
#
# 1. Replace the target by a token on a window corner, e.g. $t = (7, 7)$. Predict the
#    field of PEG → LSA and of LSA → PEG (no second LSA) before you compute them.
# 2. Stack the SVT stage with $k = 4$, $s_r = 8$ on the $16 \times 16$ map. How many keys
#    does GSA have now, and is the field still global after LSA → GSA?
# 3. Change `effective_rf` to average the *signed* gradient instead of its magnitude. Why is
#    the result much smaller, and why is the magnitude the right quantity for a receptive
#    field?
# 4. With LSA windows $k$ and a PEG after every block, how many blocks does it take for a
#    token to see the whole $H \times W$ map? Check your formula with `theory_rf`.
# 5. In `twins_svt_teach32`, after which layer does the *effective* field become roughly
#    uniform over the image? Measure the fraction of ERF mass inside the target's window
#    after each step of `model_steps`.
