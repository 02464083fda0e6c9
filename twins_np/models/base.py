"""What every trainable model shares: a loss on its logits, and the backward from that loss.

Twins (one class per image) and the Segmenter (one class per pixel) differ only in the loss
pair they use; the one rule for ``loss`` / ``backward_loss`` lives here::

    loss, logits = model.loss(x, target, label_smoothing)   # forward + loss, caches kept
    dx = model.backward_loss()                                # fills every parameter's .grad

A model trained with auxiliary outputs (UPerNet's auxiliary FCN head) returns them from
``forward_train`` with their weights in ``loss_weights``; the loss is the weighted sum of the
same loss on each output, and ``backward_train`` takes one gradient per output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..nn import Module


class LossModel(Module):
    """A model trained by a loss on its logits.

    Subclasses set ``loss_forward`` (``(logits, target, label_smoothing, **options) -> (loss,
    cache)``) and ``loss_backward`` (``(dloss, cache) -> dlogits``), functional pairs of
    :mod:`twins_np.functional.loss`, and implement ``forward(x) -> logits`` and
    ``backward(dlogits) -> dx``. A model with auxiliary outputs also overrides
    ``forward_train(x) -> [logits, aux_logits, ...]``, ``backward_train([dlogits, daux, ...])``
    and ``loss_weights()``.
    """

    loss_forward: Callable[..., tuple[float, Any]]
    loss_backward: Callable[[float, Any], Any]

    def loss_weights(self) -> tuple[float, ...]:
        """The weight of each output of :meth:`forward_train` in the loss (the main output's is 1)."""
        return (1.0,)

    def forward_train(self, x: Any) -> list[Any]:
        """The outputs the training loss is computed on: ``[logits]`` unless a model adds auxiliary ones."""
        return [self.forward(x)]

    def backward_train(self, dlogits: Sequence[Any]) -> Any:
        """Backward of :meth:`forward_train`: one gradient per output -> dx."""
        return self.backward(dlogits[0])

    def loss(self, x: Any, target: Any, label_smoothing: float = 0.0, **options: Any) -> tuple[float, Any]:
        """Forward + the loss; returns (loss, logits). Call :meth:`backward_loss` next.

        The loss is sum_i w_i * loss(output_i, target) over :meth:`forward_train`'s outputs and
        :meth:`loss_weights`; ``logits`` is the main output. ``options`` go to the loss (the
        Segmenter's ``ignore_index``).
        """
        outputs = self.forward_train(x)
        weights = self.loss_weights()
        total, terms = 0.0, []
        for w, logits in zip(weights, outputs, strict=True):
            value, cache = type(self).loss_forward(logits, target, label_smoothing, **options)
            total += w * value
            terms.append((w, cache))
        self._save(terms, slot="_loss_cache")  # tagged like every cache: backward_loss checks it is this forward's
        return total, outputs[0]

    def backward_loss(self) -> Any:
        """Backward from the loss computed by :meth:`loss`; returns dx and fills every parameter's ``.grad``."""
        if getattr(self, "_loss_cache", None) is None:
            raise RuntimeError("backward_loss() needs a loss() call before it")
        # d(sum_i w_i L_i)/d output_i = w_i dL_i/d output_i: each loss backward gets its weight as dloss
        terms = self._pop("_loss_cache")
        return self.backward_train([type(self).loss_backward(w, cache) for w, cache in terms])
