"""The Twins model (PCPVT and SVT), built like timm's ``timm.models.twins.Twins``.

Flow, for S stages (4 in the paper's models)::

    image (B, C_in, H, W)
    for stage s:
        tokens, (H_s, W_s) = patch_embeds[s](x)          # conv k = s = 4, then 2; LN(1e-5)
        tokens = pos_drops[s](tokens)
        for block i: tokens = blocks[s][i](tokens, size)  # LSA (even i, SVT) or GSA
            after block 0: tokens = pos_block[s](tokens, size)   # the PEG
        x = tokens as NCHW (all stages but the last)
    norm (LN 1e-6) -> mean over tokens -> head_drop -> head Linear

``backward(dlogits)`` runs the same path in reverse and fills every ``.grad``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import functional as F
from ..backend import default_rng, device_of
from ..functional._checks import FLOAT_DTYPES, check_finite, check_float, check_ndim
from ..nn import Block, Dropout, Identity, LayerNorm, Linear, Module, ModuleList, PatchEmbed, PosConv


def _tuple(v: Any, n: int, name: str) -> tuple:
    t = tuple(v)
    if len(t) != n:
        raise ValueError(f"{name} has {len(t)} entries but depths has {n} stages")
    return t


class Twins(Module):
    """Twins-PCPVT (``wss=None``: every block GSA) or Twins-SVT (even blocks LSA, odd GSA).

    Keyword names and meaning follow timm's ``Twins``. Extra twins-np arguments:
    ``norm_eps`` (1e-6, the blocks' and final LayerNorm eps), ``seed`` (weight init and
    dropout generators), ``dtype`` (float32 or float64), ``check_finite`` (raise on
    NaN/Inf input) and ``sr_mode`` (GSA's sub-sampling function: ``"conv"`` as timm,
    ``"avg"`` or ``"sep"``; see :class:`twins_np.nn.GlobalSubSampleAttn`).

    Shapes: ``forward(x)``: x (B, in_chans, H, W) NCHW -> logits (B, num_classes).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        depths: Sequence[int] = (3, 4, 6, 3),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        wss: Sequence[int] | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        seed: int | None = 0,
        dtype: Any = np.float32,
        check_finite: bool = False,
        sr_mode: str = "conv",
    ) -> None:
        super().__init__()
        if np.dtype(dtype) not in FLOAT_DTYPES:
            raise TypeError(
                f"dtype must be float32 or float64, got {np.dtype(dtype)} (float16 loses too much precision in "
                "LayerNorm and softmax; integers cannot hold gradients)"
            )
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
        S = len(depths)
        embed_dims = _tuple(embed_dims, S, "embed_dims")
        num_heads = _tuple(num_heads, S, "num_heads")
        mlp_ratios = _tuple(mlp_ratios, S, "mlp_ratios")
        sr_ratios = _tuple(sr_ratios, S, "sr_ratios")
        if wss is not None:
            wss = _tuple(wss, S, "wss")
        g = default_rng(seed)
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.depths, self.embed_dims, self.wss = tuple(depths), embed_dims, wss
        self.num_features = embed_dims[-1]
        self.check_inputs_finite = check_finite
        self.config = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            embed_dims=embed_dims,
            num_heads=num_heads,
            mlp_ratios=mlp_ratios,
            depths=tuple(depths),
            sr_ratios=sr_ratios,
            wss=wss,
            drop_rate=drop_rate,
            pos_drop_rate=pos_drop_rate,
            proj_drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_eps=norm_eps,
            sr_mode=sr_mode,
        )

        size: tuple[int, int] = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        prev, p = in_chans, patch_size
        self.patch_embeds = ModuleList()
        self.pos_drops = ModuleList()
        for s in range(S):
            self.patch_embeds.append(PatchEmbed(size, p, prev, embed_dims[s], rng=g, dtype=dtype))
            self.pos_drops.append(Dropout(pos_drop_rate, rng=g))
            prev, size, p = embed_dims[s], (size[0] // p, size[1] // p), 2

        # stochastic depth: rate grows linearly over all blocks, as timm
        dpr = np.linspace(0.0, drop_path_rate, sum(depths)).tolist() if sum(depths) else []
        self.blocks = ModuleList()
        cur = 0
        for s in range(S):
            stage = ModuleList()
            for i in range(depths[s]):
                ws = 1 if wss is None or i % 2 == 1 else wss[s]
                stage.append(
                    Block(
                        embed_dims[s],
                        num_heads[s],
                        mlp_ratios[s],
                        proj_drop_rate,
                        attn_drop_rate,
                        dpr[cur + i],
                        sr_ratios[s],
                        ws,
                        norm_eps,
                        rng=g,
                        dtype=dtype,
                        sr_mode=sr_mode,
                    )
                )
            self.blocks.append(stage)
            cur += depths[s]
        self.pos_block = ModuleList([PosConv(d, d, rng=g, dtype=dtype) for d in embed_dims])
        self.norm = LayerNorm(self.num_features, eps=norm_eps, dtype=dtype)
        self.head_drop = Dropout(drop_rate, rng=g)
        self.head: Module = Linear(self.num_features, num_classes, rng=g, dtype=dtype) if num_classes > 0 else Identity()

    # -- forward -------------------------------------------------------------------------
    def _min_input_side(self) -> tuple[int, list[tuple[int, int, int]]]:
        """Smallest H (and W) the model accepts, and per stage (stride, patch, need).

        Stage s sees ``side // stride_s`` tokens per side (the patch convs floor, and
        floor(floor(n/a)/b) = floor(n/(ab))). It needs at least one token, and at least
        ``sr`` tokens for each GSA with sub-sampling ratio sr > 1 (the k = s = sr conv
        would have no output). So the minimum side is max_s need_s * stride_s.
        """
        stages, stride = [], 1
        for embed, stage in zip(self.patch_embeds, self.blocks):
            stride *= embed.patch_size
            srs = [blk.attn.sr_ratio for blk in stage if hasattr(blk.attn, "sr_ratio")]
            stages.append((stride, embed.patch_size, max([1, *srs])))
        return max(need * st for st, _, need in stages), stages

    def _check_input(self, x: Any) -> None:
        """Refuse an image the model cannot run, with a message that says why."""
        check_float("x", x)
        check_ndim("x", x, 4, "(B, C, H, W)")
        B, C, H, W = x.shape
        if B < 1:
            raise ValueError(f"'x' holds no image: batch size B = 0 (shape {tuple(x.shape)})")
        if C != self.in_chans:
            hint = ""
            if x.shape[-1] == self.in_chans:
                hint = "; it looks channels-last (B, H, W, C): use x.transpose(0, 3, 1, 2)"
            raise ValueError(f"'x' must have {self.in_chans} channels on axis 1 (B, C, H, W), got shape {tuple(x.shape)}{hint}")
        params = self.parameters()
        dtype = params[0].data.dtype if params else x.dtype
        if dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"the model's parameters are {dtype}; twins-np runs in float32 or float64 only: call model.astype(np.float32)"
            )
        if x.dtype != dtype:
            raise TypeError(
                f"'x' is {x.dtype} but the model's parameters are {dtype}; twins-np never upcasts silently: "
                f"cast the input (x.astype(np.{dtype})) or the model (model.astype(np.{x.dtype}))"
            )
        if params and device_of(x) != device_of(params[0].data):
            dev = device_of(params[0].data)
            raise TypeError(
                f"'x' is on the {device_of(x)} but the model is on the {dev}; "
                f"move one of them, e.g. twins_np.to_device(x, {dev!r})"
            )
        m, stages = self._min_input_side()
        if H >= m and W >= m:
            return
        why = ""
        for s, (stride, p, need) in enumerate(stages):
            h, w = H // stride, W // stride
            if h < 1 or w < 1:
                hp, wp = H // (stride // p), W // (stride // p)
                why = f"stage {s + 1}'s patch embedding (patch size {p}) gets a {hp}x{wp} map, smaller than one patch"
                break
            if h < need or w < need:
                why = (
                    f"stage {s + 1} has a {h}x{w} token map (the input divided by {stride}), smaller than its "
                    f"GSA sub-sampling ratio sr = {need}, so the sub-sampling conv would have no output"
                )
                break
        raise ValueError(
            f"input image {H}x{W} is too small for this model: {why}; the smallest input it accepts is {m}x{m} "
            f"(H >= {m} and W >= {m}; non-square sizes are fine)"
        )

    def forward_features(self, x: Any) -> Any:
        """Image (B, C_in, H, W) -> normalised last-stage tokens (B, N_S, C_S)."""
        self._check_input(x)
        if self.check_inputs_finite:
            check_finite("x", x)
        sizes = []
        last = len(self.depths) - 1
        for s, (embed, drop, stage, peg) in enumerate(zip(self.patch_embeds, self.pos_drops, self.blocks, self.pos_block)):
            x, size = embed(x)
            x = drop(x)
            for i, blk in enumerate(stage):
                x = blk(x, size)
                if i == 0:
                    x = peg(x, size)  # the PEG follows the stage's first block
            sizes.append(size)
            if s < last:
                B, _, C = x.shape
                x = x.reshape(B, size[0], size[1], C).transpose(0, 3, 1, 2)  # tokens -> NCHW view
        self._save(sizes)
        return self.norm(x)

    def forward_head(self, x: Any) -> Any:
        """Tokens (B, N, C) -> logits (B, num_classes) (mean over tokens, then head)."""
        self._batch = x.shape[0]  # for the shape check of backward's dlogits
        if self.global_pool == "avg":
            self._pool_n = x.shape[1]
            x = x.mean(axis=1)
        return self.head(self.head_drop(x))

    def forward(self, x: Any) -> Any:
        """Image (B, C_in, H, W), float32/float64 NCHW -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    # -- backward ------------------------------------------------------------------------
    def backward_head(self, dlogits: Any) -> Any:
        dx = self.head_drop.backward(self.head.backward(dlogits))
        if self.global_pool == "avg":
            n = self._pool_n
            xp = self.xp
            # mean over N tokens: each token receives dout / N
            dx = xp.broadcast_to((dx / float(n))[:, None, :], (dx.shape[0], n, dx.shape[-1]))
        return dx

    def backward_features(self, dx: Any) -> Any:
        self._pop()  # the stage sizes were only needed to mark that forward ran
        dx = self.norm.backward(dx)
        for s in reversed(range(len(self.depths))):
            if s < len(self.depths) - 1:  # NCHW image gradient -> tokens
                B, C = dx.shape[0], dx.shape[1]
                dx = dx.transpose(0, 2, 3, 1).reshape(B, -1, C)
            stage = self.blocks[s]
            for i in reversed(range(len(stage))):
                if i == 0:
                    dx = self.pos_block[s].backward(dx)
                dx = stage[i].backward(dx)
            dx = self.pos_drops[s].backward(dx)
            dx = self.patch_embeds[s].backward(dx)
        return dx

    def backward(self, dlogits: Any) -> Any:
        """dlogits (B, num_classes) -> dx (B, C_in, H, W); fills every parameter's .grad."""
        if self._cache is None:
            raise RuntimeError("Twins.backward() called without a forward() before it (or twice for one forward)")
        expected = (self._batch, self.num_classes) if self.num_classes > 0 else None
        if expected is not None and tuple(getattr(dlogits, "shape", ())) != expected:
            raise ValueError(f"dlogits must have the logits' shape {expected}, got {tuple(getattr(dlogits, 'shape', ()))}")
        return self.backward_features(self.backward_head(dlogits))

    def no_weight_decay(self) -> set[str]:
        """Names of the PEG parameters (timm's ``no_weight_decay``)."""
        return {"pos_block." + n for n, _ in self.pos_block.named_parameters()}

    def loss(self, x: Any, target: Any, label_smoothing: float = 0.0) -> tuple[float, Any]:
        """Forward + cross-entropy; returns (loss, logits). Call :meth:`backward_loss` next."""
        logits = self.forward(x)
        loss, cache = F.cross_entropy_forward(logits, target, label_smoothing)
        self._save(cache, slot="_loss_cache")  # tagged like every cache: backward_loss checks it is this forward's
        return loss, logits

    def backward_loss(self) -> Any:
        """Backward from the loss computed by :meth:`loss`; returns dx."""
        if getattr(self, "_loss_cache", None) is None:
            raise RuntimeError("backward_loss() needs a loss() call before it")
        return self.backward(F.cross_entropy_backward(1.0, self._pop("_loss_cache")))
