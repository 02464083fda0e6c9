"""Draw the figure at the top of README.md and of the documentation's first page.

    python tools/make_readme_figure.py                    # writes docs/_static/lsa_gsa.png
    python tools/make_readme_figure.py --out other.png

Left, three panels: which input tokens reach one output token of an LSA block, a GSA block
and an LSA -> GSA pair (one Twins-SVT stage step) on a 16 x 16 map, read off the gradient
of that token that twins-np's hand-written backward returns (notebook 06 does the same for
more stacks and checks it against the theoretical reachability map). Right: multiply-adds
of two attention layers against the side of the feature map, from twins-np's counter
(twins_np.analysis; notebook 07 matches it with the paper's formula). Everything is
computed here, from a fixed seed, in a few seconds on one CPU core.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from twins_np import analysis, nn  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "_static" / "lsa_gsa.png"

H = W = 16  # token map
C, HEADS = 16, 2
WS = SR = 4  # LSA window, GSA sub-sampling ratio: 16 windows, 16 keys for GSA
TARGET = (6, 5)  # the output token whose receptive field is drawn
STACKS = {
    f"LSA ({WS}x{WS} windows)": ["LSA"],
    f"GSA (sub-sampling {SR})": ["GSA"],
    "LSA then GSA (SVT)": ["LSA", "GSA"],
}


def block(kind: str, rng: np.random.Generator) -> nn.Block:
    if kind == "LSA":
        return nn.Block(C, HEADS, mlp_ratio=2.0, ws=WS, rng=rng, dtype=np.float64)
    return nn.Block(C, HEADS, mlp_ratio=2.0, ws=1, sr_ratio=SR, rng=rng, dtype=np.float64)


def receptive_field(kinds: list[str], seeds: int = 2, batch: int = 2) -> np.ndarray:
    """sum over channels, batch and seeds of |d(g . y_t) / dx|, an (H, W) map: exact zeros are unreachable tokens."""
    t = TARGET[0] * W + TARGET[1]
    field = np.zeros((H, W))
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        stack = nn.Sequential([block(k, rng) for k in kinds])
        y = stack(rng.standard_normal((batch, H * W, C)), (H, W))
        dy = np.zeros_like(y)
        dy[:, t] = rng.standard_normal((batch, C))  # an upstream gradient at the target token only
        field += np.abs(stack.backward(dy)).sum(axis=(0, 2)).reshape(H, W)
    return field


def attention_cost(side: int, kinds: tuple[str, str], k: int = 7, C: int = 64) -> float:
    """Multiply-adds (in G) of two attention layers on a side x side map of C channels; GSA with sr = 1 is full attention."""
    macs = 0
    for kind in kinds:
        if kind == "full":
            macs += analysis.attention_macs("gsa", side, side, C, 1)
        else:
            macs += analysis.attention_macs(kind, side, side, C, k)
    return macs / 1e9


def draw(out: pathlib.Path) -> pathlib.Path:
    fields = {title: receptive_field(kinds) for title, kinds in STACKS.items()}
    # one colour scale for the three panels, set by the other tokens: the target's own gradient
    # (through the residual connection) is far larger and would leave the rest in one colour
    others = np.concatenate([np.delete(f.ravel(), TARGET[0] * W + TARGET[1]) for f in fields.values()])
    lo, hi = np.log10(others[others > 0].min()), np.log10(others.max())
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")

    fig = plt.figure(figsize=(12, 3.3), layout="constrained")
    fig.get_layout_engine().set(wspace=0.08)
    grid = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 1.5])
    for i, (title, field) in enumerate(fields.items()):
        ax = fig.add_subplot(grid[0, i])
        im = ax.imshow(np.ma.log10(np.ma.masked_equal(field, 0.0)), cmap=cmap, vmin=lo, vmax=hi)
        for b in np.arange(WS, H, WS) - 0.5:  # the LSA windows
            ax.axhline(b, color="w", lw=0.7)
            ax.axvline(b, color="w", lw=0.7)
        ax.plot(TARGET[1], TARGET[0], "s", mfc="none", mec="red", ms=7, mew=1.5)
        reach = int((field > 0).sum())
        ax.set_title(f"{title}\n{reach} of {H * W} tokens reach the red one", fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes, shrink=0.8, pad=0.01, label="log10 |gradient| (grey: 0)")

    ax = fig.add_subplot(grid[0, 3])
    sides = np.arange(7, 129, 7)
    for kinds, label, style in (
        (("full", "full"), "full attention, twice", "k-"),
        (("lsa", "gsa"), "LSA + GSA (k = sr = 7)", "C0-"),
        (("lsa", "lsa"), "LSA, twice (local only)", "C1--"),
    ):
        ax.loglog(sides**2, [attention_cost(int(s), kinds) for s in sides], style, label=label)
    ax.axvline(56 * 56, color="0.5", lw=0.8, ls=":")
    ax.text(56 * 56 * 1.1, 2e-3, "stage 1\nat 224²", fontsize=7, color="0.35")
    ax.set_xlabel("tokens H x W (C = 64)")
    ax.set_ylabel("multiply-adds (G)")
    ax.set_title("Cost of two attention layers", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(True, which="major", lw=0.3)
    fig.suptitle("Twins' two attentions, computed by twins-np: what one token sees (left) and what it costs (right)", fontsize=10)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, metadata={"Software": None})  # no version stamp: the bytes depend on the drawing only
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help=f"the PNG to write (default {OUT.relative_to(ROOT)})")
    path = draw(parser.parse_args(argv).out)
    print(f"{path}: {path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
