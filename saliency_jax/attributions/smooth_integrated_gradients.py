"""SmoothGrad over integrated gradients (the study's SIG), as PAIR's
`IntegratedGradients.GetSmoothedMask`: IG of each noisy copy x + n (baseline fixed), squared
(`squared=True`, PAIR's magnitude=True) and averaged over the copies. Noise keys are per dataset
index and sample, as in `smoothgrad` (same key -> same noise as SmoothGrad's first samples).
"""

from collections.abc import Callable
import math

import jax
import jax.numpy as jnp

from saliency_jax.attributions import _engine
from saliency_jax.attributions import _execution
from saliency_jax.attributions.integrated_gradients import Baseline
from saliency_jax.attributions.integrated_gradients import broadcast_baseline
from saliency_jax.attributions.integrated_gradients import integrated_gradients
from saliency_jax.attributions.smoothgrad import draw_noise
from saliency_jax.attributions.smoothgrad import noise_source

Array = jax.Array
GROUP_BYTES = 256 * 2**20


def smooth_integrated_gradients(
  logits_fn: Callable[[Array], Array],
  images: Array,
  targets: Array,
  *,
  key: Array | None = None,
  samples: int = 25,
  spread: float = 0.15,
  squared: bool = True,
  baseline: Baseline = 0.0,
  steps: int = 25,
  noise: Array | None = None,
  indices: Array | None = None,
  max_grads_in_flight: int | None = None,
) -> Array:
  """SmoothGrad-IG maps, float32 [B,H,W,C]; arguments as `smoothgrad` and
  `integrated_gradients`. Memory is bounded by `max_grads_in_flight` gradients.

  Its (image, item) pairs for the CPU plan's item windows (`_execution.item_window`) are the
  (image, noisy copy) pairs; each copy's IG then sums all its steps.
  """
  images, targets = _engine.check_images(images, targets)
  b = images.shape[0]
  shape = images.shape[1:]
  base = broadcast_baseline(baseline, images)
  indices, std, noise = noise_source(
    images,
    key=key,
    noise=noise,
    samples=samples,
    spread=spread,
    indices=indices,
    method="smooth_integrated_gradients",
  )
  total_items = b * samples
  offset, count = _execution.take_item_window(total_items)

  # The (image, copy) paths are processed in groups of g, each group one chunked IG (chunks of
  # at most max_grads_in_flight gradients); g is as large as the per-path accumulators allow
  # (GROUP_BYTES), so the chunks are few and full.
  cap = _execution.chunk_size(count * steps, max_grads_in_flight)
  per_path = math.prod(shape) * 4 * 3  # noisy input, IG and square of one path
  g = max(1, min(count, GROUP_BYTES // per_path))
  n_groups = math.ceil(count / g)

  def group(total, gi):
    image, copy, valid = _engine.window_items(offset, count, gi * g, g, b, samples)
    if noise is None:
      eps = jax.vmap(lambda i, n, sd: draw_noise(key, i, n, sd, shape))(
        indices[image], copy, std[image]
      )
    else:
      eps = noise[image, copy]
    ig = integrated_gradients(
      logits_fn,
      images[image] + eps,
      targets[image],
      baseline=base[image],
      steps=steps,
      max_grads_in_flight=cap,
    )
    return _engine.add_to_images(total, image, valid, ig * ig if squared else ig), None

  total, _ = _execution.scan(group, jnp.zeros(images.shape, jnp.float32), jnp.arange(n_groups))
  return total / samples
