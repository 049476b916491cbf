"""Vanilla gradient saliency: d logit[target] / d input (Simonyan et al., 2014)."""

from collections.abc import Callable

import jax

from saliency_jax.attributions import _engine

Array = jax.Array


def gradient(
  logits_fn: Callable[[Array], Array],
  images: Array,
  targets: Array,
  *,
  max_grads_in_flight: int | None = None,
) -> Array:
  """Input gradients of each image's target logit.

  Args:
    logits_fn: images [N,H,W,C] -> logits [N,K].
    images: float [B,H,W,C].
    targets: int [B], the class whose logit is explained.
    max_grads_in_flight: at most this many images per backward pass.

  Returns:
    float32 [B,H,W,C]; equals PAIR's `GradientSaliency.GetMask`.
  """
  images, targets = _engine.check_images(images, targets)
  grad_fn = _engine.target_gradients(logits_fn)
  return _engine.map_in_chunks(grad_fn, images, targets, max_grads_in_flight=max_grads_in_flight)
