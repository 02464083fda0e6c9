# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 09 · Training a small Twins, and the paper's ablations in miniature
#
# Everything so far ran one forward and one backward at a time. Here we put them in a loop
# and train: first a teaching-size Twins-SVT on handwritten digits, then tiny models on a
# synthetic task built so that only attention *across windows* can solve it. The task lets
# us replay two of the paper's ablations (Chu et al. 2021, section 4.4) on a laptop CPU:
#
# - **Table 8**, what GSA adds to LSA: a model whose attention never leaves its windows
#   against the same model with every second block global;
# - **Table 9**, the sub-sampling function that summarises each window into one GSA key:
#   a strided convolution (the paper's and timm's choice), average pooling, or a depthwise
#   separable convolution.
#
# ImageNet numbers cannot be reproduced in minutes; the *mechanisms* can, and on a task where
# the difference is all-or-nothing.
#
# **Learning goals**
#
# - Write a training loop from twins-np's pieces: `DataLoader`, `model.loss` /
#   `model.backward_loss`, `AdamW` with timm's parameter groups, a warm-up + cosine
#   schedule, gradient clipping, and `evaluate_model`.
# - Train `twins_svt_teach32` on the digits and read its learning curves.
# - Prove (exactly, without training) that a model of windows and per-token layers followed
#   by a mean over tokens is a *sum over windows*, and why such a sum cannot compare two
#   distant marks; then watch LSA-only and LSA + GSA models train on that task.
# - See why the task needs a curriculum: a "same or different" label has no first-order
#   signal for gradient descent to start from.
# - Compare GSA's three sub-sampling functions by parameters, multiply-adds and accuracy.
#
# The whole notebook runs in about five minutes on two CPU cores; every run prints its time.

# %%
# %load_ext autoreload
# %autoreload 2

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import twins_np
from twins_np import analysis, nn
from twins_np.data import DataLoader, Dataset, load_dataset, make_long_range
from twins_np.data.long_range import MARKS
from twins_np.optim import AdamW, CosineSchedule, clip_grad_norm, param_groups
from twins_np.training import confusion_matrix, evaluate_model, format_confusion_matrix

# the device of the device-aware cells: TWINS_NP_DEVICE=gpu runs them on CuPy (a CUDA GPU); default the CPU
DEVICE = os.environ.get("TWINS_NP_DEVICE", "cpu")
assert DEVICE == "cpu" or (DEVICE == "gpu" and twins_np.cupy_available()), f"TWINS_NP_DEVICE={DEVICE!r}: no CUDA GPU here"

T_START = time.perf_counter()
print("twins-np", twins_np.__version__, "| GPU available:", twins_np.cupy_available())

# The models below are small: their matrix products take microseconds, and extra BLAS
# threads only wait for busy cores. One thread is faster and makes the timings steadier.
try:
    from threadpoolctl import threadpool_limits

    BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")
    print("BLAS limited to one thread")
except ImportError:
    BLAS_LIMIT = None
    print("threadpoolctl is not installed: BLAS keeps its default threads")

# %% [markdown]
# ## 1. The training loop
#
# One update, as DeiT and Twins train (see `twins_np.optim` for each piece):
#
# ```text
# lr = schedule.step(optimizer)     # linear warm-up, then cosine decay, per update
# optimizer.zero_grad()             # .grad = None: backward accumulates into it
# loss, logits = model.loss(x, y)   # forward + softmax cross-entropy
# model.backward_loss()             # every .grad, by the hand-written backward
# clip_grad_norm(params, 5.0)       # global 2-norm at most 5
# optimizer.step()                  # AdamW; no weight decay on biases, norms and the PEG
# ```
#
# After every epoch we evaluate the test split in eval mode. `twins_np.training.Trainer`
# wraps the same loop with checkpoints, metric files and resuming; here the loop stays in
# view.


# %%
def fit(model, train_set, test_set, epochs, lr, batch_size=32, seed=0, device=DEVICE, tag=""):
    """Train `model` in place; returns one dict of metrics per epoch (plus the per-update losses)."""
    model.to_device(device)
    optimizer = AdamW(param_groups(model, weight_decay=0.05), lr=lr)
    loader = DataLoader(train_set, batch_size, seed=seed, device=device)
    steps = epochs * len(loader)
    schedule = CosineSchedule(lr, steps, warmup_steps=len(loader) // 2, warmup_lr=lr / 100, min_lr=lr / 100)
    params = model.parameters()
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        losses, correct, seen = [], 0, 0
        for x, y in loader:
            schedule.step(optimizer)
            optimizer.zero_grad()
            loss, logits = model.loss(x, y)
            model.backward_loss()
            clip_grad_norm(params, 5.0)
            optimizer.step()
            losses.append(loss)
            correct += int((logits.argmax(axis=1) == y).sum())
            seen += int(y.shape[0])
        test = evaluate_model(model, test_set, 256, device)
        row = dict(epoch=epoch, train_loss=float(np.mean(losses)), train_acc=correct / seen, test_loss=test.loss,
                   test_acc=test.accuracy, seconds=time.perf_counter() - t0, step_losses=losses)  # fmt: skip
        history.append(row)
        print(f"{tag:>16s} epoch {epoch}: train loss {row['train_loss']:.3f} acc {100 * row['train_acc']:5.1f}% | "
              f"test loss {row['test_loss']:.3f} acc {100 * row['test_acc']:5.1f}% | {row['seconds']:.1f} s")  # fmt: skip
    return history


# %% [markdown]
# ## 2. Twins-SVT on handwritten digits
#
# scikit-learn's 1,797 digits (8 × 8, enlarged to 32 × 32, one channel), split 80/20 per
# class. `twins_svt_teach32` has three stages on 16 × 16, 8 × 8 and 4 × 4 token grids, LSA
# windows of 4 × 4 tokens and GSA in every second block; `in_chans=1` and `num_classes=10`
# adapt it to the data. Three epochs, no augmentation, no label smoothing: a short run.

# %%
digits_train, digits_test = load_dataset("digits", "train"), load_dataset("digits", "test")
print(f"digits: train {digits_train.images.shape}, test {digits_test.images.shape}, {digits_train.num_classes} classes")
digits_model = twins_np.create_model("twins_svt_teach32", in_chans=1, num_classes=10, seed=0)
print(f"twins_svt_teach32: {analysis.count_params(digits_model):,} parameters, "
      f"{analysis.count_flops(digits_model, 32).total / 1e6:.1f} M multiply-adds per image")  # fmt: skip
t0 = time.perf_counter()
DIGITS = fit(digits_model, digits_train, digits_test, epochs=3, lr=1e-3, tag="digits")
DIGITS_SECONDS = time.perf_counter() - t0

# %%
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4))
steps = np.concatenate([row["step_losses"] for row in DIGITS])
per_epoch = len(DIGITS[0]["step_losses"])
ax_loss.plot(np.arange(1, len(steps) + 1) / per_epoch, steps, lw=0.6, alpha=0.5, label="train, per update")
ax_loss.plot([r["epoch"] for r in DIGITS], [r["train_loss"] for r in DIGITS], "o-", label="train, epoch mean")
ax_loss.plot([r["epoch"] for r in DIGITS], [r["test_loss"] for r in DIGITS], "s-", label="test")
ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
ax_acc.plot([r["epoch"] for r in DIGITS], [100 * r["train_acc"] for r in DIGITS], "o-", label="train (during the epoch)")
ax_acc.plot([r["epoch"] for r in DIGITS], [100 * r["test_acc"] for r in DIGITS], "s-", label="test")
ax_acc.axhline(10, color="gray", ls=":", label="chance (10 classes)")
ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy", ylim=(0, 100))
for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
fig.suptitle(f"twins_svt_teach32 on the digits ({DIGITS_SECONDS:.0f} s on the {DEVICE.upper()})")
fig.tight_layout()
plt.show()

result = evaluate_model(digits_model, digits_test, 256, DEVICE)
print(format_confusion_matrix(confusion_matrix(result.labels, result.preds, 10), digits_test.classes))

# %% [markdown]
# Three epochs take the test accuracy from chance (10 %) to about 90 %; the training loss
# falls steadily. (The full recipe of `twins-np train`, 10 epochs with augmentation, label
# smoothing and drop path, passes 95 %.) We assert a bound with a wide margin below the
# measured value, so that the check does not depend on the last digit of a float32 sum.

# %%
if DEVICE == "cpu":  # on a GPU one seed's outcome can move: asserted on the median of three seeds below
    assert DIGITS[-1]["test_acc"] > 0.75, DIGITS[-1]["test_acc"]
assert DIGITS[-1]["train_loss"] < 0.5 * DIGITS[0]["train_loss"]
assert result.accuracy == DIGITS[-1]["test_acc"]

# %% [markdown]
# ### The same run on a GPU
#
# With CuPy and a CUDA GPU the loop runs unchanged with `device="gpu"`: the loader hands out
# CuPy batches and the model's parameters live on the device. On tiny models the GPU is
# bound by kernel launches, so do not expect a large speed-up here. GPU float32 sums round
# differently from the CPU's, so one seed's outcome can move: as for the ablations below, we
# train three seeds and assert on the median. (With `TWINS_NP_DEVICE=gpu` the run above was
# already seed 0 on the GPU: only seeds 1 and 2 are added.)

# %%
if twins_np.cupy_available():
    t0 = time.perf_counter()
    GPU_ACC = [DIGITS[-1]["test_acc"]] if DEVICE == "gpu" else []
    for seed in (0, 1, 2)[len(GPU_ACC) :]:
        gpu_model = twins_np.create_model("twins_svt_teach32", in_chans=1, num_classes=10, seed=seed)
        history = fit(gpu_model, digits_train, digits_test, epochs=3, lr=1e-3, seed=seed, device="gpu", tag=f"GPU seed {seed}")
        GPU_ACC.append(history[-1]["test_acc"])
    per_run = (time.perf_counter() - t0) / (3 - (DEVICE == "gpu"))
    print(f"GPU: {per_run:.1f} s per run (the run above: {DIGITS_SECONDS:.1f} s on the {DEVICE.upper()})")
    assert np.median(GPU_ACC) > 0.75, GPU_ACC
else:
    print("no CUDA GPU here: the GPU run is skipped")

# %% [markdown]
# ## 3. A task that local windows cannot solve
#
# `load_dataset("long-range")` draws 32 × 32 images with two 3 × 3 marks, each a "plus" or a
# "cross" (both light 5 pixels). One mark lies in a 4-pixel band at one edge, the other in the
# band at the opposite edge. The label is **1 when the two marks have the same shape**. Each
# mark on its own is a fair coin, independent of the label: only a model that brings the two
# together can beat chance.
#
# We switch the background noise off (`noise=0.0`), which keeps the shapes easy to learn
# within our two-minute budget, and draw the data with `make_long_range`, the generator
# behind `load_dataset`: it also returns each mark's shape, which we need for the curriculum
# below.
#
# Sections 3 and 4 run on the NumPy twins of the fused CPU kernels (`twins_np.cpu_kernels`),
# because their seed-by-seed numbers, quoted in the text and asserted, were measured on them.
# The kernels compute every step alike, to the bit or within a few ulp where a sum is added
# in another order, and the training losses of the two paths stay equal for the first 300
# updates. Then a run leaves its plateau, or does not within the budget, and where it does
# depends on those last bits: with the kernels, seed 2 of the LSA + GSA model below ends at
# 69 % instead of 95 %, and two of the three sub-sampling modes of section 4 miss the 90 %
# median asserted there. The conclusions hold on both paths (with GSA the comparison is
# learnt, without it never: every LSA-only run stays at chance); the exact numbers are the
# twins'.

# %%
KERNELS = twins_np.cpu_kernels()  # restored at the end of section 4
twins_np.cpu_kernels(False)

# %%
N_TRAIN, N_TEST = 4096, 1000
lr_train = make_long_range(N_TRAIN, seed=[0, 0], noise=0.0)  # the streams load_dataset uses for train and test
lr_test = make_long_range(N_TEST, seed=[0, 1], noise=0.0)
same = load_dataset("long-range", "train", n=N_TRAIN, noise=0.0)
assert np.array_equal(same.images, lr_train.images) and np.array_equal(same.labels, lr_train.labels)

fig, axes = plt.subplots(2, 3, figsize=(7.5, 5.6), layout="constrained")
for ax, i in zip(axes.flat, range(6)):
    ax.imshow(lr_train.images[i, 0], cmap="gray_r")
    ax.axhline(15.5, color="tab:red", lw=1)  # the 16-pixel windows of the tiny models below
    ax.axvline(15.5, color="tab:red", lw=1)
    kinds = " / ".join("plus" if k == 0 else "cross" for k in lr_train.kinds[i])
    ax.set_title(f"{kinds}\nlabel: {['different', 'same'][lr_train.labels[i]]}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("The long-range task (red: the model's window borders)")
plt.show()

# %% [markdown]
# ### Tiny models
#
# Both models have two stages: patch 4 gives 8 × 8 tokens of 4 × 4 pixels with LSA windows of
# 4 × 4 tokens, then patch 2 gives 4 × 4 tokens with windows of 2 × 2 tokens. In both stages a
# window covers one **16 × 16-pixel quadrant** of the image (the red lines), and the two marks
# always lie in different halves — asserted below for every training image. (A third stage
# would have 2 × 2 tokens, and any window on it would cover the whole image.)
#
# - **LSA + GSA**: the SVT layout; block 1 of each stage is GSA with sub-sampling ratio 4,
#   then 2 (2 × 2 keys, one per quadrant).
# - **LSA only**: block 1 of each stage is replaced by an LSA block with the stage's window.
#
# Both models run **without the PEG**. Notebook 06 showed that LSA → PEG → LSA already
# crosses a window border; with only two windows per axis that is the whole image, and the
# comparison would measure the PEG instead of GSA (exercise 2 puts it back).

# %%
TINY = dict(img_size=32, patch_size=4, in_chans=1, embed_dims=(16, 32), depths=(2, 2), num_heads=(1, 2),
            mlp_ratios=(4, 4), sr_ratios=(4, 2), wss=(4, 2))  # fmt: skip


def tiny_twins(attention="lsa+gsa", num_classes=2, sr_mode="conv", peg=False, seed=0, dtype=np.float32):
    """A two-stage Twins on 32 x 32 images; attention "lsa+gsa" (SVT) or "lsa" (GSA blocks swapped for LSA)."""
    model = twins_np.Twins(**TINY, num_classes=num_classes, sr_mode=sr_mode, seed=seed, dtype=dtype)
    if attention == "lsa":
        g = np.random.default_rng(seed + 1)
        for s, stage in enumerate(model.blocks):
            # norm_eps: Twins' 1e-6, as the block it replaces (a Block on its own has timm's 1e-5)
            lsa = nn.Block(TINY["embed_dims"][s], TINY["num_heads"][s], TINY["mlp_ratios"][s], ws=TINY["wss"][s],
                           norm_eps=1e-6, rng=g, dtype=dtype)  # fmt: skip
            setattr(stage, "1", lsa)  # block 1 is the stage's last, so the block order is kept
    if not peg:
        model.pos_block = nn.ModuleList([nn.Identity() for _ in TINY["depths"]])  # the forward calls them as PEGs
    return model


def window_quadrant_ok(corners, side=32, window=16, m=3):
    """True for every image whose two marks lie in different window-halves along some axis."""
    first_end, second_start = corners[:, 0, :] + m - 1, corners[:, 1, :]
    return ((first_end < window) & (second_start >= side - window)).any(axis=1)


assert window_quadrant_ok(lr_train.corners).all() and window_quadrant_ok(lr_test.corners).all()
for attention in ("lsa+gsa", "lsa"):
    model = tiny_twins(attention)
    kinds = [[type(b.attn).__name__ for b in stage] for stage in model.blocks]
    print(f"{attention:8s} {analysis.count_params(model):6,d} parameters, blocks per stage: {kinds}")

# %% [markdown]
# ### Why the LSA-only model cannot solve it, exactly
#
# Without GSA and without the PEG, a token of the last stage depends only on the pixels of
# its own quadrant: LSA stays in its window, the MLPs and LayerNorms act token by token, and
# each patch embedding merges tokens of one window into a token of the same window. The head
# then takes the **mean over tokens** and a linear map. So the LSA-only model's logits are a
# **sum of one function per quadrant**:
#
# $$\text{logit}(\text{image}) = \textstyle\sum_{Q} g_Q(\text{pixels of } Q).$$
#
# Place the two marks at fixed positions, with shapes $a$ and $b$ (0 = plus, 1 = cross), and
# let $D(a, b)$ be the logit of "same" minus that of "different". A sum over quadrants gives
# $D(a, b) = u(a) + v(b)$, so the *interaction*
#
# $$I = D(0,0) + D(1,1) - D(0,1) - D(1,0)$$
#
# is zero, whatever the weights. Telling "same" from "different" needs $D(0,0), D(1,1) > 0 >
# D(0,1), D(1,0)$, hence $I > 0$: impossible. (A sum can still get 3 of the 4 cases right,
# but for cross-entropy the best sum is a constant: the four cases are balanced, and
# $\log\sigma$ is concave.) We check $I$ in float64 on 200 test placements, at
# initialisation, for the LSA-only model, the LSA + GSA model, and the LSA-only model *with*
# PEGs.


# %%
def with_shapes(corners, a, b, side=32):
    """Noise-free images with the marks at `corners`, the first of shape a and the second of shape b."""
    images = np.zeros((len(corners), 1, side, side))
    for i, (r1, c1, r2, c2) in enumerate(corners.reshape(len(corners), 4)):
        images[i, 0, r1 : r1 + 3, c1 : c1 + 3] += MARKS[a]
        images[i, 0, r2 : r2 + 3, c2 : c2 + 3] += MARKS[b]
    return images


def interaction(model, corners):
    """|I| per placement, relative to the largest |D| (float64 models)."""
    model.eval()
    D = {}
    for a in (0, 1):
        for b in (0, 1):
            logits = model(with_shapes(corners, a, b))
            D[a, b] = logits[:, 1] - logits[:, 0]
    inter = D[0, 0] + D[1, 1] - D[0, 1] - D[1, 0]
    return np.abs(inter) / max(np.abs(np.stack(list(D.values()))).max(), 1e-300)


PLACES = lr_test.corners[:200]
both_plus = lr_test.kinds[:200].sum(axis=1) == 0
assert np.array_equal(with_shapes(PLACES, 0, 0)[both_plus], lr_test.images[:200][both_plus])  # the dataset's images

INTER = {
    "LSA only": interaction(tiny_twins("lsa", dtype=np.float64), PLACES),
    "LSA + GSA": interaction(tiny_twins("lsa+gsa", dtype=np.float64), PLACES),
    "LSA only, with PEGs": interaction(tiny_twins("lsa", peg=True, dtype=np.float64), PLACES),
}
for name, rel in INTER.items():
    print(f"{name:20s} relative interaction |I|: max {rel.max():.1e}, median {np.median(rel):.1e}")
assert INTER["LSA only"].max() < 1e-12  # exactly additive, up to float64 rounding
assert np.median(INTER["LSA + GSA"]) > 1e-4  # GSA couples the quadrants
assert np.median(INTER["LSA only, with PEGs"]) > 1e-6  # so does the PEG (LSA -> PEG -> LSA)

# %% [markdown]
# ### A curriculum
#
# The same argument explains why even the LSA + GSA model learns this task slowly from
# scratch: at initialisation its interaction is tiny, and the shape features it would need
# carry no first-order signal — each mark alone is independent of the label, so the
# gradient does not push the first layers to tell a plus from a cross. Training sits on a
# plateau at 50 %. We therefore train in two phases, the same for every model:
#
# 1. **count the crosses** (0, 1 or 2; three classes): additive over the marks, so any of
#    our models can learn it, and it teaches the patch embedding what the shapes are;
# 2. **same or different**: a fresh two-class head on the phase-1 trunk (the weights move
#    through `state_dict`, all but `head.*`).
#
# We also run phase 2 from scratch on the LSA + GSA model, with the same budget.
#
# Which solution phase 1 lands in, and so how far phase 2 climbs in its four epochs, depends
# on the seed (and even on the last bits of float32 rounding): one seed's LSA + GSA model may
# stop in the high 80s while another reaches 99 %. So every model is trained with three
# seeds, and the claims below are about the median.

# %%
COUNT_EPOCHS, PAIR_EPOCHS = 6, 4


def datasets(arrays, task):
    if task == "count":
        return Dataset(arrays.images, arrays.kinds.sum(axis=1), ["0 crosses", "1 cross", "2 crosses"], "count")
    return Dataset(arrays.images, arrays.labels, ["different", "same"], "long-range")


COUNT = datasets(lr_train, "count"), datasets(lr_test, "count")
PAIR = datasets(lr_train, "pair"), datasets(lr_test, "pair")


SEEDS = (0, 1, 2)
# "learned the task": a median over the seeds above 90 % on the CPU, where the figures in the
# text were measured. On a GPU the float32 sums round differently and each seed's
# run ends elsewhere: through twins-np's CuPy code path the medians were 89 to 100 % (one
# mode's seed fell back to chance in phase 1 and recovered), so there the bar is 85 %: still
# far from chance (50 %) and from the LSA-only model.
LEARNED = 0.9 if DEVICE == "cpu" else 0.85


def curriculum(attention, sr_mode="conv", seed=0):
    """Phase 1 (count, 3 classes), then phase 2 (same/different) on the same trunk; returns both histories and the model."""
    t0 = time.perf_counter()
    tag = f"{attention} {sr_mode} seed {seed}"
    counter = tiny_twins(attention, num_classes=3, sr_mode=sr_mode, seed=seed)
    phase1 = fit(counter, *COUNT, epochs=COUNT_EPOCHS, lr=2e-3, seed=seed, tag=f"{tag} count")
    model = tiny_twins(attention, num_classes=2, sr_mode=sr_mode, seed=seed)
    model.load_state_dict({k: v for k, v in counter.state_dict().items() if not k.startswith("head.")}, strict=False)
    phase2 = fit(model, *PAIR, epochs=PAIR_EPOCHS, lr=1e-3, seed=seed, tag=f"{tag} pair")
    print(f"{tag}: {time.perf_counter() - t0:.1f} s")
    return dict(count=phase1, pair=phase2, model=model, seconds=time.perf_counter() - t0)


def final_acc(runs):
    """Final same/different test accuracy of each seed's run."""
    return [run["pair"][-1]["test_acc"] for run in runs]


RUNS = {"LSA + GSA": [curriculum("lsa+gsa", seed=s) for s in SEEDS], "LSA only": [curriculum("lsa", seed=s) for s in SEEDS]}
t0 = time.perf_counter()
SCRATCH = fit(tiny_twins("lsa+gsa"), *PAIR, epochs=PAIR_EPOCHS, lr=1e-3, tag="scratch pair")
print(f"from scratch: {time.perf_counter() - t0:.1f} s")


# %%
def plot_curriculum(ax, runs, title, scratch=None):
    """Test accuracy per epoch over both phases, one line per seed, one colour per model."""
    for i, (name, seeds) in enumerate(runs.items()):
        for j, run in enumerate(seeds):
            acc = [100 * r["test_acc"] for r in run["count"] + run["pair"]]
            ax.plot(np.arange(1, len(acc) + 1), acc, "o-", ms=3, color=f"C{i}", alpha=0.8,
                    label=f"{name} ({len(seeds)} seeds)" if j == 0 else None)  # fmt: skip
    if scratch is not None:
        x = COUNT_EPOCHS + np.arange(1, len(scratch) + 1)
        ax.plot(x, [100 * r["test_acc"] for r in scratch], "k^--", ms=5, label="LSA + GSA, phase 2 from scratch")
    ax.axvline(COUNT_EPOCHS + 0.5, color="gray", ls="--")
    ax.axhline(50, color="gray", ls=":")
    ax.text(COUNT_EPOCHS / 2 + 0.5, 3, "phase 1: count the crosses", ha="center")
    ax.text(COUNT_EPOCHS + PAIR_EPOCHS / 2 + 0.5, 3, "phase 2: same shape?", ha="center")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", ylim=(0, 102), title=title)
    ax.grid(alpha=0.3)
    # below the axes, in columns: a legend to the right left an empty margin beside the next panel
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)


fig, ax = plt.subplots(figsize=(9, 4.5))
plot_curriculum(ax, RUNS, "Table 8 in miniature: does attention leave the window?", scratch=SCRATCH)
fig.tight_layout()
plt.show()

ACC = {name: float(np.median(final_acc(runs))) for name, runs in RUNS.items()}
for name, runs in RUNS.items():
    for seed, run in zip(SEEDS, runs):
        print(f"{name:10s} seed {seed}: count {100 * run['count'][-1]['test_acc']:5.1f}%   "
              f"same/different {100 * run['pair'][-1]['test_acc']:5.1f}%")  # fmt: skip
    print(f"{name:10s} median same/different {100 * ACC[name]:5.1f}%")
print(f"LSA + GSA from scratch: same/different {100 * SCRATCH[-1]['test_acc']:.1f}%")

# %% [markdown]
# Both models learn to count the crosses — a local, additive task (chance, always answering
# "1 cross", is 50 %). Only the model with GSA learns to compare them; the LSA-only model
# stays at chance, as the interaction argument says it must, and so does the LSA + GSA
# model trained without the curriculum in the same budget. The LSA-only model's logits are
# almost tied, so its accuracy wanders a few points around 50 % from run to run, while its
# test loss sits at $\ln 2 = 0.693$, the cross-entropy of a coin flip. Measured with these
# seeds on the CPU: LSA + GSA 88 to 99 % (median about 95 %) against 51 to 55 % for LSA only.
# (How fast phase 1 takes off also differs from seed to seed; we read nothing into it.)
#
# Which way almost-tied logits tip depends on the last bits of float32 sums, so on a GPU
# (other summation orders) the LSA-only accuracies come out elsewhere around 50 %: run
# through twins-np's CuPy code path they were 66, 50 and 62 % (median 62 %) with the test loss
# still within 0.005 of $\ln 2$ for every seed. The assertions on the LSA-only *accuracy*
# therefore hold for the CPU run only; what stays fixed on every device is its coin-flip
# loss, asserted for every seed, and the LSA + GSA median above `LEARNED`.

# %%
for name, runs in RUNS.items():
    assert all(run["count"][-1]["test_acc"] > 0.7 for run in runs), name  # both can count
assert ACC["LSA + GSA"] > LEARNED  # medians over the seeds
for run in RUNS["LSA only"]:
    assert abs(run["pair"][-1]["test_loss"] - np.log(2)) < 0.005  # a coin flip's cross-entropy, every seed
if DEVICE == "cpu":  # the accuracy of almost-tied logits (see above)
    assert ACC["LSA only"] < 0.65  # chance, give or take the wandering of tied logits
    assert ACC["LSA + GSA"] - ACC["LSA only"] > 0.3
assert SCRATCH[-1]["test_acc"] < 0.65  # the plateau

# the trained LSA-only model is still exactly additive
trained = tiny_twins("lsa", dtype=np.float64)
trained.load_state_dict(RUNS["LSA only"][0]["model"].state_dict())
assert interaction(trained, PLACES).max() < 1e-12

# %% [markdown]
# ## 4. The sub-sampling function (Table 9 in miniature)
#
# GSA summarises each $s \times s$ window into one key/value token. With $C$ channels and
# $N_s$ summary tokens:
#
# | `sr_mode` | function | parameters | multiply-adds |
# |---|---|---|---|
# | `conv` | strided conv, kernel = stride = $s$ (the paper's, timm's) | $s^2C^2 + C$ | $N_s s^2 C^2$ |
# | `sep` | depthwise strided conv, then a pointwise Linear | $s^2C + C + C^2 + C$ | $N_s (s^2 C + C^2)$ |
# | `avg` | average pooling over the window | 0 | 0 (additions only) |
#
# All three are followed by GSA's LayerNorm. We train the two other variants with the same
# curriculum and the same three seeds; the `conv` models are the LSA + GSA models above. The MAC counts come from
# `analysis.count_flops(model, 32)`, without the PEG rows (our models have no PEG).

# %%
SR_RUNS = {"conv": RUNS["LSA + GSA"], **{m: [curriculum("lsa+gsa", m, seed=s) for s in SEEDS] for m in ("avg", "sep")}}


def sr_params(model):
    return sum(int(p.data.size) for name, p in model.named_parameters() if ".attn.sr" in name)


TABLE9 = {}
for mode, runs in SR_RUNS.items():
    model = runs[0]["model"]  # the counts are the same for every seed
    report = analysis.count_flops(model, 32)
    macs = sum(r.macs for r in report.rows if r.kind != "peg")
    sr_macs = sum(r.macs for r in report.rows if r.kind == "sr")
    TABLE9[mode] = dict(params=analysis.count_params(model), sr_params=sr_params(model), macs=macs, sr_macs=sr_macs,
                        acc=float(np.median(final_acc(runs))), seconds=float(np.mean([r["seconds"] for r in runs])))  # fmt: skip

print(f"{'sr_mode':8s} {'params':>8s} {'of which sub-sampling':>22s} {'MACs/image':>11s} {'sub-sampling':>13s} "
      f"{'median acc':>10s} {'time/run':>8s}")  # fmt: skip
for mode, row in TABLE9.items():
    print(f"{mode:8s} {row['params']:>8,d} {row['sr_params']:>22,d} {row['macs']:>11,d} {row['sr_macs']:>13,d} "
          f"{100 * row['acc']:>9.1f}% {row['seconds']:>7.1f}s")  # fmt: skip

fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw=dict(width_ratios=(1.6, 1)))
plot_curriculum(ax_curve, {f"sr_mode = {m}": r for m, r in SR_RUNS.items()}, "GSA's sub-sampling function")
modes = list(TABLE9)
ax_bar.bar(modes, [TABLE9[m]["sr_params"] for m in modes], color=["tab:blue", "tab:orange", "tab:green"])
for i, m in enumerate(modes):
    ax_bar.text(i, TABLE9[m]["sr_params"], f"{100 * TABLE9[m]['acc']:.1f}%", ha="center", va="bottom")
ax_bar.set(ylabel="sub-sampling parameters")
ax_bar.set_title("parameters of the sub-sampling\n(label: median accuracy)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# On this task all three summaries carry enough to compare the two marks: each key covers
# one quadrant, and even the parameter-free average keeps the shape information that phase 1
# put into the channels. On ImageNet the authors found the learned convolution slightly
# ahead of average pooling (Meituan-AutoML/Twins#4); a difference of that size is far below
# what a two-minute run can resolve, so we assert only the robust facts: all three learn the task, and the parameter
# and MAC counts are ordered conv > sep > avg.

# %%
for mode, row in TABLE9.items():
    assert row["acc"] > LEARNED, mode
assert TABLE9["conv"]["sr_params"] > TABLE9["sep"]["sr_params"] > TABLE9["avg"]["sr_params"] == 0
assert TABLE9["conv"]["params"] > TABLE9["sep"]["params"] > TABLE9["avg"]["params"]
assert TABLE9["conv"]["sr_macs"] > TABLE9["sep"]["sr_macs"] > TABLE9["avg"]["sr_macs"] == 0
C, s = TINY["embed_dims"][0], TINY["sr_ratios"][0]  # stage 1: one GSA, s = 4
stage2 = TINY["embed_dims"][1], TINY["sr_ratios"][1]
expected_conv = sum(s_ * s_ * c * c + c for c, s_ in [(C, s), stage2])
expected_sep = sum(s_ * s_ * c + c + c * c + c for c, s_ in [(C, s), stage2])
assert TABLE9["conv"]["sr_params"] == expected_conv and TABLE9["sep"]["sr_params"] == expected_sep

# %%
TOTAL = time.perf_counter() - T_START
ALL_RUNS = {**RUNS, "avg": SR_RUNS["avg"], "sep": SR_RUNS["sep"]}
print(f"notebook ran in {TOTAL:.1f} s (digits {DIGITS_SECONDS:.1f} s; "
      + ", ".join(f"{m} {sum(r['seconds'] for r in runs):.1f} s" for m, runs in ALL_RUNS.items()) + ")")  # fmt: skip
if BLAS_LIMIT is not None:
    BLAS_LIMIT.restore_original_limits()
twins_np.cpu_kernels(KERNELS)

# %% [markdown]
# ## Summary
#
# - A training loop is a dozen lines around `model.loss` and `model.backward_loss`; AdamW,
#   the warm-up + cosine schedule and clipping come from `twins_np.optim`.
# - `twins_svt_teach32` reaches about 90 % on the digits in three epochs on a CPU.
# - Without GSA (and without the PEG), a Twins is a sum of one function per window: it can
#   count marks but cannot compare two marks in different windows, however it is trained.
#   Every second block made global is enough — the point of the paper's Table 8.
# - A label that needs two features at once gives gradient descent nothing to start from; a
#   curriculum that first teaches the features fixes that.
# - GSA's sub-sampling by a strided conv, a separable conv or average pooling all carry the
#   window summaries this task needs; they differ in parameters and MACs (conv > sep > avg).
#
# ## Exercises
#
# 1. Train the digits model for 10 epochs with `twins_np.data.RandomCrop(pad=2)` as the
#    loader's `augment` and label smoothing 0.1 (`model.loss(x, y, 0.1)`). How close do you
#    get to the `twins-np train` default of 95 %?
# 2. Put the PEGs back (`tiny_twins("lsa", peg=True)`) and run the curriculum. What does the
#    LSA-only model reach now, and which path does the information take (notebook 06)?
# 3. Turn the background noise back on (`noise=0.3`, the default). Which phase suffers, and
#    does a longer phase 1 repair it?
# 4. Replace the curriculum's phase 1 by "is the *first* mark a cross?". Can the LSA-only
#    model learn that? (Hint: which tokens can tell the first mark from the second?)
# 5. Use `sr_ratios=(2, 1)` (4 × 4 and 4 × 4 keys) in `TINY`. Does the LSA + GSA model still
#    learn phase 2, and how do the parameter counts of the three sub-sampling modes change?
