"""Occlusion (Zeiler & Fergus, 2014), as PAIR's `Occlusion.GetMask`, batched.

A size x size window of `value` slides over every position where it fits; each pixel (every
channel) receives the sum, over the windows covering it, of logit(x) - logit(occluded x). The
forward passes of all (image, position) pairs run in chunks of 8 x `max_grads_in_flight` (a
forward pass needs far less memory than a gradient).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from saliency_jax.attributions import _engine
from saliency_jax.attributions import _execution

Array = jax.Array
FORWARDS_PER_GRADIENT = 8


def occlusion(
  logits_fn: Callable[[Array], Array],
  images: Array,
  targets: Array,
  *,
  size: int = 15,
  value: float = 0.0,
  max_grads_in_flight: int | None = None,
) -> Array:
  """Occlusion maps, float32 [B,H,W,C] (the same value in every channel, as PAIR)."""
  images, targets = _engine.check_images(images, targets)
  b, h, w, c = images.shape
  rows, cols = h - size + 1, w - size + 1
  if rows < 1 or cols < 1:  # the window never fits: PAIR returns zeros
    return jnp.zeros(images.shape, jnp.float32)
  base = _engine.target_values(logits_fn, images, targets)
  n_pos = rows * cols
  ys, xs = jnp.arange(h), jnp.arange(w)

  def occluded_values(item):
    bi, pos = item // n_pos, item % n_pos
    r, q = pos // cols, pos % cols
    inside = ((ys[None, :] >= r[:, None]) & (ys[None, :] < r[:, None] + size))[:, :, None] & (
      (xs[None, :] >= q[:, None]) & (xs[None, :] < q[:, None] + size)
    )[:, None, :]
    x = jnp.where(inside[..., None], jnp.float32(value), images[bi])
    return _engine.target_values(logits_fn, x, targets[bi])

  items = jnp.arange(b * n_pos)
  # Forward passes keep no activations for a backward pass: FORWARDS_PER_GRADIENT of them
  # take about the memory of one gradient.
  cap = _execution.chunk_size(b * n_pos, max_grads_in_flight) * FORWARDS_PER_GRADIENT
  values = _engine.map_in_chunks(occluded_values, items, max_grads_in_flight=cap)
  diff = (base[:, None] - values.reshape(b, n_pos)).reshape(b, rows, cols)
  # Each pixel sums the differences of the windows covering it: a box sum over positions.
  scores = jax.lax.reduce_window(
    diff,
    0.0,
    jax.lax.add,
    (1, size, size),
    (1, 1, 1),
    ((0, 0), (size - 1, size - 1), (size - 1, size - 1)),
  )
  return jnp.broadcast_to(scores[..., None], images.shape)
