# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 08 · Building Twins: from blocks to the paper's six models
#
# Notebooks 02–07 built the pieces: LayerNorm, the MLP, attention, LSA, GSA, the PEG and the
# patch embedding. A Twins model is nothing more than those pieces in a fixed order
# (Chu et al. 2021, section 3 and Fig. 1–2; timm's `timm/models/twins.py`):
#
# ```text
# for each stage s:
#     tokens, (H, W) = PatchEmbed_s(image or previous map)    # conv k = s = 4, then 2; LN
#     tokens = Block_s0(tokens)                               # LSA (SVT) or GSA (PCPVT)
#     tokens = PEG_s(tokens)                                  # 3x3 depthwise conv + residual
#     tokens = Block_s1(tokens), Block_s2(tokens), ...        # SVT alternates LSA, GSA
#     map = tokens as (B, C, H, W)                            # the next stage's "image"
# logits = Linear(mean over tokens(LayerNorm(tokens)))
# ```
#
# **Learning goals**
#
# - Build one stage and then a whole Twins by hand from `twins_np.nn` modules, load the
#   weights of `create_model`'s model into it, and check that the forward *and* the backward
#   give the same numbers, bit for bit.
# - See why the order matters: the PEG runs after the first block of each stage; moving it
#   changes the output although every weight has the same name and shape.
# - Compute the parameter counts and FLOPs of the paper's six models from their configs
#   alone, and reproduce Table 1/2 of the paper (and the official README) to the printed
#   digit.
# - See where the multiply-adds go in each model.
# - Check the whole model against timm's Twins (when PyTorch is installed) and round-trip a
#   checkpoint through a file.

# %%
# %load_ext autoreload
# %autoreload 2

# %%
import math
import os
import pathlib
import tempfile
import time
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np

import twins_np
from twins_np import analysis, io, nn
from twins_np.gradcheck import TOLERANCES
from twins_np.models import MODEL_CONFIGS, create_model, list_models

# the device of the device-aware cells: TWINS_NP_DEVICE=gpu runs them on CuPy (a CUDA GPU); default the CPU
DEVICE = os.environ.get("TWINS_NP_DEVICE", "cpu")
assert DEVICE == "cpu" or (DEVICE == "gpu" and twins_np.cupy_available()), f"TWINS_NP_DEVICE={DEVICE!r}: no CUDA GPU here"

T_START = time.perf_counter()
F64 = np.float64
print("twins-np", twins_np.__version__, "| GPU available:", twins_np.cupy_available())
print("models:", ", ".join(list_models()))


def rel_err(a, b):
    """max|a - b| / max|b|: the error measured against the reference's own scale."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-300))


# %% [markdown]
# ## 1. One stage by hand
#
# We use the teaching configuration `twins_svt_teach32`: 32×32 images, three stages of
# 32, 64 and 128 channels on 16×16, 8×8 and 4×4 token grids, two blocks per stage, LSA
# windows of 4×4 tokens and GSA sub-sampling ratios 4, 2, 1.

# %%
CFG = MODEL_CONFIGS["twins_svt_teach32"]
for key in ("img_size", "patch_size", "embed_dims", "num_heads", "mlp_ratios", "depths", "sr_ratios", "wss", "num_classes"):
    print(f"{key:12s} {CFG[key]}")

# %% [markdown]
# The first stage, module by module. `Block(..., ws=4)` builds a block with LSA;
# `Block(..., ws=1)` one with GSA (that is timm's switch: `ws = 1` means "no windows").
# Each module runs its forward on the tokens and the token grid size `(H, W)`.

# %%
rng = np.random.default_rng(0)
C0, heads0, r0, sr0, ws0 = CFG["embed_dims"][0], CFG["num_heads"][0], CFG["mlp_ratios"][0], CFG["sr_ratios"][0], CFG["wss"][0]
embed0 = nn.PatchEmbed(CFG["img_size"], CFG["patch_size"], 3, C0, rng=rng, dtype=F64)
lsa0 = nn.Block(C0, heads0, r0, sr_ratio=sr0, ws=ws0, rng=rng, dtype=F64)  # block 0: LSA
peg0 = nn.PosConv(C0, C0, rng=rng, dtype=F64)  # the PEG, after block 0
gsa0 = nn.Block(C0, heads0, r0, sr_ratio=sr0, ws=1, rng=rng, dtype=F64)  # block 1: GSA

x = rng.standard_normal((2, 3, 32, 32))
tokens, size = embed0(x)
print(f"image {x.shape} -> PatchEmbed -> tokens {tokens.shape}, grid {size}")
t = lsa0(tokens, size)
print(f"  -> Block 0 ({type(lsa0.attn).__name__}) {t.shape}")
t = peg0(t, size)
print(f"  -> PosConv (PEG) {t.shape}")
t = gsa0(t, size)
print(f"  -> Block 1 ({type(gsa0.attn).__name__}) {t.shape}")
fmap = t.reshape(2, *size, C0).transpose(0, 3, 1, 2)
print(f"  -> as a feature map {fmap.shape}: the 'image' of stage 2's PatchEmbed (in_chans = {C0})")

assert tokens.shape == (2, 16 * 16, C0) and size == (16, 16)
assert isinstance(lsa0.attn, nn.LocallyGroupedAttn) and isinstance(gsa0.attn, nn.GlobalSubSampleAttn)
assert fmap.shape == (2, C0, 16, 16)

# %% [markdown]
# The parameter count of each module follows the closed form of the model's structure
# (C channels, MLP ratio r, patch p, sub-sampling ratio s):
#
# | module | parameters |
# |---|---|
# | PatchEmbed | $p^2 C_\text{in} C + C$ (conv) $+ 2C$ (LayerNorm) |
# | LSA block | $4C$ (two LayerNorms) $+ 3C^2 + 3C$ (qkv) $+ C^2 + C$ (proj) + MLP |
# | GSA block | $4C + (C^2 + C) + (2C^2 + 2C) + (C^2 + C)$ + MLP, plus $s^2C^2 + C + 2C$ when $s > 1$ |
# | MLP | $2rC^2 + rC + C$ |
# | PEG | $9C + C$ |

# %%
C, r, p, s = C0, r0, CFG["patch_size"], sr0
mlp = 2 * r * C * C + r * C + C
expected = {
    "PatchEmbed": p * p * 3 * C + C + 2 * C,
    "LSA block": 4 * C + 3 * C * C + 3 * C + C * C + C + mlp,
    "PEG": 10 * C,
    "GSA block": 4 * C + (C * C + C) + (2 * C * C + 2 * C) + (C * C + C) + mlp + s * s * C * C + 3 * C,
}
for (name, n_expected), module in zip(expected.items(), (embed0, lsa0, peg0, gsa0)):
    n = analysis.count_params(module)
    print(f"{name:10s} {n:8,d} parameters")
    assert n == n_expected, name

# %% [markdown]
# ## 2. The whole model by hand, against `create_model`
#
# Now every stage, with the rule of timm's constructor: block $i$ of stage $s$ uses LSA with
# window `wss[s]` when $i$ is even and GSA when $i$ is odd (PCPVT, `wss=None`, uses GSA
# everywhere). We hang the modules on an empty `nn.Module` under timm's attribute names
# (`patch_embeds`, `blocks`, `pos_block`, `norm`, `head`), so its `state_dict` has exactly the
# keys of the real model — and `load_state_dict` (strict) proves it.


# %%
def build_by_hand(cfg, in_chans=3, rng=None, dtype=F64):
    """A container of twins-np modules laid out as timm's Twins (no forward of its own)."""
    S = len(cfg["depths"])
    parts = nn.Module()
    parts.patch_embeds = nn.ModuleList()
    parts.blocks = nn.ModuleList()
    parts.pos_block = nn.ModuleList()
    size, prev, p = cfg["img_size"], in_chans, cfg["patch_size"]
    for s in range(S):
        C = cfg["embed_dims"][s]
        parts.patch_embeds.append(nn.PatchEmbed(size, p, prev, C, rng=rng, dtype=dtype))
        stage = nn.ModuleList()
        for i in range(cfg["depths"][s]):
            ws = 1 if cfg.get("wss") is None or i % 2 == 1 else cfg["wss"][s]
            # norm_eps: Twins' LayerNorms use 1e-6 (a Block on its own has timm's default, 1e-5)
            stage.append(nn.Block(C, cfg["num_heads"][s], cfg["mlp_ratios"][s], sr_ratio=cfg["sr_ratios"][s], ws=ws,
                                  norm_eps=1e-6, rng=rng, dtype=dtype))  # fmt: skip
        parts.blocks.append(stage)
        parts.pos_block.append(nn.PosConv(C, C, rng=rng, dtype=dtype))
        size, prev, p = size // p, C, 2
    parts.norm = nn.LayerNorm(prev, eps=1e-6, dtype=dtype)
    parts.head = nn.Linear(prev, cfg["num_classes"], rng=rng, dtype=dtype)
    return parts


def forward_by_hand(parts, x, peg_at=0):
    """Image (B, C_in, H, W) -> logits; the PEG of each stage runs after block `peg_at`
    (-1: before block 0, None: no PEG)."""
    S = len(parts.blocks)
    for s in range(S):
        x, size = parts.patch_embeds[s](x)
        if peg_at == -1:
            x = parts.pos_block[s](x, size)
        for i, blk in enumerate(parts.blocks[s]):
            x = blk(x, size)
            if i == peg_at:
                x = parts.pos_block[s](x, size)
        if s < S - 1:
            B, _, C = x.shape
            x = x.reshape(B, *size, C).transpose(0, 3, 1, 2)  # tokens -> NCHW for the next PatchEmbed
    x = parts.norm(x)
    parts.n_tokens = x.shape[1]
    return parts.head(x.mean(axis=1))


def backward_by_hand(parts, dlogits, peg_at=0):
    """The same path in reverse: dlogits -> d image; fills every parameter's .grad."""
    d = parts.head.backward(dlogits)
    n = parts.n_tokens
    d = np.broadcast_to(d[:, None, :] / n, (d.shape[0], n, d.shape[1]))  # mean over n tokens
    d = parts.norm.backward(d)
    S = len(parts.blocks)
    for s in reversed(range(S)):
        if s < S - 1:
            B, C = d.shape[:2]
            d = d.transpose(0, 2, 3, 1).reshape(B, -1, C)  # NCHW gradient -> tokens
        for i in reversed(range(len(parts.blocks[s]))):
            if i == peg_at:
                d = parts.pos_block[s].backward(d)
            d = parts.blocks[s][i].backward(d)
        if peg_at == -1:
            d = parts.pos_block[s].backward(d)
        d = parts.patch_embeds[s].backward(d)
    return d


hand = build_by_hand(CFG, rng=np.random.default_rng(1))
model = create_model("twins_svt_teach32", dtype=F64, seed=0)
# Random biases and LayerNorm affine parameters: zeros and ones would hide mistakes.
for prm in model.parameters():
    if prm.data.ndim == 1:
        prm.data = prm.data + rng.normal(0.0, 0.1, prm.data.shape)

hand.load_state_dict(model.state_dict())  # strict: the same keys, the same shapes
assert list(hand.state_dict()) == list(model.state_dict())
assert analysis.count_params(hand) == analysis.count_params(model) == analysis.count_params_from_config("twins_svt_teach32")
print(f"{len(model.state_dict())} tensors, {analysis.count_params(model):,} parameters")
print("by module:", analysis.params_by_module(model))

# %% [markdown]
# Forward and backward through both. They execute the same arithmetic on the same arrays
# in the same order, so we expect **identical** bits, not merely a small difference.

# %%
x = rng.standard_normal((4, 3, 32, 32))
dlogits = rng.standard_normal((4, CFG["num_classes"]))
model.zero_grad()
hand.zero_grad()
logits_model = model(x)
dx_model = model.backward(dlogits)
logits_hand = forward_by_hand(hand, x)
dx_hand = backward_by_hand(hand, dlogits)

print("logits  max |diff| =", np.abs(logits_hand - logits_model).max())
print("dx      max |diff| =", np.abs(dx_hand - dx_model).max())
grads_hand = {k: p.grad for k, p in hand.named_parameters()}
worst = max(np.abs(grads_hand[k] - p.grad).max() for k, p in model.named_parameters())
print("params  max |diff| =", worst)
assert np.array_equal(logits_hand, logits_model)
assert np.array_equal(dx_hand, dx_model)
assert all(np.array_equal(grads_hand[k], p.grad) for k, p in model.named_parameters())

# %% [markdown]
# ## 3. The order matters
#
# The state dict says *what* the weights are, not *when* they run. The PEG can be put in
# other places and the same weights load without a complaint — but the function changes.
# A third-party port once stacked its blocks and PEGs in a different order from the
# official code; fixing the order moved the converted checkpoint's ImageNet top-1 from
# 80.65 % to 81.14 % (open-mmlab/mmpretrain#846). Twins places the PEG as CPVT does:
# **after the first block** of each stage. Here are three other placements, with the same
# weights.

# %%
VARIANTS = {"PEG after block 0 (Twins)": 0, "PEG before block 0": -1, "PEG after block 1 (end of stage)": 1, "no PEG": None}
ref = forward_by_hand(hand, x, peg_at=0)
ORDER_ERR = {}
for name, peg_at in VARIANTS.items():
    ORDER_ERR[name] = rel_err(forward_by_hand(hand, x, peg_at=peg_at), ref)
    print(f"{name:34s} relative change of the logits: {ORDER_ERR[name]:.3f}")

assert ORDER_ERR["PEG after block 0 (Twins)"] == 0.0
for name in ("PEG before block 0", "PEG after block 1 (end of stage)", "no PEG"):
    assert ORDER_ERR[name] > 0.05, name  # not a rounding effect: a different function

# %% [markdown]
# ## 4. The paper's six models: parameters and FLOPs from the configs
#
# `analysis.count_flops(name)` and `analysis.count_params_from_config(name)` work from the
# configuration alone: no weights are allocated, so Twins-SVT-L (99 M parameters, 400 MB in
# float32) costs nothing to analyse. One multiply-add counts as one FLOP, the paper's
# convention. The paper's Table 1/2 count the attention products $q k^\top$ and
# $\text{attn}\cdot v$; the official README's FLOPs leave them out (its counter hooked
# modules only, Meituan-AutoML/Twins#11), which `include_attention=False` reproduces.

# %%
SIX = ["twins_pcpvt_small", "twins_pcpvt_base", "twins_pcpvt_large", "twins_svt_small", "twins_svt_base", "twins_svt_large"]
# paper: parameters (M, as printed) and GFLOPs; README: GFLOPs without the attention products
PAPER = {
    "twins_pcpvt_small": ("24.1", 3.8, 3.7),
    "twins_pcpvt_base": ("43.8", 6.7, 6.4),
    "twins_pcpvt_large": ("60.9", 9.8, 9.5),
    "twins_svt_small": ("24", 2.9, 2.8),
    "twins_svt_base": ("56", 8.6, 8.3),
    "twins_svt_large": ("99.2", 15.1, 14.8),
}
# timm's exact counts (pretrained=False), equal to the official training logs
TIMM_PARAMS = {
    "twins_pcpvt_small": 24_106_216,
    "twins_pcpvt_base": 43_828_456,
    "twins_pcpvt_large": 60_989_672,
    "twins_svt_small": 24_060_776,
    "twins_svt_base": 56_070_952,
    "twins_svt_large": 99_271_400,
}

tracemalloc.start()
REPORTS = {m: analysis.count_flops(m) for m in SIX}
REPORTS_NO_ATTN = {m: analysis.count_flops(m, include_attention=False) for m in SIX}
PARAMS = {m: analysis.count_params_from_config(m) for m in SIX}
peak_bytes = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()


def truncate(x, decimals):
    """Cut (not round) x to the given number of decimals."""
    return math.floor(x * 10**decimals) / 10**decimals


head = f"{'model':18s} {'params':>12s} {'M (paper)':>9s} {'GMAC':>7s} {'paper':>6s} {'no attn':>8s} {'README':>7s}"
print(head)
print("-" * len(head))
for m in SIX:
    printed, g_paper, g_readme = PAPER[m]
    print(f"{m:18s} {PARAMS[m]:>12,d} {printed:>9s} {REPORTS[m].gmacs:>7.3f} {g_paper:>6.1f} "
          f"{REPORTS_NO_ATTN[m].gmacs:>8.3f} {g_readme:>7.1f}")  # fmt: skip
print(f"\npeak memory while analysing all six: {peak_bytes / 1e6:.2f} MB "
      f"(SVT-L's weights alone would take {4 * PARAMS['twins_svt_large'] / 1e6:.0f} MB in float32)")  # fmt: skip

# %% [markdown]
# The FLOPs agree with the paper (and the README) after rounding to one decimal. The
# parameter counts agree too, with one twist: the paper **truncates** them. Rounding
# would print 61.0 M for PCPVT-L (60,989,672) and 99.3 M for SVT-L (99,271,400), where the
# paper has 60.9 M and 99.2 M.

# %%
for m in SIX:
    printed, g_paper, g_readme = PAPER[m]
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    assert PARAMS[m] == TIMM_PARAMS[m] == REPORTS[m].params, m
    assert truncate(PARAMS[m] / 1e6, decimals) == float(printed), m
    assert round(REPORTS[m].gmacs, 1) == g_paper, m
    assert round(REPORTS_NO_ATTN[m].gmacs, 1) == g_readme, m
assert round(PARAMS["twins_pcpvt_large"] / 1e6, 1) == 61.0 and round(PARAMS["twins_svt_large"] / 1e6, 1) == 99.3
assert peak_bytes < 0.01 * 4 * PARAMS["twins_svt_large"]  # nothing of weight size was allocated

# %% [markdown]
# ## 5. Where the multiply-adds go
#
# `FlopReport.groups()` sums the per-layer MACs into six groups. The stacked bars show the
# share of each group, with the total on the right.

# %%
GROUPS = list(analysis.GROUPS)
shares = {m: {g: v / REPORTS[m].total for g, v in REPORTS[m].groups().items()} for m in SIX}
fig, ax = plt.subplots(figsize=(10, 4.2))
labels = [m.replace("twins_", "") for m in SIX]
left = np.zeros(len(SIX))
for g in GROUPS:
    vals = np.array([100 * shares[m][g] for m in SIX])
    ax.barh(labels, vals, left=left, label=g)
    left += vals
for i, m in enumerate(SIX):
    ax.text(101, i, f"{REPORTS[m].gmacs:.2f} G", va="center")
ax.set_xlim(0, 115)
ax.invert_yaxis()
ax.set_xlabel("share of the multiply-adds at 224 x 224 (%)")
ax.set_title("Where the MACs of the six Twins models go (attention products included)")
ax.legend(ncol=3, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18))
fig.tight_layout()
plt.show()

for m in SIX:
    print(f"{m:18s} " + "  ".join(f"{g} {100 * shares[m][g]:.1f}%" for g in GROUPS))

# %% [markdown]
# What the chart says, asserted:
#
# - the MLPs take the largest share everywhere (about 2/3): at 224 × 224, spatial attention
#   is no longer the expensive part;
# - the attention products themselves are under 5 %; the projections (qkv, q, kv, proj) are
#   the second group;
# - PCPVT, with GSA in every block, spends a larger share on the sub-sampling convs than SVT
#   of the same size.

# %%
for m in SIX:
    sh = shares[m]
    assert abs(sum(sh.values()) - 1.0) < 1e-12
    assert sh["mlp"] == max(sh.values()) and 0.6 < sh["mlp"] < 0.75, m
    assert sh["attention matmuls"] < 0.05, m
    assert sorted(sh, key=sh.get)[-2] == "qkv/q/kv/proj", m
for size_name in ("small", "base", "large"):
    assert shares[f"twins_pcpvt_{size_name}"]["sr conv"] > shares[f"twins_svt_{size_name}"]["sr conv"]

# %% [markdown]
# ## 6. Parity with timm
#
# twins-np keeps timm's parameter names and shapes, so timm's `state_dict` loads as it is.
# We build timm's `Twins` with the same configuration, randomise its biases and LayerNorm
# parameters, copy its weights into twins-np, and compare the logits, the input gradient and
# every parameter gradient for a random upstream gradient, in float64:
#
# - the two teaching configurations at their 32 × 32 input;
# - Twins-SVT-S (24 M parameters) at 64 × 64, where the stage-1 GSA sub-samples a 16 × 16
#   grid to 2 × 2 keys and every LSA pads its map.
#
# The error is $\max|a - b| / \max(\max|b|, \text{floor})$ with $\text{floor} = 10^{-12}$
# times the largest parameter gradient of the model, which only matters for a gradient that
# is zero in theory. The tolerance is `TOLERANCES["parity_model_f64_rel"]`. Without PyTorch
# this section prints a note and skips.

# %%
try:
    import torch
    from timm.models.twins import Twins as TimmTwins
except ImportError:
    torch = None
    print('PyTorch / timm are not installed: the parity check with timm is skipped (pip install -e ".[parity]")')

PARITY = {}
if torch is not None:
    torch.set_num_threads(1)  # small models: one thread avoids waiting for busy cores

    def timm_twins(name):
        """timm's Twins with twins-np's config for `name`, float64, random biases and LN affine."""
        torch.manual_seed(0)
        tm = TimmTwins(**MODEL_CONFIGS[name]).double().eval()
        with torch.no_grad():
            for prm in tm.parameters():
                if prm.ndim == 1:
                    prm.add_(torch.randn_like(prm) * 0.1)
        return tm

    for name, side in [("twins_svt_teach32", 32), ("twins_pcpvt_teach32", 32), ("twins_svt_small", 64)]:
        t0 = time.perf_counter()
        tm = timm_twins(name)
        ours = create_model(name, dtype=F64).eval()
        ours.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
        xs = np.random.default_rng(2).standard_normal((2, 3, side, side))
        xt = torch.tensor(xs, requires_grad=True)
        out_t = tm(xt)
        d = np.random.default_rng(3).standard_normal(tuple(out_t.shape))
        out_t.backward(torch.tensor(d))
        out, dx = ours(xs), ours.backward(d)
        tgrads = {k: prm.grad.numpy() for k, prm in tm.named_parameters()}
        floor = 1e-12 * max(float(np.abs(g).max()) for g in tgrads.values())
        param_err = max(
            float(np.abs(prm.grad - tgrads[k]).max()) / max(float(np.abs(tgrads[k]).max()), floor)
            for k, prm in ours.named_parameters()
        )
        PARITY[name, side] = (rel_err(out, out_t.detach().numpy()), rel_err(dx, xt.grad.numpy()), param_err)
        print(f"{name:20s} {side}x{side}: logits {PARITY[name, side][0]:.1e}, dx {PARITY[name, side][1]:.1e}, "
              f"worst parameter gradient {param_err:.1e}   ({time.perf_counter() - t0:.1f} s)")  # fmt: skip

    for key, errs in PARITY.items():
        assert max(errs) < TOLERANCES["parity_model_f64_rel"], (key, errs)

# %% [markdown]
# ## 7. Saving and loading weights
#
# `twins_np.io.save_weights` writes the state dict under timm's names (`.npz` here;
# `.safetensors` and `.pth` work the same way), atomically. A fresh model with other
# weights gives other logits until `load_weights` copies the file in.

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = io.save_weights(model, pathlib.Path(tmp) / "twins_svt_teach32.npz")
    on_disk = io.read_weights(path)
    print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, {len(on_disk)} arrays, e.g. {list(on_disk)[:3]}")
    fresh = create_model("twins_svt_teach32", dtype=F64, seed=123)
    before = fresh(x)
    io.load_weights(fresh, path)
    after = fresh(x)

expected_logits = model(x)
print(f"relative difference of the logits: before loading {rel_err(before, expected_logits):.2f}, "
      f"after {rel_err(after, expected_logits)}")  # fmt: skip
assert list(on_disk) == list(model.state_dict())
assert all(on_disk[k].dtype == F64 and np.array_equal(on_disk[k], v) for k, v in model.state_dict().items())
assert rel_err(before, expected_logits) > 0.1
assert np.array_equal(after, expected_logits)

# %% [markdown]
# ### The same model on a GPU
#
# With CuPy and a CUDA GPU, `to_device("gpu")` moves every parameter; the same forward code
# runs with CuPy arrays. In float64 the GPU's logits agree with the CPU's to rounding.

# %%
if twins_np.cupy_available():
    gpu_model = create_model("twins_svt_teach32", dtype=F64, seed=123)
    gpu_model.load_state_dict(model.state_dict())
    gpu_model.to_device("gpu")
    gpu_logits = twins_np.asnumpy(gpu_model(twins_np.to_device(x, "gpu")))
    gpu_err = rel_err(gpu_logits, expected_logits)
    print(f"GPU vs CPU logits, float64: relative error {gpu_err:.1e}")
    assert gpu_err < TOLERANCES["parity_model_f64_rel"]
else:
    print("no CUDA GPU here: the GPU check is skipped")

# %%
print(f"notebook ran in {time.perf_counter() - T_START:.1f} s")

# %% [markdown]
# ## Summary
#
# - A Twins model is PatchEmbed → block 0 → PEG → blocks 1… per stage, then LayerNorm, the
#   mean over tokens and a Linear head. Built by hand from `twins_np.nn`, it matches
#   `create_model`'s forward and backward bit for bit.
# - The state dict cannot tell where the PEG runs; the output can. Twins puts it after the
#   first block of each stage.
# - The configs alone give the paper's parameter counts (truncated, as the paper prints
#   them) and FLOPs (3.8 / 6.7 / 9.8 / 2.9 / 8.6 / 15.1 G with the attention products,
#   3.7 / 6.4 / 9.5 / 2.8 / 8.3 / 14.8 G without, as in the README). The MLPs take about
#   two thirds of the multiply-adds.
# - twins-np equals timm's Twins in float64 (logits and every gradient), and its checkpoints
#   round-trip exactly.
#
# ## Exercises
#
# 1. Build Twins-PCPVT by hand with `build_by_hand(MODEL_CONFIGS["twins_pcpvt_teach32"])` and
#    check it against `create_model("twins_pcpvt_teach32")` as in section 2. Which line of
#    `build_by_hand` makes it PCPVT?
# 2. Swap the two blocks of every SVT stage (GSA first, then LSA) by editing
#    `build_by_hand`. Does `load_state_dict` accept the timm weights? Why or why not?
# 3. Compute the FLOPs of the six models at 384 × 384 (`count_flops(name, 384)`). Which
#    group grows fastest, and why (see notebook 07)?
# 4. The PEG is translation-equivariant except at the border, where its zero padding tells
#    a token where it is. Shift the input image by 4 pixels (one stage-2 token) with
#    `np.roll` and compare the stage outputs of `forward_by_hand` with and without the PEG.
# 5. Save the model as `.safetensors` and load it with `safetensors.numpy.load_file`. Are
#    the arrays identical to the `.npz` ones?
