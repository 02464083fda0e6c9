"""Window partition and reverse for LSA, with timm's right/bottom zero padding.

Notation: tokens x of shape (B, N, C) on an H x W map (N = H*W, row-major); window
size ws; padded map Hp x Wp with Hp = ceil(H/ws)*ws, Wp = ceil(W/ws)*ws; nW = (Hp/ws) *
(Wp/ws) windows of T = ws*ws tokens each.

Padding: zeros are added on the right (pad_r = (ws - W % ws) % ws columns) and bottom
(pad_b = (ws - H % ws) % ws rows) only. timm does *not mask* the padded tokens in the
attention that follows: they act as keys and values whose value after the qkv Linear is
its bias, and the outputs differ a lot from a masked version on small maps, so twins-np's
default matches timm on purpose. mmsegmentation's Twins masks them: :func:`window_pad_mask`
builds its additive mask (see docs/derivations/masked_lsa.md).

Partition and reverse are each other's adjoint: the backward of "pad then cut into
windows" is "glue windows then crop" and vice versa. A pad's backward is a slice.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..backend import get_xp
from ._checks import check_tokens

# the value mmsegmentation adds to the score of a query-key pair across the padding border
MASK_VALUE = -1000.0
PAD_MASK_RULES = ("mmseg", "padded")


class WindowCache(NamedTuple):
    size: tuple[int, int]  # (H, W) of the unpadded map
    ws: int


def window_pads(size: tuple[int, int], ws: int) -> tuple[int, int]:
    """``(pad_b, pad_r)``: rows added at the bottom and columns on the right."""
    H, W = size
    return (ws - H % ws) % ws, (ws - W % ws) % ws


def _check_ws(ws: Any) -> int:
    """``ws`` as a Python int; integral floats (7.0) are accepted, anything else refused."""
    if isinstance(ws, bool) or not isinstance(ws, (int, float, np.integer, np.floating)) or ws != int(ws) or ws < 1:
        raise ValueError(f"window size ws must be a positive integer, got {ws!r}")
    return int(ws)


def _partition(x4: Any, ws: int) -> Any:
    """(B, H, W, C) -> pad -> (B, nW, ws*ws, C), windows and tokens row-major."""
    # BEGIN SOLUTION windows
    xp = get_xp(x4)
    B, H, W, C = x4.shape
    pad_b, pad_r = window_pads((H, W), ws)
    if pad_b or pad_r:
        xpad = xp.zeros((B, H + pad_b, W + pad_r, C), dtype=x4.dtype)
        xpad[:, :H, :W, :] = x4
        x4 = xpad
    Hp, Wp = H + pad_b, W + pad_r
    x6 = x4.reshape(B, Hp // ws, ws, Wp // ws, ws, C).transpose(0, 1, 3, 2, 4, 5)
    return x6.reshape(B, (Hp // ws) * (Wp // ws), ws * ws, C)
    # END SOLUTION


def _reverse(win: Any, size: tuple[int, int], ws: int) -> Any:
    """(B, nW, ws*ws, C) -> glue windows -> crop -> (B, H, W, C)."""
    # BEGIN SOLUTION windows
    H, W = size
    pad_b, pad_r = window_pads(size, ws)
    Hp, Wp = H + pad_b, W + pad_r
    B, C = win.shape[0], win.shape[-1]
    x4 = win.reshape(B, Hp // ws, Wp // ws, ws, ws, C).transpose(0, 1, 3, 2, 4, 5)
    x4 = x4.reshape(B, Hp, Wp, C)
    return x4[:, :H, :W, :] if (pad_b or pad_r) else x4
    # END SOLUTION


def window_partition_forward(x: Any, size: tuple[int, int], ws: int) -> tuple[Any, WindowCache]:
    """Cut tokens into non-overlapping ws x ws windows, zero-padding right/bottom.

    Args:
        x: (B, N, C) tokens, N = H*W.
        size: (H, W).
        ws: window size.

    Returns:
        windows: (B, nW, ws*ws, C); cache for :func:`window_partition_backward`.
    """
    ws = _check_ws(ws)
    B, H, W, C = check_tokens("x", x, size)
    return _partition(x.reshape(B, H, W, C), ws), WindowCache((H, W), ws)


def window_partition_backward(dwin: Any, cache: WindowCache) -> Any:
    """Adjoint of the partition: glue the window gradients and crop the pad away.

    Gradients that reached padded positions are dropped: those zeros were constants.

    Returns:
        dx: (B, N, C).
    """
    size, ws = cache
    dx4 = _reverse(dwin, size, ws)
    return dx4.reshape(dx4.shape[0], size[0] * size[1], dx4.shape[-1])


def window_reverse_forward(win: Any, size: tuple[int, int], ws: int) -> tuple[Any, WindowCache]:
    """Glue windows back into a map and crop the padded rows/columns.

    Args:
        win: (B, nW, ws*ws, C).
        size: (H, W) of the unpadded map.
        ws: window size.

    Returns:
        x: (B, N, C); cache for :func:`window_reverse_backward`.
    """
    ws = _check_ws(ws)
    H, W = size
    pad_b, pad_r = window_pads((H, W), ws)
    nW = ((H + pad_b) // ws) * ((W + pad_r) // ws)
    if win.ndim != 4 or win.shape[1] != nW or win.shape[2] != ws * ws:
        raise ValueError(f"windows must have shape (B, {nW}, {ws * ws}, C) for size {(H, W)} and ws {ws}, got {tuple(win.shape)}")
    x4 = _reverse(win, (H, W), ws)
    return x4.reshape(x4.shape[0], H * W, x4.shape[-1]), WindowCache((H, W), ws)


def window_reverse_backward(dx: Any, cache: WindowCache) -> Any:
    """Adjoint of reverse+crop: zero-pad the gradient and cut it into windows.

    Padded query rows receive zero gradient, since they were cropped away.

    Returns:
        dwin: (B, nW, ws*ws, C).
    """
    (H, W), ws = cache
    B, C = dx.shape[0], dx.shape[-1]
    return _partition(dx.reshape(B, H, W, C), ws)


def window_pad_mask(size: tuple[int, int], ws: int, rule: str, xp: Any = np, dtype: Any = np.float32) -> Any:
    """The additive attention mask of padded windows: (nW, 1, T, T) or None when nothing is masked.

    Each position p of the padded Hp x Wp map gets a flag m_p (1 = "padding"); the mask of a
    query i and a key j in the same window is ``MASK_VALUE`` (-1000) where m_i != m_j and 0
    where they agree, so a real query never attends to a padded key (its weight becomes
    exp(-1000) relative, 0 in float32 and float64) and a padded query only to padded keys
    (its output is cropped away anyway).

    Args:
        size: (H, W) of the unpadded map.
        ws: window size.
        rule: which positions are flagged:

            - ``"padded"``: the padded rows (index >= H) and columns (index >= W);
            - ``"mmseg"``: mmsegmentation's code, ``m[-pad_b:, :] = 1; m[:, -pad_r:] = 1``.
              In Python ``m[-0:]`` is the whole axis, so when either pad is 0 every
              position is flagged and *nothing* is masked; the padded positions are masked
              only when both pad_b > 0 and pad_r > 0. twins-np reproduces this (its
              checkpoints were trained with it): at a 512 x 512 crop every SVT stage pads
              both ways, at 72 x 56 some stages do not.
        xp, dtype: array module and dtype of the mask (the scores').

    Returns:
        (nW, 1, T, T) with T = ws*ws, broadcastable to the scores (B, nW, heads, T, T) of
        :func:`twins_np.functional.lsa_forward`; None when the rule flags no pair.
    """
    if rule not in PAD_MASK_RULES:
        raise ValueError(f"pad mask rule must be one of {PAD_MASK_RULES}, got {rule!r}")
    ws = _check_ws(ws)
    H, W = size
    pad_b, pad_r = window_pads((H, W), ws)
    Hp, Wp = H + pad_b, W + pad_r
    flag = np.zeros((Hp, Wp), dtype=np.float64)
    if rule == "padded":
        flag[H:, :] = 1.0
        flag[:, W:] = 1.0
    else:
        flag[Hp - pad_b if pad_b else 0 :, :] = 1.0  # m[-pad_b:] with Python's -0 == 0
        flag[:, Wp - pad_r if pad_r else 0 :] = 1.0
    win = flag.reshape(Hp // ws, ws, Wp // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)  # (nW, T)
    differ = win[:, None, :] != win[:, :, None]  # [w, i, j]: query i and key j on different sides
    if not differ.any():
        return None
    mask = np.where(differ, MASK_VALUE, 0.0)[:, None]  # (nW, 1, T, T): one mask for every head
    return xp.asarray(mask, dtype=dtype)
