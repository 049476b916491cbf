"""Shared machinery: target-logit gradients, per-image keys and chunked sums over samples.

Every sample-based method (SmoothGrad, IG, ...) sums a per-(image, sample) contribution over
samples. `chunked_sum` does that as one compiled loop whose body evaluates at most
`max_grads_in_flight` model gradients at once, so memory stays bounded whatever the batch size,
and the loop has a fixed trip count so it works under `jax.jit` on any backend.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from saliency_jax.attributions import _execution

Array = jax.Array


def target_gradients(logits_fn: Callable[[Array], Array]) -> Callable[[Array, Array], Array]:
  """Returns grad_fn(x[N,...], targets[N]) -> d logits[n, targets[n]] / d x[n] for every n.

  One backward pass for the whole chunk: the gradient of the sum of the selected logits. This is
  exact for models without cross-example interactions (inference-mode batch norm), which is the
  contract of `logits_fn`.
  """

  def grad_fn(x, targets):
    def total(x):
      logits = logits_fn(x)
      return jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=1).sum()

    return jax.grad(total)(x)

  return grad_fn


def target_values(logits_fn: Callable[[Array], Array], x: Array, targets: Array) -> Array:
  """logits[n, targets[n]] for every n, float32 [N]."""
  logits = logits_fn(x)
  return jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=1)[:, 0]


def resolve_indices(indices: Array | None, batch: int) -> Array:
  """Each image's dataset index (default 0..B-1), the value noise keys are folded with."""
  if indices is None:
    return jnp.arange(batch, dtype=jnp.int32)
  indices = jnp.asarray(indices, dtype=jnp.int32)
  if indices.shape != (batch,):
    raise ValueError(f"indices must have shape ({batch},), got {indices.shape}")
  return indices


def check_images(images: Array, targets: Array) -> tuple[Array, Array]:
  """Validates the [B,H,W,C] / int[B] contract and returns them as arrays."""
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [B,H,W,C], got shape {images.shape}")
  targets = jnp.asarray(targets)
  if targets.shape != images.shape[:1]:
    raise ValueError(f"targets must have shape ({images.shape[0]},), got {targets.shape}")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be integers, got {targets.dtype}")
  return images.astype(jnp.float32), targets.astype(jnp.int32)


def sample_key(key: Array, index: Array, sample: Array) -> Array:
  """The key of one (image, sample) pair: depends on the dataset index, never on batching."""
  return jax.random.fold_in(jax.random.fold_in(key, index), sample)


def chunked_sum(
  contribution: Callable[[Array, Array], Array],
  num_images: int,
  num_samples: int,
  out_shape: tuple[int, ...],
  max_grads_in_flight: int | None,
) -> Array:
  """Sums contribution(image_idx[c], sample_idx[c]) -> [c, *out_shape] over samples, per image.

  Work items (image b, sample s) are enumerated image-major (item b * num_samples + s) and
  split into the fewest chunks of at most `max_grads_in_flight` items, of equal size (so at
  most n_chunks - 1 padded items, which repeat the last item and are masked out); chunks run
  in a `scan` (a single call when everything fits). Each chunk is added to its images by a
  one-hot matrix product (XLA's scatter-add is slow on the CPU). Returns float32
  [num_images, *out_shape].

  Inside `_execution.item_window(offset, count)` only items offset, ..., offset + count - 1
  are summed (the CPU plan's windows).
  """
  total = num_images * num_samples
  offset, count = _execution.take_item_window(total)
  n_chunks, c = _execution.plan_chunks(count, max_grads_in_flight)

  def body(acc, k):
    b, s, valid = window_items(offset, count, k * c, c, num_images, num_samples)
    return add_to_images(acc, b, valid, contribution(b, s)), None

  acc = jnp.zeros((num_images,) + tuple(out_shape), jnp.float32)
  if n_chunks == 1:
    acc, _ = body(acc, 0)
    return acc
  acc, _ = _execution.scan(body, acc, jnp.arange(n_chunks))
  return acc


def window_items(
  offset, count: int, start, size: int, num_images: int, num_samples: int
) -> tuple[Array, Array, Array]:
  """Items start .. start + size - 1 of the window (offset, count) of the image-major
  (image, sample) enumeration: (image, sample, valid), int32 [size] each; items past the window
  or outside 0 .. num_images * num_samples - 1 are not valid (clipped to a real item)."""
  total = num_images * num_samples
  local = start + jnp.arange(size)
  j = offset + local
  valid = (local < count) & (j >= 0) & (j < total)
  j = jnp.clip(j, 0, total - 1)
  return j // num_samples, j % num_samples, valid


def add_to_images(acc: Array, image: Array, valid: Array, values: Array) -> Array:
  """acc [num_images, ...] plus each valid item's values [n, ...] at its image: a one-hot
  matrix product (XLA's scatter-add is slow on the CPU)."""
  weights = (image[:, None] == jnp.arange(acc.shape[0])[None, :]) & valid[:, None]
  return acc + jnp.tensordot(
    weights.astype(jnp.float32), values, axes=(0, 0), precision=jax.lax.Precision.HIGHEST
  )


def map_in_chunks(
  fn: Callable[..., Array], *arrays: Array, max_grads_in_flight: int | None
) -> Array:
  """Applies a batch function fn(*chunks) over the leading axis, at most c rows at a time."""
  n = arrays[0].shape[0]
  # At most n_chunks - 1 padded rows.
  n_chunks, c = _execution.plan_chunks(n, max_grads_in_flight)
  if n_chunks == 1:
    return fn(*arrays)
  pad = n_chunks * c - n

  def padded(a):
    a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
    return a.reshape((n_chunks, c) + a.shape[1:])

  _, out = _execution.scan(lambda carry, xs: (carry, fn(*xs)), 0, tuple(padded(a) for a in arrays))
  return jax.tree.map(lambda o: o.reshape((n_chunks * c,) + o.shape[2:])[:n], out)


def jitted_gradients(
  logits_fn: Callable[[Array], Array], max_grads_in_flight: int | None
) -> Callable[[Array, Array], Array]:
  """jit(chunked target gradients of logits_fn), cached per function object (host loops)."""
  grad_fn = target_gradients(logits_fn)
  return _execution.cached(
    ("gradients", id(logits_fn), max_grads_in_flight),
    lambda: jax.jit(
      lambda x, t: map_in_chunks(grad_fn, x, t, max_grads_in_flight=max_grads_in_flight)
    ),
    owner=logits_fn,
  )
