"""Integrated gradients (Sundararajan et al., 2017), PAIR's Riemann rule.

alphas = linspace(0, 1, steps) including both ends; attribution = mean over alphas of the
gradient at baseline + alpha (x - baseline), times (x - baseline), exactly as PAIR's
`IntegratedGradients.GetMask`. `completeness` reports, per image, how far the attributions'
sum is from f(x) - f(baseline), so a user sees when `steps` is too small.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attributions import _engine

Array = jax.Array
Baseline = float | Array


def broadcast_baseline(baseline: Baseline, images: Array) -> Array:
  """A scalar, [H,W,C] or [B,H,W,C] baseline as float32 [B,H,W,C]."""
  baseline = jnp.asarray(baseline, jnp.float32)
  try:
    return jnp.broadcast_to(baseline, images.shape)
  except ValueError:
    raise ValueError(
      f"baseline of shape {baseline.shape} does not broadcast to images {images.shape}"
    ) from None


def integrated_gradients(
  logits_fn: Callable[[Array], Array],
  images: Array,
  targets: Array,
  *,
  baseline: Baseline = 0.0,
  steps: int = 25,
  max_grads_in_flight: int | None = None,
) -> Array:
  """Integrated-gradients maps, float32 [B,H,W,C].

  Args:
    logits_fn: images [N,H,W,C] -> logits [N,K].
    images: float [B,H,W,C].
    targets: int [B].
    baseline: scalar (the study: -1, black after Inception scaling), or an array broadcasting to
      images (per-image baselines [B,H,W,C]). PAIR's default is 0.
    steps: number of alphas in linspace(0, 1, steps) (PAIR's x_steps; the study: 10).
    max_grads_in_flight: at most this many gradients per backward pass.
  """
  images, targets = _engine.check_images(images, targets)
  base = broadcast_baseline(baseline, images)
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  alphas = jnp.asarray(np.linspace(0.0, 1.0, steps), jnp.float32)
  diff = images - base
  grad_fn = _engine.target_gradients(logits_fn)

  def contribution(bi, si):
    x = base[bi] + alphas[si].reshape(-1, 1, 1, 1) * diff[bi]
    return grad_fn(x, targets[bi])

  total = _engine.chunked_sum(
    contribution, images.shape[0], steps, images.shape[1:], max_grads_in_flight
  )
  return total * diff / steps


class Completeness(NamedTuple):
  """Per image: sum of attributions, f(x) - f(baseline), and their relative gap."""

  attribution_sum: Array
  output_difference: Array
  relative_error: Array


def completeness(
  logits_fn: Callable[[Array], Array],
  images: Array,
  targets: Array,
  attributions: Array,
  *,
  baseline: Baseline = 0.0,
) -> Completeness:
  """The IG completeness check: sum(attributions) vs logit(x) - logit(baseline), per image.

  relative_error = |sum - difference| / max(|difference|, 1e-12); it shrinks as `steps` grows
  (the Riemann sum converges), and a large value says the step count is too small.
  """
  images, targets = _engine.check_images(images, targets)
  base = broadcast_baseline(baseline, images)
  attr_sum = jnp.asarray(attributions, jnp.float32).sum(axis=(1, 2, 3))
  delta = _engine.target_values(logits_fn, images, targets) - _engine.target_values(
    logits_fn, base, targets
  )
  rel = jnp.abs(attr_sum - delta) / jnp.maximum(jnp.abs(delta), 1e-12)
  return Completeness(attr_sum, delta, rel)
