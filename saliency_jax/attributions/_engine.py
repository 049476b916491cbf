"""Shared machinery: target-logit gradients, per-image keys and chunked sums over samples.

Every sample-based method (SmoothGrad, IG, ...) sums a per-(image, sample) contribution over
samples. `chunked_sum` does that as one compiled loop whose body evaluates at most
`max_grads_in_flight` model gradients at once, so memory stays bounded whatever the batch size,
and the loop has a fixed trip count so it works under `jax.jit` on any backend.
"""
import math
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

Array = jax.Array

# Default cap on model gradients evaluated at once (a chunk of the work of one call).
DEFAULT_MAX_GRADS_IN_FLIGHT = 64

# XLA:CPU runs the body of a while loop about 5x slower than the same ops outside a loop
# (measured here: a scan of one conv-net gradient chunk vs the chunk alone). On the CPU backend
# loops of up to this many iterations are therefore unrolled; longer ones stay loops (bounded
# compile time and memory; raise max_grads_in_flight to make them shorter).
CPU_MAX_UNROLL = 64


def scan(body, carry, xs=None, length=None):
  """lax.scan; on the CPU backend a short one is a Python loop (straight-line code).

  (`lax.scan(unroll=True)` still emits a while loop, with one trip, which keeps the slow path.)
  """
  n = length if xs is None else jax.tree.leaves(xs)[0].shape[0]
  if not (jax.default_backend() == "cpu" and n <= CPU_MAX_UNROLL):
    return jax.lax.scan(body, carry, xs, length=length)
  ys = []
  for i in range(n):
    carry, y = body(carry, i if xs is None else jax.tree.map(lambda a: a[i], xs))
    ys.append(y)
  if not ys or ys[0] is None:
    return carry, None
  return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)


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


def resolve_indices(indices: Optional[Array], batch: int) -> Array:
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


def chunk_size(total: int, max_grads_in_flight: Optional[int]) -> int:
  cap = DEFAULT_MAX_GRADS_IN_FLIGHT if max_grads_in_flight is None else int(max_grads_in_flight)
  if cap < 1:
    raise ValueError(f"max_grads_in_flight must be >= 1, got {cap}")
  return max(1, min(cap, total))


# On the CPU backend chunks are at most this large (unless that would need more than
# CPU_MAX_UNROLL of them). Per-gradient cost varies little between batches of 8 and 64 there,
# while every chunk is a copy of the gradient in the unrolled program: larger chunks compile
# faster (measured: 25-sample SmoothGrad of 8 64x64 images, 4 s with chunks of 64 vs 8 s of 16).
CPU_CHUNK = 64


def plan_chunks(total: int, max_grads_in_flight: Optional[int]) -> tuple[int, int]:
  """(number of chunks, chunk size) for `total` items: equal chunks within the cap."""
  c = chunk_size(total, max_grads_in_flight)
  if jax.default_backend() == "cpu":
    c = min(c, max(CPU_CHUNK, math.ceil(total / CPU_MAX_UNROLL)))
  n_chunks = math.ceil(total / c)
  return n_chunks, math.ceil(total / n_chunks)


def chunked_sum(contribution: Callable[[Array, Array], Array], num_images: int,
                num_samples: int, out_shape: tuple[int, ...],
                max_grads_in_flight: Optional[int],
                item_window: Optional[tuple[Union[int, Array], int]] = None) -> Array:
  """Sums contribution(image_idx[c], sample_idx[c]) -> [c, *out_shape] over samples, per image.

  Work items (image b, sample s) are enumerated image-major (item b * num_samples + s) and
  split into the fewest chunks of at most `max_grads_in_flight` items, of equal size (so at
  most n_chunks - 1 padded items, which repeat the last item and are masked out); chunks run
  in a `scan` (a single call when everything fits). Each chunk is added to its images by a
  one-hot matrix product (XLA's scatter-add is slow on the CPU). Returns float32
  [num_images, *out_shape].

  item_window: (offset, count) sums only items offset, ..., offset + count - 1 (offset may be
  traced; items outside 0 .. num_images * num_samples - 1 count as zero), so that disjoint
  windows add up to the whole sum. Default: every item.
  """
  total = num_images * num_samples
  offset, count = (0, total) if item_window is None else item_window
  n_chunks, c = plan_chunks(count, max_grads_in_flight)

  def body(acc, k):
    b, s, valid = window_items(offset, count, k * c, c, num_images, num_samples)
    return add_to_images(acc, b, valid, contribution(b, s)), None

  acc = jnp.zeros((num_images,) + tuple(out_shape), jnp.float32)
  if n_chunks == 1:
    acc, _ = body(acc, 0)
    return acc
  acc, _ = scan(body, acc, jnp.arange(n_chunks))
  return acc


def window_items(offset, count: int, start, size: int, num_images: int,
                 num_samples: int) -> tuple[Array, Array, Array]:
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
  return acc + jnp.tensordot(weights.astype(jnp.float32), values, axes=(0, 0),
                             precision=jax.lax.Precision.HIGHEST)


def map_in_chunks(fn: Callable[..., Array], *arrays: Array,
                  max_grads_in_flight: Optional[int]) -> Array:
  """Applies a batch function fn(*chunks) over the leading axis, at most c rows at a time."""
  n = arrays[0].shape[0]
  n_chunks, c = plan_chunks(n, max_grads_in_flight)   # at most n_chunks - 1 padded rows
  if n_chunks == 1:
    return fn(*arrays)
  pad = n_chunks * c - n

  def padded(a):
    a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
    return a.reshape((n_chunks, c) + a.shape[1:])

  _, out = scan(lambda carry, xs: (carry, fn(*xs)), 0, tuple(padded(a) for a in arrays))
  return jax.tree.map(lambda o: o.reshape((n_chunks * c,) + o.shape[2:])[:n], out)


_GRADIENT_JITS: dict = {}


def jitted_gradients(logits_fn: Callable[[Array], Array],
                     max_grads_in_flight: Optional[int]) -> Callable[[Array, Array], Array]:
  """jit(chunked target gradients of logits_fn), cached per function object (host loops)."""
  key = (id(logits_fn), max_grads_in_flight)
  entry = _GRADIENT_JITS.get(key)
  if entry is None or entry[0] is not logits_fn:
    grad_fn = target_gradients(logits_fn)
    entry = (logits_fn, jax.jit(lambda x, t: map_in_chunks(
        grad_fn, x, t, max_grads_in_flight=max_grads_in_flight)))
    if len(_GRADIENT_JITS) >= 16:
      _GRADIENT_JITS.pop(next(iter(_GRADIENT_JITS)))
    _GRADIENT_JITS[key] = entry
  return entry[1]
