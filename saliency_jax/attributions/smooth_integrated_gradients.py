"""SmoothGrad over integrated gradients (the study's SIG), as PAIR's
`IntegratedGradients.GetSmoothedMask`: IG of each noisy copy x + n (baseline fixed), squared
(`squared=True`, PAIR's magnitude=True) and averaged over the copies. Noise keys are per dataset
index and sample, as in `smoothgrad` (same key -> same noise as SmoothGrad's first samples).
"""
import math
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from saliency_jax.attributions import _engine
from saliency_jax.attributions.integrated_gradients import Baseline
from saliency_jax.attributions.integrated_gradients import broadcast_baseline
from saliency_jax.attributions.integrated_gradients import integrated_gradients
from saliency_jax.attributions.smoothgrad import draw_noise
from saliency_jax.attributions.smoothgrad import noise_source

Array = jax.Array
GROUP_BYTES = 256 * 2**20


def smooth_integrated_gradients(
    logits_fn: Callable[[Array], Array], images: Array, targets: Array, *,
    key: Optional[Array] = None, samples: int = 25, spread: float = 0.15,
    squared: bool = True, baseline: Baseline = 0.0, steps: int = 25,
    noise: Optional[Array] = None, indices: Optional[Array] = None,
    max_grads_in_flight: Optional[int] = None, sample_start: Union[int, Array] = 0,
    sample_count: Optional[int] = None) -> Array:
  """SmoothGrad-IG maps, float32 [B,H,W,C]; arguments as `smoothgrad` and
  `integrated_gradients`. Memory is bounded by `max_grads_in_flight` gradients.

  `sample_start` (may be traced) and `sample_count` (static) restrict the sum to the noisy
  copies sample_start, ..., sample_start + sample_count - 1 (those past `samples` count as
  zero), still divided by `samples`: the results of disjoint ranges add up to the map of all
  copies (to float32 rounding). Default: every copy.
  """
  images, targets = _engine.check_images(images, targets)
  b = images.shape[0]
  shape = images.shape[1:]
  base = broadcast_baseline(baseline, images)
  indices, std, noise = noise_source(images, key=key, noise=noise, samples=samples,
                                     spread=spread, indices=indices,
                                     method="smooth_integrated_gradients")
  count = samples if sample_count is None else int(sample_count)
  if count < 1:
    raise ValueError(f"sample_count must be >= 1, got {count}")

  # Noisy copies are processed in groups of g, each group one chunked IG over its B*g paths
  # (chunks of at most max_grads_in_flight gradients); g is as large as the per-path
  # accumulators allow (GROUP_BYTES), so the chunks are few and full.
  cap = _engine.chunk_size(b * count * steps, max_grads_in_flight)
  per_copy = b * math.prod(shape) * 4 * 3      # noisy inputs, IG and squares of one copy
  g = max(1, min(count, GROUP_BYTES // per_copy))
  n_groups = math.ceil(count / g)
  path_image = jnp.repeat(jnp.arange(b), g)           # path p = (image p // g, copy p % g)
  path_copy = jnp.tile(jnp.arange(g), b)

  def group(total, gi):
    offset = gi * g + path_copy
    copy = sample_start + offset
    valid = (offset < count) & (copy < samples)
    copy = jnp.minimum(copy, samples - 1)
    if noise is None:
      eps = jax.vmap(lambda i, n, sd: draw_noise(key, i, n, sd, shape))(
          indices[path_image], copy, std[path_image])
    else:
      eps = noise[path_image, copy]
    ig = integrated_gradients(logits_fn, images[path_image] + eps, targets[path_image],
                              baseline=base[path_image], steps=steps,
                              max_grads_in_flight=cap)
    value = ig * ig if squared else ig
    value = jnp.where(valid.reshape((-1,) + (1,) * len(shape)), value, 0.0)
    return total + value.reshape((b, g) + shape).sum(axis=1), None

  total, _ = _engine.scan(group, jnp.zeros(images.shape, jnp.float32), jnp.arange(n_groups))
  return total / samples
