"""The Twins model (PCPVT and SVT), built like timm's ``timm.models.twins.Twins``.

Flow, for S stages (4 in the paper's models)::

    image (B, C_in, H, W)
    for stage s:
        tokens, (H_s, W_s) = patch_embeds[s](x)          # conv k = s = 4, then 2; LN(1e-5)
        tokens = pos_drops[s](tokens)
        for block i: tokens = blocks[s][i](tokens, size)  # LSA (even i, SVT) or GSA
            after block 0: tokens = pos_block[s](tokens, size)   # the PEG
        x = tokens as NCHW (all stages but the last)
        [norm_after_stage: tokens = norm_list[s](tokens)]  # mmsegmentation's SVT
    norm (LN 1e-6) -> mean over tokens -> head_drop -> head Linear

``backward(dlogits)`` runs the same path in reverse and fills every ``.grad``.

As a backbone (timm's API): ``forward_intermediates(x, indices, ...)`` returns the stage
maps (B, C_s, H_s, W_s), and ``backward_intermediates(grads, dfinal)`` takes one gradient
per map; ``prune_intermediate_layers`` drops what a feature extractor does not need (see
:mod:`twins_np.models.features`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .. import functional as F
from ..backend import default_rng, device_of
from ..functional._checks import FLOAT_DTYPES, check_finite, check_float, check_ndim
from ..nn import Block, Dropout, Identity, LayerNorm, Linear, Module, ModuleList, PatchEmbed, PosConv
from ..nn.dropout import drop_path_rates
from .base import LossModel
from .features import feature_take_indices


def _tuple(v: Any, n: int, name: str) -> tuple:
    t = tuple(v)
    if len(t) != n:
        raise ValueError(f"{name} has {len(t)} entries but depths has {n} stages")
    return t


class FeaturesCache(NamedTuple):
    """What :meth:`Twins.backward_features` reads from :meth:`Twins.forward_features`: each stage's (H_s, W_s)."""

    sizes: tuple[tuple[int, int], ...]


class HeadCache(NamedTuple):
    """What :meth:`Twins.backward_head` needs from :meth:`Twins.forward_head`."""

    batch: int  # B, for the shape check of dlogits
    tokens: int  # N, the number of tokens the mean pooled


class IntermediatesCache(NamedTuple):
    """What :meth:`Twins.backward_intermediates` needs from its :meth:`Twins.forward_intermediates`.

    Fields: ``taps`` the stages whose maps were returned, in order; ``deepest`` the last
    stage the backward passes through (the last stage run when the final output was
    returned, else the last tapped one); ``norm_tap`` whether the last stage's map went
    through the final norm; ``final`` ``"tokens"`` (normed last-stage tokens (B, N, C)),
    ``"map"`` (the NCHW map of an early-stopped stage) or None (``intermediates_only``);
    ``map_shapes`` / ``final_shape`` the returned shapes; ``output_fmt`` the maps' layout;
    ``dtype`` and ``device`` the model's; ``batch`` B and ``sizes`` each run stage's (H_s, W_s).
    """

    taps: tuple[int, ...]
    deepest: int
    norm_tap: bool
    final: str | None
    map_shapes: tuple[tuple[int, ...], ...]
    final_shape: tuple[int, ...] | None
    output_fmt: str
    dtype: Any
    batch: int
    sizes: tuple[tuple[int, int], ...]
    device: str


class Twins(LossModel):
    """Twins-PCPVT (``wss=None``: every block GSA) or Twins-SVT (even blocks LSA, odd GSA).

    Keyword names and meaning follow timm's ``Twins``. Extra twins-np arguments:
    ``norm_eps`` (1e-6, the blocks' and final LayerNorm eps), ``seed`` (weight init and
    dropout generators), ``dtype`` (float32 or float64), ``check_finite`` (raise on
    NaN/Inf input) and ``sr_mode`` (GSA's sub-sampling function: ``"conv"`` as timm,
    ``"avg"`` or ``"sep"``; see :class:`twins_np.nn.GlobalSubSampleAttn`).

    mmsegmentation's Twins backbones (``PCPVT``, ``SVT``) are this model with four options
    (:data:`twins_np.models.mmseg.MMSEG_BACKBONE` sets them): ``patch_padding="corner"``
    (each patch embedding zero-pads the bottom and right to a multiple of its patch size,
    so stage s has ceil(H / r_s) rows, where timm's ``"floor"`` drops the remainder),
    ``norm_after_stage=True`` (SVT: a LayerNorm ``norm_list[s]`` ends every stage, and its
    output feeds the next stage), ``pad_mask="mmseg"`` (LSA's padded keys masked with
    mmsegmentation's rule, see :func:`twins_np.functional.window_pad_mask`) and
    ``norm_eps=1e-5``. The defaults are timm's and leave the model exactly as before.

    Shapes: ``forward(x)``: x (B, in_chans, H, W) NCHW -> logits (B, num_classes).
    Training: ``loss(x, target, label_smoothing)`` (cross-entropy) then ``backward_loss()``.
    """

    loss_forward = staticmethod(F.cross_entropy_forward)
    loss_backward = staticmethod(F.cross_entropy_backward)

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
        patch_padding: str = "floor",
        norm_after_stage: bool = False,
        pad_mask: str | None = None,
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
            patch_padding=patch_padding,
            norm_after_stage=norm_after_stage,
            pad_mask=pad_mask,
        )

        size: tuple[int, int] = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        prev, p = in_chans, patch_size
        self.patch_embeds = ModuleList()
        self.pos_drops = ModuleList()
        for s in range(S):
            self.patch_embeds.append(PatchEmbed(size, p, prev, embed_dims[s], rng=g, dtype=dtype, padding=patch_padding))
            self.pos_drops.append(Dropout(pos_drop_rate, rng=g))
            prev, size, p = embed_dims[s], (size[0] // p, size[1] // p), 2
        self.patch_padding = patch_padding

        # stochastic depth: rate grows linearly over all blocks, as timm (one rule, tested against timm's)
        dpr = drop_path_rates(drop_path_rate, depths)
        self.blocks = ModuleList()
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
                        dpr[s][i],
                        sr_ratios[s],
                        ws,
                        norm_eps,
                        rng=g,
                        dtype=dtype,
                        sr_mode=sr_mode,
                        pad_mask=pad_mask,
                    )
                )
            self.blocks.append(stage)
        self.pos_block = ModuleList([PosConv(d, d, rng=g, dtype=dtype) for d in embed_dims])
        # mmsegmentation's SVT: a LayerNorm after every stage (its `norm_list`), inside the chain
        self.norm_list: ModuleList | None = (
            ModuleList([LayerNorm(d, eps=norm_eps, dtype=dtype) for d in embed_dims]) if norm_after_stage else None
        )
        self.norm: Module = LayerNorm(self.num_features, eps=norm_eps, dtype=dtype)
        self.head_drop = Dropout(drop_rate, rng=g)
        self.head: Module = Linear(self.num_features, num_classes, rng=g, dtype=dtype) if num_classes > 0 else Identity()
        # what each stage gives a dense head; timm's names ("block.s") and keys. timm writes the
        # reduction as 2**(2 + s), which assumes patch_size 4; this is the true output stride.
        self.feature_info = [dict(module=f"block.{s}", num_chs=embed_dims[s], reduction=patch_size * 2**s) for s in range(S)]
        self.model_cfg: dict[str, Any] = {}  # stamped by create_model: {"name", "num_classes"} of the named config

    # -- forward -------------------------------------------------------------------------
    def _min_input_side(self, n_stages: int | None = None) -> tuple[int, list[tuple[int, int, int]]]:
        """Smallest H (and W) the model (or its first ``n_stages`` stages) accepts, and per stage (stride, patch, need).

        Stage s sees ``side // stride_s`` tokens per side (the patch convs floor, and
        floor(floor(n/a)/b) = floor(n/(ab))). It needs at least one token, and at least
        ``sr`` tokens for each GSA with sub-sampling ratio sr > 1 (the k = s = sr conv
        would have no output). So the minimum side is max_s need_s * stride_s. With
        ``patch_padding="corner"`` stage s has ceil(side / stride_s) tokens (likewise
        nested), so ``(need_s - 1) * stride_s + 1`` pixels suffice.
        """
        stages, stride = [], 1
        for embed, stage in list(zip(self.patch_embeds, self.blocks))[:n_stages]:
            stride *= embed.patch_size
            srs = [blk.attn.sr_ratio for blk in stage if hasattr(blk.attn, "sr_ratio")]
            stages.append((stride, embed.patch_size, max([1, *srs])))
        if self.patch_padding == "corner":
            return max((need - 1) * st + 1 for st, _, need in stages), stages
        return max(need * st for st, _, need in stages), stages

    def _check_input(self, x: Any, n_stages: int | None = None) -> None:
        """Refuse an image the model (or its first ``n_stages`` stages) cannot run, saying why."""
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
        m, stages = self._min_input_side(n_stages)
        if H >= m and W >= m:
            return
        why = ""
        ceil = self.patch_padding == "corner"
        for s, (stride, p, need) in enumerate(stages):
            h, w = (-(-H // stride), -(-W // stride)) if ceil else (H // stride, W // stride)
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
        self._forget("_intermediates")  # backward_intermediates has no forward to use after this one
        sizes = []
        last = len(self.depths) - 1
        for s in range(last + 1):
            x, size = self._forward_stage(s, x)
            sizes.append(size)
            if s < last:
                B, _, C = x.shape
                x = x.reshape(B, size[0], size[1], C).transpose(0, 3, 1, 2)  # tokens -> NCHW view
        self._save(FeaturesCache(tuple(sizes)))
        return self.norm(x)

    def forward_head(self, x: Any) -> Any:
        """Tokens (B, N, C) -> logits (B, num_classes) (mean over tokens, then head)."""
        self._save(HeadCache(int(x.shape[0]), int(x.shape[1])), slot="_head_cache")
        if self.global_pool == "avg":
            x = x.mean(axis=1)
        return self.head(self.head_drop(x))

    def forward(self, x: Any) -> Any:
        """Image (B, C_in, H, W), float32/float64 NCHW -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    # -- backward ------------------------------------------------------------------------
    def backward_head(self, dlogits: Any) -> Any:
        batch, n = self._pop("_head_cache")
        dx = self.head_drop.backward(self.head.backward(dlogits))
        if self.global_pool == "avg":
            # mean over N tokens: each token receives dout / N
            dx = self.xp.broadcast_to((dx / float(n))[:, None, :], (batch, n, dx.shape[-1]))
        return dx

    def backward_features(self, dx: Any) -> Any:
        self._pop()  # the stage sizes: read to check that forward_features ran for this backward
        dx = self.norm.backward(dx)
        for s in reversed(range(len(self.depths))):
            if s < len(self.depths) - 1:  # NCHW image gradient -> tokens
                B, C = dx.shape[0], dx.shape[1]
                dx = dx.transpose(0, 2, 3, 1).reshape(B, -1, C)
            dx = self._backward_stage(s, dx)
        return dx

    def backward(self, dlogits: Any) -> Any:
        """dlogits (B, num_classes) -> dx (B, C_in, H, W); fills every parameter's .grad."""
        self._peek()  # no forward (or a second backward): say so before anything runs
        batch, _ = self._peek("_head_cache")
        expected = (batch, self.num_classes) if self.num_classes > 0 else None
        if expected is not None and tuple(getattr(dlogits, "shape", ())) != expected:
            raise ValueError(f"dlogits must have the logits' shape {expected}, got {tuple(getattr(dlogits, 'shape', ()))}")
        return self.backward_features(self.backward_head(dlogits))

    def no_weight_decay(self) -> set[str]:
        """Names of the PEG parameters (timm's ``no_weight_decay``)."""
        return {"pos_block." + n for n, _ in self.pos_block.named_parameters()}

    # -- as a backbone (timm's forward_intermediates) -------------------------------------
    def _forward_stage(self, s: int, x: Any) -> tuple[Any, tuple[int, int]]:
        """Stage s: image or map (B, C, H, W) -> tokens (B, H_s*W_s, C_s) and (H_s, W_s); as forward_features."""
        x, size = self.patch_embeds[s](x)
        x = self.pos_drops[s](x)
        for i, blk in enumerate(self.blocks[s]):
            x = blk(x, size)
            if i == 0:
                x = self.pos_block[s](x, size)  # the PEG follows the stage's first block
        if self.norm_list is not None:
            x = self.norm_list[s](x)
        return x, size

    def _backward_stage(self, s: int, dx: Any) -> Any:
        """Stage s in reverse: dtokens (B, N_s, C_s) -> gradient of the stage's input (B, C, H, W)."""
        if self.norm_list is not None:
            dx = self.norm_list[s].backward(dx)
        stage = self.blocks[s]
        for i in reversed(range(len(stage))):
            if i == 0:
                dx = self.pos_block[s].backward(dx)
            dx = stage[i].backward(dx)
        dx = self.pos_drops[s].backward(dx)
        return self.patch_embeds[s].backward(dx)

    def forward_intermediates(
        self,
        x: Any,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Any:
        """Forward that also returns the stage maps; timm's ``Twins.forward_intermediates``.

        Args:
            x: image (B, C_in, H, W).
            indices: stages to return: None = all, an int n = the last n, a sequence =
                those stages (negative counts from the end). Maps come in stage order.
            norm: pass the last stage's map through the final LayerNorm (only the last
                stage can be normed: the norm is sized for it).
            stop_early: run no stage after the last one requested.
            output_fmt: ``"NCHW"`` (timm's) or ``"NHWC"``: (B, H_s, W_s, C_s), the
                channels-last layout of twins-np's tokens (timm accepts NCHW only).
            intermediates_only: return only the list of maps.

        Returns:
            ``maps`` if ``intermediates_only``, else ``(final, maps)``: ``final`` is the
            normed last-stage tokens (B, N_S, C_S) as :meth:`forward_features` gives, or,
            when ``stop_early`` ended before the last stage, the last run stage's NCHW map
            (unnormed), as timm. Each map is a fresh array (B, C_s, H_s, W_s), H_s = H // r_s.

        Call :meth:`backward_intermediates` next for the gradients.
        """
        S = len(self.blocks)
        take, max_index = feature_take_indices(S, indices)
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"'output_fmt' must be 'NCHW' (timm's) or 'NHWC' (channels-last), got {output_fmt!r}")
        last = max_index if stop_early else S - 1
        self._check_input(x, n_stages=last + 1)
        if self.check_inputs_finite:
            check_finite("x", x)
        B, device = int(x.shape[0]), device_of(x)
        self._forget("_cache", "_head_cache")  # this forward replaces any earlier one: Twins.backward now refuses
        taps = sorted(set(take))  # timm keeps stage order and returns a stage once
        run_norm = (norm and S - 1 in taps) or (not intermediates_only and last == S - 1)
        maps: list[Any] = []
        final: Any = None
        sizes = []
        for s in range(last + 1):
            tokens, size = self._forward_stage(s, x)
            sizes.append(size)
            C = tokens.shape[-1]
            nhwc = tokens.reshape(B, size[0], size[1], C)
            if s < S - 1:
                x = nhwc.transpose(0, 3, 1, 2)  # tokens -> NCHW view: the next stage's input
            else:
                # timm calls the norm twice (for the map and for the final output) on the same
                # tokens; one call gives both, and backward adds the two gradients before it
                x = self.norm(tokens) if run_norm else tokens
                if norm:
                    nhwc = x.reshape(B, size[0], size[1], C)
            if s in taps:
                # copies, as timm's .contiguous(): a caller editing a map cannot change the caches
                maps.append(nhwc.copy() if output_fmt == "NHWC" else self.xp.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)))
        if not intermediates_only:
            if last == S - 1:
                final, kind = x, "tokens"
            else:  # stopped early: the last run stage's NCHW map, as timm
                final, kind = (maps[-1] if output_fmt == "NCHW" else self.xp.ascontiguousarray(x)), "map"
        rec = IntermediatesCache(
            taps=tuple(taps),
            deepest=max_index if intermediates_only else last,
            norm_tap=bool(norm and S - 1 in taps),
            final=None if intermediates_only else kind,
            map_shapes=tuple(tuple(m.shape) for m in maps),
            final_shape=None if intermediates_only else tuple(final.shape),
            output_fmt=output_fmt,
            dtype=self.dtype,
            batch=B,
            sizes=tuple(sizes),
            device=device,
        )
        self._save(rec, slot="_intermediates")
        return maps if intermediates_only else (final, maps)

    def _check_intermediate_grads(self, rec: IntermediatesCache, grads: Any, dfinal: Any) -> None:
        """Every gradient matches what the forward returned (count, shape, dtype), before anything runs."""
        n = len(rec.taps)
        if not isinstance(grads, (list, tuple)):
            raise TypeError(
                f"'grads' must be a list with one gradient (or None) per returned map ({n} maps, stages "
                f"{list(rec.taps)}), got {type(grads).__name__}"
            )
        if len(grads) != n:
            raise ValueError(
                f"'grads' has {len(grads)} entries but forward_intermediates returned {n} maps (stages "
                f"{list(rec.taps)}); give one gradient per map, None for a map that received none"
            )
        # (argument name, gradient, expected shape, what it is the gradient of)
        named: list[tuple[str, Any, Any, str]] = [
            (f"grads[{k}]", g, shape, f"map of stage {s} ({rec.output_fmt})")
            for k, (g, shape, s) in enumerate(zip(grads, rec.map_shapes, rec.taps))
        ]
        if rec.final is None:
            if dfinal is not None:
                raise ValueError("'dfinal' was given but forward_intermediates(intermediates_only=True) returned no final output")
        else:
            named.append(("dfinal", dfinal, rec.final_shape, "final output"))
        for name, g, shape, what in named:
            if g is None:
                continue
            check_float(name, g)
            if tuple(g.shape) != shape:
                raise ValueError(f"'{name}' must have the shape of the {what} {shape}, got {tuple(g.shape)}")
            if g.dtype != rec.dtype:
                raise TypeError(f"'{name}' is {g.dtype} but the model's parameters are {rec.dtype}; cast it first")
            if device_of(g) != rec.device:
                raise TypeError(
                    f"'{name}' is on the {device_of(g)} but the model is on the {rec.device}; "
                    f"move it first, e.g. twins_np.to_device({name}, {rec.device!r})"
                )

    def backward_intermediates(self, grads: Sequence[Any], dfinal: Any = None) -> Any:
        """Backward of :meth:`forward_intermediates`: gradients of the returned maps -> dx.

        Args:
            grads: one gradient per returned map, same shapes and layout (None: zero).
            dfinal: gradient of the final output when it was returned (None: zero); must
                be None after ``intermediates_only=True``.

        Returns:
            dx (B, C_in, H, W). Adds into ``.grad`` of every parameter the returned outputs
            depend on: the stages up to the deepest returned one (and the final norm when it
            ran). Stages that were not run, or ran without feeding a returned output, and the
            head keep their ``.grad`` untouched, as with torch's autograd.

        Math:
            Stage s's output y_s feeds the next stage and, when tapped, a returned map (and
            the final output), so dL/dy_s is the sum of those gradients, added before the
            stage's own backward; see docs/derivations/model.md.
        """
        if getattr(self, "_intermediates", None) is None:
            raise RuntimeError(
                "backward_intermediates() needs a forward_intermediates() before it (a second backward for one "
                "forward, or a forward()/forward_features() in between, also discards it): run forward_intermediates again"
            )
        self._check_intermediate_grads(self._peek("_intermediates"), grads, dfinal)  # before anything is used
        rec = self._pop("_intermediates")
        S, xp = len(self.blocks), self.xp
        tap_grad = dict(zip(rec.taps, grads))

        def tokens(g: Any, fmt: str) -> Any:
            """A (B, C, H, W) or (B, H, W, C) gradient as tokens (B, H*W, C)."""
            if fmt == "NCHW":
                g = g.transpose(0, 2, 3, 1)
            return g.reshape(g.shape[0], -1, g.shape[-1])

        def zeros(s: int) -> Any:
            (H, W), C = rec.sizes[s], self.embed_dims[s]
            return xp.zeros((rec.batch, H * W, C), dtype=rec.dtype)

        def add(a: Any, b: Any) -> Any:
            return b if a is None else (a if b is None else a + b)  # never in place: b may be the caller's

        d: Any = None  # gradient of stage s's output (NCHW) coming back from stage s + 1
        for s in reversed(range(rec.deepest + 1)):
            dt = None if d is None else tokens(d, "NCHW")
            g = tap_grad.get(s)
            g = None if g is None else tokens(g, rec.output_fmt)
            if s == S - 1:
                dn = dfinal if rec.final == "tokens" else None  # through the final norm
                if rec.norm_tap:
                    dn = add(dn, g)
                else:
                    dt = add(dt, g)
                if rec.norm_tap or rec.final == "tokens":  # the norm ran: its cache must be used
                    dt = add(dt, self.norm.backward(dn if dn is not None else zeros(s)))
            else:
                dt = add(dt, g)
                if rec.final == "map" and s == rec.deepest and dfinal is not None:
                    dt = add(dt, tokens(dfinal, "NCHW"))
            d = self._backward_stage(s, dt if dt is not None else zeros(s))  # None: every gradient was None
        return d

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] | None = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what the maps at ``indices`` do not need; timm's ``prune_intermediate_layers``.

        Stages after the last index go; so does the final norm when ``prune_norm`` or when a
        stage was dropped (it is sized for the last stage), and the head (``num_classes``
        becomes 0) when ``prune_head`` or a stage was dropped. In place; the dropped
        parameters leave ``state_dict`` as they do in timm.

        Returns:
            the absolute stage indices taken (for ``forward_intermediates(indices=...)``).
        """
        take, max_index = feature_take_indices(len(self.blocks), indices)
        keep = max_index + 1
        prune_end = keep < len(self.blocks)
        for name in ("patch_embeds", "pos_drops", "blocks", "pos_block"):
            setattr(self, name, ModuleList(list(getattr(self, name))[:keep]))
        if self.norm_list is not None:
            self.norm_list = ModuleList(list(self.norm_list)[:keep])
        self.depths, self.embed_dims = self.depths[:keep], self.embed_dims[:keep]
        self.wss = None if self.wss is None else self.wss[:keep]
        for key in ("embed_dims", "num_heads", "mlp_ratios", "depths", "sr_ratios", "wss"):
            value = self.config.get(key)
            if isinstance(value, (tuple, list)):
                self.config[key] = tuple(value)[:keep]
        if prune_norm or prune_end:
            self.norm = Identity()
        if prune_end:
            self.num_features = self.embed_dims[-1]
        if prune_head or prune_end:  # timm's reset_classifier(0, "")
            self.head, self.num_classes, self.global_pool = Identity(), 0, ""
            self.config.update(num_classes=0, global_pool="")
        self._clear_caches()
        return take
