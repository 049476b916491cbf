"""SmoothGrad over integrated gradients (the study's SIG), as PAIR's
`IntegratedGradients.GetSmoothedMask`: IG of each noisy copy x + n (baseline fixed), squared
(`squared=True`, PAIR's magnitude=True) and averaged over the copies. Noise keys are per dataset
index and sample, as in `smoothgrad` (same key -> same noise as SmoothGrad's first samples).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from saliency_jax.attributions import _engine
from saliency_jax.attributions.integrated_gradients import Baseline
from saliency_jax.attributions.integrated_gradients import broadcast_baseline
from saliency_jax.attributions.integrated_gradients import integrated_gradients
from saliency_jax.attributions.smoothgrad import draw_noise
from saliency_jax.attributions.smoothgrad import noise_std

Array = jax.Array


def smooth_integrated_gradients(
    logits_fn: Callable[[Array], Array], images: Array, targets: Array, *,
    key: Optional[Array] = None, samples: int = 25, spread: float = 0.15,
    squared: bool = True, baseline: Baseline = 0.0, steps: int = 25,
    noise: Optional[Array] = None, indices: Optional[Array] = None,
    max_grads_in_flight: Optional[int] = None) -> Array:
  """SmoothGrad-IG maps, float32 [B,H,W,C]; arguments as `smoothgrad` and
  `integrated_gradients`. Noisy copies are processed one at a time (a `lax.scan`), each as one
  chunked IG over the batch, so memory is bounded by `max_grads_in_flight`."""
  images, targets = _engine.check_images(images, targets)
  b = images.shape[0]
  shape = images.shape[1:]
  base = broadcast_baseline(baseline, images)
  if noise is None:
    if key is None:
      raise ValueError("smooth_integrated_gradients needs a `key` (or explicit `noise`)")
    indices = _engine.resolve_indices(indices, b)
    std = noise_std(images, spread)
  else:
    noise = jnp.asarray(noise, jnp.float32)
    if noise.shape != (b, samples) + shape:
      raise ValueError(f"noise must have shape {(b, samples) + shape}, got {noise.shape}")

  def one_copy(total, s):
    if noise is None:
      eps = jax.vmap(lambda i, sd: draw_noise(key, i, s, sd, shape))(indices, std)
    else:
      eps = noise[:, s]
    ig = integrated_gradients(logits_fn, images + eps, targets, baseline=base, steps=steps,
                              max_grads_in_flight=max_grads_in_flight)
    return total + (ig * ig if squared else ig), None

  total, _ = jax.lax.scan(one_copy, jnp.zeros(images.shape, jnp.float32), jnp.arange(samples))
  return total / samples
