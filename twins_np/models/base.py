"""What every trainable model shares: a loss on its logits, and the backward from that loss.

Twins (one class per image) and the Segmenter (one class per pixel) differ only in the loss
pair they use; the one rule for ``loss`` / ``backward_loss`` lives here::

    loss, logits = model.loss(x, target, label_smoothing)   # forward + loss, caches kept
    dx = model.backward_loss()                                # fills every parameter's .grad
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..nn import Module


class LossModel(Module):
    """A model trained by a loss on its logits.

    Subclasses set ``loss_forward`` (``(logits, target, label_smoothing, **options) -> (loss,
    cache)``) and ``loss_backward`` (``(dloss, cache) -> dlogits``), functional pairs of
    :mod:`twins_np.functional.loss`, and implement ``forward(x) -> logits`` and
    ``backward(dlogits) -> dx``.
    """

    loss_forward: Callable[..., tuple[float, Any]]
    loss_backward: Callable[[float, Any], Any]

    def loss(self, x: Any, target: Any, label_smoothing: float = 0.0, **options: Any) -> tuple[float, Any]:
        """Forward + the loss; returns (loss, logits). Call :meth:`backward_loss` next.

        ``options`` go to the loss (the Segmenter's ``ignore_index``).
        """
        logits = self.forward(x)
        loss, cache = type(self).loss_forward(logits, target, label_smoothing, **options)
        self._save(cache, slot="_loss_cache")  # tagged like every cache: backward_loss checks it is this forward's
        return loss, logits

    def backward_loss(self) -> Any:
        """Backward from the loss computed by :meth:`loss`; returns dx and fills every parameter's ``.grad``."""
        if getattr(self, "_loss_cache", None) is None:
            raise RuntimeError("backward_loss() needs a loss() call before it")
        return self.backward(type(self).loss_backward(1.0, self._pop("_loss_cache")))
