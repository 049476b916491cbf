"""Guided backpropagation (Springenberg et al., 2015).

The guided model is any JAX model whose ReLUs are `guided_relu` (ours: `module.clone(
activation=guided_relu)`, see `saliency_jax.models.functions`); its plain input gradient is the
guided-backprop map: the gradient passes a ReLU only where both the forward input and the
incoming gradient are positive.
"""

from collections.abc import Callable

import jax

from saliency_jax.attributions.gradient import gradient

Array = jax.Array


def guided_backprop(
  guided_logits_fn: Callable[[Array], Array],
  images: Array,
  targets: Array,
  *,
  max_grads_in_flight: int | None = None,
) -> Array:
  """Guided-backprop maps float32 [B,H,W,C] of each image's target logit."""
  return gradient(guided_logits_fn, images, targets, max_grads_in_flight=max_grads_in_flight)
