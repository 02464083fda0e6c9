"""Comparison helpers shared by the functional-op tests."""

from __future__ import annotations

import numpy as np

from twins_np.backend import asnumpy


def rel_err(a, b, scale: float | None = None) -> float:
    """max|a - b| / max(max|b|, floor) with floor = 1e-12 * scale (a global magnitude)."""
    a = np.asarray(asnumpy(a), dtype=np.float64)
    b = np.asarray(asnumpy(b), dtype=np.float64)
    bmax = float(np.max(np.abs(b)))
    floor = 1e-12 * (bmax if scale is None else scale)
    return float(np.max(np.abs(a - b))) / max(bmax, floor, 1e-300)


def assert_grad_close(mine, ref, tol: float, scale: float) -> None:
    """Compare one gradient with its reference, relative to the global gradient scale where needed.

    A gradient that is structurally zero (a single key makes the softmax constant) is exactly 0
    here, while the reference carries rounding noise of order eps * scale; such a gradient passes
    when the reference is below ``tol * scale``. Otherwise the error is ``rel_err`` with
    floor = 1e-12 * scale.
    """
    mine, ref = np.asarray(asnumpy(mine), dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if not np.any(mine):
        assert float(np.max(np.abs(ref))) < tol * scale
    else:
        assert rel_err(mine, ref, scale) < tol


def torch_conv_nhwc(torch, x, w, b, dout, **conv_kwargs):
    """torch's conv2d on the NCHW view of channels-last x; returns out (NHWC) and grads (x NHWC, w, b)."""
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = torch.nn.functional.conv2d(tx.permute(0, 3, 1, 2), tw, tb, **conv_kwargs).permute(0, 2, 3, 1)
    tout.backward(torch.tensor(dout))
    return tout.detach().numpy(), [tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()]
