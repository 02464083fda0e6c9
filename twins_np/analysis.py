"""Parameter and multiply-add counts for Twins, computed from the structure alone.

Nothing here runs a forward pass or needs weights: :func:`count_flops` and
:func:`count_params_from_config` work from a model name or config dict (so the 100M-parameter
SVT-L costs nothing to analyse), and from a built :class:`~twins_np.models.Twins` they walk its
modules (``patch_embeds``, ``blocks``, ``pos_block``, ``head``).

Counting convention: **one multiply-add (MAC) counts as one FLOP**, as fvcore and the Twins
paper do. Counted: every Linear (``N_in * C_in * C_out``), every convolution (output positions
times ``C_out * C_in/groups * k^2``) and, unless ``include_attention=False``, the two attention
products ``q @ k^T`` and ``attn @ v``. **Not counted:** LayerNorm, softmax, GELU, the attention
scale, bias adds, residual adds, the global average pool (and, for dense heads, GroupNorm,
BatchNorm and ReLU). The official README's FLOPs leave out
the attention products too (its counter hooked modules only), which is what
``include_attention=False`` reproduces.

Notation, per stage: token grid H x W, N = H*W tokens, C channels, MLP hidden h = int(r*C).

- LSA (window ws): ``3*Np*C^2`` (qkv on the zero-padded grid, Np = ceil(H/ws)*ws * ceil(W/ws)*ws)
  + ``2*Np*ws^2*C`` (q k^T and attn v inside every window) + ``N*C^2`` (proj) + ``2*N*C*h`` (MLP).
- GSA (sub-sampling sr): ``N*C^2`` (q) + ``Ns*sr^2*C^2`` (sr conv, only when sr > 1)
  + ``2*Ns*C^2`` (kv) + ``2*N*Ns*C`` (q k^T and attn v) + ``N*C^2`` (proj) + ``2*N*C*h`` (MLP),
  with Ns = floor(H/sr)*floor(W/sr), or N when sr = 1.
- Per stage: PatchEmbed ``N*C*C_in*p^2`` (p = 4 for stage 1, then 2; the conv floors, or,
  with mmsegmentation's ``patch_padding="corner"``, covers the zero-padded map: ceil) and
  PEG ``9*N*C``. Once: head ``C_last * num_classes``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .models import (
    FPN,
    MODEL_CONFIGS,
    PPM,
    SEGMENTER_CONFIGS,
    FCNHead,
    FPNHead,
    Segmenter,
    Twins,
    TwinsFeatures,
    UPerHead,
    create_segmenter,
    list_models,
)
from .nn import (
    BatchNorm2d,
    Block,
    Conv2d,
    ConvModule,
    GlobalSubSampleAttn,
    GroupNorm,
    LayerNorm,
    Linear,
    LocallyGroupedAttn,
    Mlp,
    Module,
    PatchEmbed,
    PosConv,
    ReLU,
    Upsample,
)

__all__ = [
    "FlopReport",
    "FlopRow",
    "GROUPS",
    "attention_macs",
    "attention_terms",
    "count_flops",
    "count_params",
    "count_params_from_config",
    "level_sizes",
    "module_flops",
    "params_by_module",
]

# The spec's breakdown columns: group name -> row kinds it sums. "norm" rows (0 MACs) belong to none.
GROUPS: dict[str, tuple[str, ...]] = {
    "mlp": ("mlp",),
    "qkv/q/kv/proj": ("qkv", "q", "kv", "proj"),
    "sr conv": ("sr",),
    "attention matmuls": ("attn",),
    "patch embed": ("patch_embed",),
    "PEG + head": ("peg", "head"),
}


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------
def count_params(model: Module) -> int:
    """Number of scalar parameters of any :class:`twins_np.nn.Module` (a Twins included)."""
    return sum(int(p.data.size) for p in model.parameters())


def params_by_module(model: Module, depth: int = 1) -> dict[str, int]:
    """Parameter counts grouped by the first ``depth`` parts of the parameter names.

    Example: ``depth=1`` gives ``{"patch_embeds": ..., "blocks": ..., "pos_block": ...,
    "norm": ..., "head": ...}``; ``depth=2`` splits ``blocks`` into ``blocks.0`` ... per stage.
    The values sum to :func:`count_params`. Insertion order follows ``named_parameters``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:depth])
        out[key] = out.get(key, 0) + int(p.data.size)
    return out


def count_params_from_config(config: str | Mapping[str, Any]) -> int:
    """Exact parameter count of a named model or config dict, without building it.

    The closed form of TWINS_SPEC.md section 2, summed over stages (C channels, h = int(r*C)):

    - PatchEmbed: ``p^2*C_in*C + C`` (conv) ``+ 2C`` (LayerNorm)
    - LSA block: ``4C`` (two LayerNorms) ``+ 3C^2 + 3C`` (qkv) ``+ C^2 + C`` (proj) + MLP
    - GSA block: ``4C + C^2 + C`` (q) ``+ 2C^2 + 2C`` (kv) ``+ C^2 + C`` (proj) + MLP,
      plus ``sr^2*C^2 + C + 2C`` (sr conv and its LayerNorm) when sr > 1
    - MLP: ``2*C*h + h + C``;  PEG: ``9C + C``;  final LayerNorm ``2C``;  head ``C*K + K``.

    Args:
        config: a name from :func:`twins_np.models.list_models` or a dict of Twins keyword
            arguments (missing keys take Twins' defaults).
    """
    return _structure_from_config(_full_config(config)).params()


# ---------------------------------------------------------------------------------------------
# structure: what count_flops needs to know about a model, from a config or from modules
# ---------------------------------------------------------------------------------------------
def _subsample_params(mode: str, sr: int, C: int) -> int:
    """Parameters of GSA's sub-sampling function (see twins_np.functional.subsample)."""
    return {"conv": sr * sr * C * C + C, "avg": 0, "sep": sr * sr * C + C + C * C + C}[mode]


def _subsample_macs(mode: str, sr: int, C: int, Ns: int) -> int:
    """Multiply-adds per image of the sub-sampling: pooling counts none (it only adds)."""
    return {"conv": Ns * C * C * sr * sr, "avg": 0, "sep": Ns * (C * sr * sr + C * C)}[mode]


@dataclass(frozen=True)
class _BlockSpec:
    kind: Literal["lsa", "gsa"]
    dim: int
    heads: int
    ws: int  # LSA window (0 for GSA)
    sr: int  # GSA sub-sampling ratio (0 for LSA)
    hidden: int  # MLP hidden width
    sr_mode: str = "conv"  # GSA sub-sampling function: conv (timm), avg or sep

    def params(self) -> int:
        C, h = self.dim, self.hidden
        n = 4 * C + (2 * C * h + h + C)  # norm1 + norm2, MLP
        if self.kind == "lsa":
            return n + (3 * C * C + 3 * C) + (C * C + C)
        n += (C * C + C) + (2 * C * C + 2 * C) + (C * C + C)
        if self.sr > 1:
            n += _subsample_params(self.sr_mode, self.sr, C) + 2 * C  # + the LayerNorm
        return n


@dataclass(frozen=True)
class _StageSpec:
    patch: int
    in_chans: int
    dim: int
    blocks: tuple[_BlockSpec, ...]
    ceil: bool = False  # mmsegmentation's corner padding: ceil(H / p) tokens instead of floor
    stage_norm: bool = False  # mmsegmentation's SVT: a LayerNorm after the stage

    def params(self) -> int:
        C = self.dim
        embed = self.patch**2 * self.in_chans * C + 3 * C
        return embed + sum(b.params() for b in self.blocks) + 10 * C + (2 * C if self.stage_norm else 0)


@dataclass(frozen=True)
class _Structure:
    stages: tuple[_StageSpec, ...]
    num_classes: int
    global_pool: str
    img_size: tuple[int, int]

    def params(self) -> int:
        C = self.stages[-1].dim
        return sum(s.params() for s in self.stages) + 2 * C + C * self.num_classes + self.num_classes


def _twins_defaults() -> dict[str, Any]:
    sig = inspect.signature(Twins.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self" and p.default is not inspect.Parameter.empty}


def _full_config(config: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, str):
        if config not in MODEL_CONFIGS:
            raise ValueError(f"unknown model {config!r}; choose one of {', '.join(list_models())}")
        config = MODEL_CONFIGS[config]
    return {**_twins_defaults(), **dict(config)}


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (int(h), int(w))


def _structure_from_config(cfg: Mapping[str, Any]) -> _Structure:
    depths = tuple(cfg["depths"])
    S = len(depths)
    for key in ("embed_dims", "num_heads", "mlp_ratios", "sr_ratios"):
        if len(cfg[key]) != S:
            raise ValueError(f"{key} has {len(cfg[key])} entries but depths has {S} stages")
    wss = cfg["wss"]
    stages = []
    prev, p = int(cfg["in_chans"]), int(cfg["patch_size"])
    for s in range(S):
        C = int(cfg["embed_dims"][s])
        hidden = int(C * cfg["mlp_ratios"][s])  # timm's Block: hidden_features = int(dim * mlp_ratio)
        blocks = []
        for i in range(depths[s]):
            ws = 1 if wss is None or i % 2 == 1 else int(wss[s])  # ws = 1 selects GSA, as in timm
            if ws == 1:
                blocks.append(
                    _BlockSpec(
                        "gsa", C, int(cfg["num_heads"][s]), 0, int(cfg["sr_ratios"][s]), hidden, cfg.get("sr_mode", "conv")
                    )
                )
            else:
                blocks.append(_BlockSpec("lsa", C, int(cfg["num_heads"][s]), ws, 0, hidden))
        ceil, norm = cfg.get("patch_padding", "floor") == "corner", bool(cfg.get("norm_after_stage", False))
        stages.append(_StageSpec(p, prev, C, tuple(blocks), ceil, norm))
        prev, p = C, 2
    return _Structure(tuple(stages), int(cfg["num_classes"]), str(cfg["global_pool"]), _pair(cfg["img_size"]))


def _attn_block_spec(attn: Module, hidden: int) -> _BlockSpec:
    if isinstance(attn, LocallyGroupedAttn):
        return _BlockSpec("lsa", attn.dim, attn.num_heads, attn.ws, 0, hidden)
    if isinstance(attn, GlobalSubSampleAttn):
        return _BlockSpec("gsa", attn.dim, attn.num_heads, 0, attn.sr_ratio, hidden, attn.sr_mode)
    raise TypeError(f"unexpected attention module {type(attn).__name__}")


def _block_spec(blk: Block) -> _BlockSpec:
    return _attn_block_spec(blk.attn, blk.mlp.fc1.out_features)


def _structure_from_model(model: Twins) -> _Structure:
    """Walk a built Twins: patch_embeds, blocks (LSA or GSA), pos_block, head."""
    stages = []
    for s, embed in enumerate(model.patch_embeds):
        C, cin, p, _ = embed.proj.weight.shape
        blocks = [_block_spec(blk) for blk in model.blocks[s]]
        stages.append(_StageSpec(int(p), int(cin), int(C), tuple(blocks), embed.padding == "corner", model.norm_list is not None))
    num_classes = model.head.out_features if isinstance(model.head, Linear) else 0
    img_size: Any = model.config.get("img_size", 224)
    return _Structure(tuple(stages), num_classes, model.global_pool, _pair(img_size))


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlopRow:
    """One computing layer of the model.

    Attributes:
        name: the module's state_dict prefix (``blocks.0.0.attn.qkv``); the attention
            products, done by the attention module itself, are ``blocks.s.i.attn.matmul``.
        kind: ``patch_embed``, ``norm``, ``qkv``, ``q``, ``kv``, ``sr``, ``attn`` (the two
            attention products), ``proj``, ``mlp``, ``peg`` or ``head``.
        output_shape: the layer's output; ``attn`` rows give the attention map,
            (B, windows, heads, ws^2, ws^2) for LSA and (B, heads, N, Ns) for GSA.
        params: parameters owned by the layer.
        macs: multiply-adds for the whole batch.
        share: macs / the report's total (filled by :class:`FlopReport`).
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    share: float = 0.0


def _attn_rows(prefix: str, b: _BlockSpec, H: int, W: int, B: int, include_attention: bool) -> Iterator[FlopRow]:
    """Rows of one LSA or GSA layer on an H x W token grid (``prefix`` = ``blocks.s.i.attn``)."""
    C, N = b.dim, H * W
    if b.kind == "lsa":
        ws = b.ws
        Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
        Np = Hp * Wp  # the zero-padded tokens go through qkv and attention like real ones
        nw = Np // (ws * ws)
        yield FlopRow(f"{prefix}.qkv", "qkv", (B, Np, 3 * C), 3 * C * C + 3 * C, B * Np * C * 3 * C)
        mm = 2 * Np * ws * ws * C if include_attention else 0
        yield FlopRow(f"{prefix}.matmul", "attn", (B, nw, b.heads, ws * ws, ws * ws), 0, B * mm)
    else:
        sr = b.sr
        yield FlopRow(f"{prefix}.q", "q", (B, N, C), C * C + C, B * N * C * C)
        Ns = N
        if sr > 1:
            if H < sr or W < sr:
                raise ValueError(
                    f"{prefix}: a {H}x{W} token grid is smaller than the GSA sub-sampling ratio sr={sr}: "
                    "the sr convolution has no output (timm raises here too); use a larger input"
                )
            Hs, Ws = H // sr, W // sr  # the conv floors
            Ns = Hs * Ws
            yield FlopRow(
                f"{prefix}.sr",
                "sr",
                (B, C, Hs, Ws),
                _subsample_params(b.sr_mode, sr, C),
                B * _subsample_macs(b.sr_mode, sr, C, Ns),
            )
            yield FlopRow(f"{prefix}.norm", "norm", (B, Ns, C), 2 * C, 0)
        yield FlopRow(f"{prefix}.kv", "kv", (B, Ns, 2 * C), 2 * C * C + 2 * C, B * Ns * C * 2 * C)
        mm = 2 * N * Ns * C if include_attention else 0
        yield FlopRow(f"{prefix}.matmul", "attn", (B, b.heads, N, Ns), 0, B * mm)
    yield FlopRow(f"{prefix}.proj", "proj", (B, N, C), C * C + C, B * N * C * C)


def _mlp_rows(prefix: str, C: int, h: int, N: int, B: int) -> Iterator[FlopRow]:
    yield FlopRow(f"{prefix}.fc1", "mlp", (B, N, h), C * h + h, B * N * C * h)
    yield FlopRow(f"{prefix}.fc2", "mlp", (B, N, C), h * C + C, B * N * h * C)


def _block_rows(prefix: str, b: _BlockSpec, H: int, W: int, B: int, include_attention: bool) -> Iterator[FlopRow]:
    C, N = b.dim, H * W
    yield FlopRow(f"{prefix}.norm1", "norm", (B, N, C), 2 * C, 0)
    yield from _attn_rows(f"{prefix}.attn", b, H, W, B, include_attention)
    yield FlopRow(f"{prefix}.norm2", "norm", (B, N, C), 2 * C, 0)
    yield from _mlp_rows(f"{prefix}.mlp", C, b.hidden, N, B)


def _patch_embed_rows(prefix: str, st: _StageSpec, Hin: int, Win: int, B: int) -> tuple[list[FlopRow], int, int]:
    p, C = st.patch, st.dim
    if st.ceil:  # zero rows and columns pad the map to a multiple of p first
        H, W = -(-Hin // p), -(-Win // p)
    else:
        if Hin < p or Win < p:
            raise ValueError(f"{prefix}: a {Hin}x{Win} map is smaller than the patch size {p}; use a larger input")
        H, W = Hin // p, Win // p  # the conv floors: pixels that do not fill a patch are dropped
    N = H * W
    rows = [
        FlopRow(f"{prefix}.proj", "patch_embed", (B, C, H, W), p * p * st.in_chans * C + C, B * N * C * st.in_chans * p * p),
        FlopRow(f"{prefix}.norm", "norm", (B, N, C), 2 * C, 0),
    ]
    return rows, H, W


def _peg_row(s: int, C: int, H: int, W: int, B: int, runs: bool) -> FlopRow:
    # depthwise 3x3: 9 MACs per output element; it only runs when the stage has a block 0
    return FlopRow(f"pos_block.{s}.proj.0", "peg", (B, C, H, W), 10 * C, B * 9 * H * W * C if runs else 0)


def _model_rows(st: _Structure, H0: int, W0: int, B: int, include_attention: bool) -> list[FlopRow]:
    rows: list[FlopRow] = []
    Hin, Win = H0, W0
    H = W = 0
    for s, stage in enumerate(st.stages):
        embed, H, W = _patch_embed_rows(f"patch_embeds.{s}", stage, Hin, Win, B)
        rows += embed
        for i, b in enumerate(stage.blocks):
            rows += _block_rows(f"blocks.{s}.{i}", b, H, W, B, include_attention)
            if i == 0:
                rows.append(_peg_row(s, stage.dim, H, W, B, True))  # the PEG follows block 0
        if not stage.blocks:
            rows.append(_peg_row(s, stage.dim, H, W, B, False))
        if stage.stage_norm:
            rows.append(FlopRow(f"norm_list.{s}", "norm", (B, H * W, stage.dim), 2 * stage.dim, 0))
        Hin, Win = H, W
    C, N = st.stages[-1].dim, H * W
    rows.append(FlopRow("norm", "norm", (B, N, C), 2 * C, 0))
    if st.num_classes > 0:
        K = st.num_classes
        # with global_pool="" the head is applied to every token
        n_head = 1 if st.global_pool == "avg" else N
        shape = (B, K) if st.global_pool == "avg" else (B, N, K)
        rows.append(FlopRow("head", "head", shape, C * K + K, B * n_head * C * K))
    return rows


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def _fmt_macs(n: float) -> str:
    """``2927353344 -> "2.927 G"``, ``98304 -> "98.304 K"``, ``0 -> "0"``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n:.0f}"


@dataclass
class FlopReport:
    """Per-layer multiply-adds of one model at one input size.

    Attributes:
        model: the model's name (or ``"Twins"`` / ``"config"``).
        input_size: (H, W) of the input image.
        batch_size: B; every MAC count is for the whole batch.
        include_attention: whether the q k^T and attn v products are counted.
        rows: one :class:`FlopRow` per computing layer, in execution order.

    ``total`` is the sum of the rows' MACs (an int), ``params`` the sum of their parameters
    (the model's full count).
    """

    model: str
    input_size: tuple[int, int]
    batch_size: int
    include_attention: bool
    rows: list[FlopRow]

    def __post_init__(self) -> None:
        total = self.total
        self.rows = [dataclasses.replace(r, share=r.macs / total if total else 0.0) for r in self.rows]

    @property
    def total(self) -> int:
        """Multiply-adds of the whole forward pass (excluding what the module doc lists)."""
        return sum(r.macs for r in self.rows)

    @property
    def gmacs(self) -> float:
        """``total`` in G = 1e9 multiply-adds."""
        return self.total / 1e9

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    def by_kind(self) -> dict[str, int]:
        """MACs summed per row kind (``qkv``, ``mlp``, ``attn``, ...), in first-seen order."""
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.kind] = out.get(r.kind, 0) + r.macs
        return out

    def groups(self) -> dict[str, int]:
        """MACs per breakdown group of :data:`GROUPS` (the spec's table); sums to ``total``."""
        kinds = self.by_kind()
        out = {g: sum(kinds.get(k, 0) for k in ks) for g, ks in GROUPS.items()}
        if "conv" in kinds:  # a segmenter: the neck's and head's convolutions
            out["FPN convs"] = kinds["conv"]
        return out

    def aggregate(self, depth: int) -> list[FlopRow]:
        """Rows merged by the first ``depth`` parts of their names.

        Indices count as parts: ``depth=4`` gives one row per ``blocks.s.i.attn`` /
        ``blocks.s.i.mlp``, ``depth=3`` one per block (``blocks.s.i``), ``depth=2`` one per
        stage (``blocks.s``), ``depth=1`` one per top-level module. A merged row's kind joins its
        parts' kinds (``q+sr+kv+attn+proj``), its output shape is its last part's.
        """
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        merged: dict[str, list[FlopRow]] = {}
        for r in self.rows:
            merged.setdefault(".".join(r.name.split(".")[:depth]), []).append(r)
        total = self.total
        out = []
        for name, parts in merged.items():
            kinds = list(dict.fromkeys(p.kind for p in parts if p.kind != "norm")) or ["norm"]
            macs = sum(p.macs for p in parts)
            out.append(
                FlopRow(
                    name,
                    "+".join(kinds),
                    parts[-1].output_shape,
                    sum(p.params for p in parts),
                    macs,
                    macs / total if total else 0.0,
                )
            )
        return out

    def table(self, depth: int | None = None, skip_zero: bool = False) -> str:
        """An aligned text table: layer, kind, output shape, params, MACs, share of the total.

        Args:
            depth: merge rows by name prefix (see :meth:`aggregate`); None shows every layer.
            skip_zero: hide rows with 0 MACs (the LayerNorms); the totals still include them.
        """
        rows = self.rows if depth is None else self.aggregate(depth)
        if skip_zero:
            rows = [r for r in rows if r.macs]
        cells = [
            (r.name, r.kind, "x".join(map(str, r.output_shape)), f"{r.params:,}", _fmt_macs(r.macs), f"{100 * r.share:.2f}%")
            for r in rows
        ]
        head = ("layer", "kind", "output", "params", "MACs", "share")
        foot = ("total", "", "", f"{self.params:,}", _fmt_macs(self.total), "100.00%")
        widths = [max(len(c[j]) for c in [head, foot, *cells]) for j in range(6)]

        def line(c: tuple[str, ...]) -> str:
            left = "  ".join(c[j].ljust(widths[j]) for j in range(3))
            return left + "  " + "  ".join(c[j].rjust(widths[j]) for j in range(3, 6))

        rule = "-" * len(line(head))
        return "\n".join([line(head), rule, *(line(c) for c in cells), rule, line(foot)])

    def summary(self) -> str:
        """The header, the per-group breakdown and the totals, as text."""
        H, W = self.input_size
        attn = "included" if self.include_attention else "left out"
        lines = [
            f"{self.model} at {H}x{W}, batch {self.batch_size}; attention products {attn}; 1 MAC = 1 FLOP",
            "breakdown (MACs): " + ", ".join(f"{g} {_fmt_macs(m)}" for g, m in self.groups().items()),
            f"total: {self.gmacs:.3f} G MACs ({self.total:,} multiply-adds)",
            f"params: {self.params:,}",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table() + "\n" + self.summary()


def count_flops(
    model_or_name: Any,
    input_size: int | tuple[int, int] | None = (224, 224),
    batch_size: int = 1,
    include_attention: bool = True,
    in_chans: int | None = None,
) -> FlopReport:
    """Multiply-adds of a Twins forward pass, per layer, from its structure.

    Args:
        model_or_name: a name from :func:`twins_np.models.list_models`, a config dict of
            Twins keyword arguments, or a built :class:`~twins_np.models.Twins` (whose
            modules are walked; no forward is run and no weights are read).
        input_size: image (H, W) or one int for a square; ``None`` takes the model's
            ``img_size`` (224 for the paper's models, 32 or 64 for the teaching configs).
            Any size works as long as every stage map covers its patch and sr ratio
            (32 x 32 and up for the paper's models); stage sizes floor as the model's do.
        batch_size: B; all MACs scale with it.
        include_attention: count the q k^T and attn v products (the paper's numbers);
            False gives the official README's numbers.
        in_chans: image channels, overriding the config's (names and dicts only; a built
            model must be given its own ``in_chans``).

    Returns:
        A :class:`FlopReport`; ``.total`` is the MAC count, ``.table()`` the per-layer table.

    Raises:
        ValueError: unknown name, or an input too small for a patch or an sr convolution.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(model_or_name, str) and model_or_name in SEGMENTER_CONFIGS:
        if in_chans not in (None, 3):
            raise ValueError(f"a segmenter takes 3 input channels, not in_chans={in_chans}")
        report = _segmenter_flops(create_segmenter(model_or_name), input_size, batch_size, include_attention)
        return dataclasses.replace(report, model=model_or_name)
    if isinstance(model_or_name, Segmenter):
        return _segmenter_flops(model_or_name, input_size, batch_size, include_attention)
    if isinstance(model_or_name, Twins):
        if in_chans is not None and in_chans != model_or_name.in_chans:
            raise ValueError(f"this model takes {model_or_name.in_chans} input channels, not in_chans={in_chans}")
        st, name = _structure_from_model(model_or_name), "Twins"
    elif isinstance(model_or_name, str | Mapping):
        cfg = _full_config(model_or_name)
        if in_chans is not None:
            cfg["in_chans"] = in_chans
        st, name = _structure_from_config(cfg), model_or_name if isinstance(model_or_name, str) else "config"
    else:
        raise TypeError(f"count_flops takes a Twins model, a model name or a config dict, got {type(model_or_name).__name__}")
    H0, W0 = st.img_size if input_size is None else _pair(input_size)
    rows = _model_rows(st, H0, W0, batch_size, include_attention)
    return FlopReport(name, (H0, W0), batch_size, include_attention, rows)


def _segmenter_flops(seg: Segmenter, input_size: Any, B: int, include_attention: bool) -> FlopReport:
    """Backbone rows (prefixed ``backbone.``) from its modules, then the neck's and the head's.

    The neck and head convolutions count ``H_o W_o C_out C_in k^2`` each; norms, ReLU, the
    resizes and the sums count 0, as LayerNorm, GELU and residual adds do in the backbone.
    """
    H0, W0 = (seg.crop_size, seg.crop_size) if input_size is None else _pair(input_size)
    backbone = count_flops(seg.backbone, (H0, W0), B, include_attention)
    # the pruned backbone has no final norm (and no head): drop the norm row count_flops adds
    rows = [dataclasses.replace(r, name=f"backbone.{r.name}") for r in backbone.rows if r.name != "norm"]
    if isinstance(seg.backbone.norm, LayerNorm):
        rows += [dataclasses.replace(r, name=f"backbone.{r.name}") for r in backbone.rows if r.name == "norm"]
    sizes = level_sizes(seg.backbone, H0, W0)
    for prefix, part in (("neck", seg.neck), ("decode_head", seg.decode_head)):
        if part is None:  # UPerNet has no neck
            continue
        walker = _DENSE_WALKERS.get(type(part))
        if walker is None:
            raise TypeError(f"count_flops does not know the segmenter part {prefix} ({type(part).__name__})")
        rows += walker(prefix, part, B, sizes)
    if seg.auxiliary_head is not None:
        # the auxiliary head runs in training only: its parameters are counted, its MACs are not
        aux = _fcn_head_rows("auxiliary_head", seg.auxiliary_head, B, [sizes[seg.aux_in_index]])
        rows += [dataclasses.replace(r, kind="aux (training only)", macs=0) for r in aux]
    return FlopReport("Segmenter", (H0, W0), B, include_attention, rows)


def level_sizes(backbone: Twins, H: int, W: int) -> list[tuple[int, int]]:
    """(H_s, W_s) of each stage map of ``backbone`` for an H x W image (the patch embeddings floor,
    or, with mmsegmentation's corner padding, round up)."""
    sizes = []
    for embed in backbone.patch_embeds:
        p = int(embed.proj.weight.shape[-1])
        H, W = (-(-H // p), -(-W // p)) if embed.padding == "corner" else (H // p, W // p)
        sizes.append((H, W))
    return sizes


def _conv_rows(prefix: str, m: Conv2d | ConvModule, B: int, H: int, W: int) -> list[FlopRow]:
    """A conv (or ConvModule: conv, then norm and ReLU, which count 0) on an H x W map."""
    conv = m.conv if isinstance(m, ConvModule) else m
    name = f"{prefix}.conv" if isinstance(m, ConvModule) else prefix
    c_out, _, k, _ = conv.weight.shape
    Ho = (H + 2 * conv.padding - k) // conv.stride + 1
    Wo = (W + 2 * conv.padding - k) // conv.stride + 1
    rows = [FlopRow(name, "conv", (B, int(c_out), Ho, Wo), count_params(conv), _conv2d_macs(conv, H, W, B))]
    if isinstance(m, ConvModule) and m.norm is not None:
        rows.append(FlopRow(f"{prefix}.{m.norm_name}", "norm", (B, int(c_out), Ho, Wo), count_params(m.norm), 0))
    return rows


def _fpn_rows(prefix: str, neck: FPN, B: int, sizes: list[tuple[int, int]]) -> list[FlopRow]:
    """The FPN neck: a 1x1 lateral conv per level, then a 3x3 conv per level (the top-down sums count 0)."""
    rows: list[FlopRow] = []
    for s, (H, W) in enumerate(sizes):
        rows += _conv_rows(f"{prefix}.lateral_convs.{s}", neck.lateral_convs[s], B, H, W)
    for s, (H, W) in enumerate(sizes):
        rows += _conv_rows(f"{prefix}.fpn_convs.{s}", neck.fpn_convs[s], B, H, W)
    return rows


def _fpn_head_rows(prefix: str, head: FPNHead, B: int, sizes: list[tuple[int, int]]) -> list[FlopRow]:
    """The Semantic FPN head: each scale head's convs (its 2x upsamplings count 0), then the classifier."""
    rows: list[FlopRow] = []
    for s, (H, W) in enumerate(sizes):
        for j, m in enumerate(head.scale_heads[s]):
            if isinstance(m, ConvModule):
                rows += _conv_rows(f"{prefix}.scale_heads.{s}.{j}", m, B, H, W)
            elif isinstance(m, Upsample):  # FPNHead's 2x: no parameters, its weighted sums are not counted
                H, W = 2 * H, 2 * W
    H0, W0 = sizes[0]
    rows += _conv_rows(f"{prefix}.conv_seg", head.conv_seg, B, H0, W0)
    return rows


def _ppm_rows(prefix: str, ppm: PPM, B: int, H: int, W: int) -> list[FlopRow]:
    """The pyramid pooling module: each branch's 1x1 ConvModule on its pooled map (pooling and resizes count 0)."""
    rows: list[FlopRow] = []
    for i, (branch, p) in enumerate(zip(ppm, ppm.pool_scales)):
        rows += _conv_rows(f"{prefix}.{i}.1", branch[1], B, p, p)
    return rows


def _uper_head_rows(prefix: str, head: UPerHead, B: int, sizes: list[tuple[int, int]]) -> list[FlopRow]:
    """UPerHead: PPM and bottleneck on the last level, laterals and fpn convs, fpn_bottleneck and the
    classifier at level 0 (the resizes, sums and concatenations count 0)."""
    (H0, W0), (Hl, Wl) = sizes[0], sizes[-1]
    rows = _ppm_rows(f"{prefix}.psp_modules", head.psp_modules, B, Hl, Wl)
    rows += _conv_rows(f"{prefix}.bottleneck", head.bottleneck, B, Hl, Wl)
    for s, (H, W) in enumerate(sizes[:-1]):
        rows += _conv_rows(f"{prefix}.lateral_convs.{s}", head.lateral_convs[s], B, H, W)
    for s, (H, W) in enumerate(sizes[:-1]):
        rows += _conv_rows(f"{prefix}.fpn_convs.{s}", head.fpn_convs[s], B, H, W)
    rows += _conv_rows(f"{prefix}.fpn_bottleneck", head.fpn_bottleneck, B, H0, W0)
    rows += _conv_rows(f"{prefix}.conv_seg", head.conv_seg, B, H0, W0)
    return rows


def _fcn_head_rows(prefix: str, head: FCNHead, B: int, sizes: list[tuple[int, int]]) -> list[FlopRow]:
    """FCNHead on its one level: its convs, conv_cat when it concatenates, the classifier."""
    (H, W) = sizes[0]
    rows: list[FlopRow] = []
    for j, m in enumerate(head.convs):
        rows += _conv_rows(f"{prefix}.convs.{j}", m, B, H, W)
    if head.conv_cat is not None:
        rows += _conv_rows(f"{prefix}.conv_cat", head.conv_cat, B, H, W)
    rows += _conv_rows(f"{prefix}.conv_seg", head.conv_seg, B, H, W)
    return rows


# How count_flops walks each kind of segmenter neck and head: (prefix, module, B, level sizes) -> rows.
# A new head adds its walker here; the model files hold no counting code.
_DENSE_WALKERS: dict[type, Any] = {FPN: _fpn_rows, FPNHead: _fpn_head_rows, UPerHead: _uper_head_rows, FCNHead: _fcn_head_rows}


# ---------------------------------------------------------------------------------------------
# single layers (for complexity plots)
# ---------------------------------------------------------------------------------------------
def _attn_spec(kind: str, C: int, ws_or_sr: int) -> _BlockSpec:
    k = kind.lower()
    if k == "lsa":
        if ws_or_sr < 2:
            raise ValueError(f"an LSA window must be >= 2, got ws={ws_or_sr}")
        return _BlockSpec("lsa", C, 1, ws_or_sr, 0, 0)
    if k == "gsa":
        if ws_or_sr < 1:
            raise ValueError(f"a GSA sub-sampling ratio must be >= 1, got sr={ws_or_sr}")
        return _BlockSpec("gsa", C, 1, 0, ws_or_sr, 0)
    raise ValueError(f"kind must be 'lsa' or 'gsa', got {kind!r}")


def attention_terms(kind: str, H: int, W: int, C: int, ws_or_sr: int) -> dict[str, int]:
    """MACs of one LSA or GSA layer (no MLP) on an H x W grid of C channels, per term, for B = 1.

    Keys: LSA ``qkv``, ``attn``, ``proj``; GSA ``q``, ``sr`` (sr > 1 only), ``kv``, ``attn``,
    ``proj``. ``attn`` is the q k^T plus attn v products. Head count does not change MACs.
    """
    out: dict[str, int] = {}
    for r in _attn_rows("attn", _attn_spec(kind, C, ws_or_sr), H, W, 1, True):
        if r.kind != "norm":
            out[r.kind] = r.macs
    return out


def attention_macs(kind: str, H: int, W: int, C: int, ws_or_sr: int, include_attention: bool = True) -> int:
    """Total MACs of one LSA (``ws_or_sr`` = window) or GSA (= sr) layer, for B = 1.

    Example: at 224 every SVT-S layer's attention products cost ``2*N*49*C`` since ws^2 = 49
    and Ns = 49 in every stage: ``attention_terms("lsa", 56, 56, 64, 7)["attn"] ==
    attention_terms("gsa", 56, 56, 64, 8)["attn"]``.
    """
    terms = attention_terms(kind, H, W, C, ws_or_sr)
    return sum(m for k, m in terms.items() if include_attention or k != "attn")


def module_flops(module: Module, size: int | tuple[int, int], batch_size: int = 1, include_attention: bool = True) -> int:
    """MACs of one built twins-np module.

    Args:
        module: a Twins, a TwinsFeatures backbone (its pruned Twins), PatchEmbed, Block,
            LocallyGroupedAttn, GlobalSubSampleAttn, Mlp, PosConv, Linear, LayerNorm, or a
            dense-head layer: Conv2d, ReLU, GroupNorm, BatchNorm2d.
        size: the (H, W) the module sees: the image (or feature map) for Twins, PatchEmbed
            and the dense-head layers, the token grid for the others (Linear/Mlp/LayerNorm
            act on H*W tokens). A Conv2d counts ``B*Ho*Wo*C_out*(C_in/groups)*k^2`` with
            Ho = (H + 2 padding - k) // stride + 1, as PyTorch's flop counter (which
            reports 2 FLOPs per MAC); the norms and ReLU count 0, like LayerNorm.
        batch_size: B.
        include_attention: count the attention products of LSA/GSA.
    """
    H, W = _pair(size)
    B = batch_size
    if isinstance(module, TwinsFeatures):
        module = module.model  # the stages it keeps; the pruned norm and head cost nothing
    if isinstance(module, Twins):
        return count_flops(module, (H, W), B, include_attention).total
    rows: list[FlopRow]
    if isinstance(module, PatchEmbed):
        C, cin, p, _ = module.proj.weight.shape
        rows = _patch_embed_rows("embed", _StageSpec(int(p), int(cin), int(C), (), module.padding == "corner"), H, W, B)[0]
    elif isinstance(module, Block):
        rows = list(_block_rows("block", _block_spec(module), H, W, B, include_attention))
    elif isinstance(module, LocallyGroupedAttn | GlobalSubSampleAttn):
        rows = list(_attn_rows("attn", _attn_block_spec(module, 0), H, W, B, include_attention))
    elif isinstance(module, Mlp):
        return sum(module_flops(fc, (H, W), B) for fc in (module.fc1, module.fc2))
    elif isinstance(module, PosConv):
        rows = [_peg_row(0, module.proj[0].weight.shape[0], H, W, B, True)]
    elif isinstance(module, Linear):
        return B * H * W * module.in_features * module.out_features
    elif isinstance(module, Conv2d):
        return _conv2d_macs(module, H, W, B)
    elif isinstance(module, LayerNorm | GroupNorm | BatchNorm2d | ReLU):
        return 0  # elementwise and statistics: not multiply-adds of a product (see the module doc)
    else:
        raise TypeError(f"module_flops does not know {type(module).__name__}")
    return sum(r.macs for r in rows)


def _conv2d_macs(conv: Conv2d, H: int, W: int, B: int) -> int:
    """B * Ho * Wo * C_out * C_in/groups * k^2 for any of Conv2d's kinds (they all floor alike)."""
    c_out, c_in_per_group, k, _ = conv.weight.shape
    Ho = (H + 2 * conv.padding - k) // conv.stride + 1
    Wo = (W + 2 * conv.padding - k) // conv.stride + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"Conv2d: kernel {k} does not fit the {H}x{W} map with padding {conv.padding}")
    return B * Ho * Wo * int(c_out) * int(c_in_per_group) * int(k) * int(k)
