"""SmoothGrad (Smilkov et al., 2017): gradients averaged over noisy copies of the input.

As PAIR's `GetSmoothedMask`: noise std = spread * (max - min) of each image, `samples` draws,
and with `squared=True` (PAIR's default `magnitude=True`, the study's setting) the squared
gradients are averaged. Noise for sample s of the image with dataset index i is drawn from
fold_in(fold_in(key, i), s), so a map never depends on the batch or on chunking.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from saliency_jax.attributions import _engine

Array = jax.Array


def noise_std(images: Array, spread: float) -> Array:
  """spread * (max - min) of each image, float32 [B]."""
  return spread * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))


def noise_source(images: Array, *, key, noise, samples: int, spread: float, indices, method: str):
  """(indices, std, noise) of a noisy method: drawn noise (indices and std, from `key`) or
  injected noise [B, samples, H, W, C] (checked), whichever the caller gave."""
  b = images.shape[0]
  if noise is None:
    if key is None:
      raise ValueError(f"{method} needs a `key` (or explicit `noise`)")
    return _engine.resolve_indices(indices, b), noise_std(images, spread), None
  noise = jnp.asarray(noise, jnp.float32)
  expected = (b, samples) + tuple(images.shape[1:])
  if noise.shape != expected:
    raise ValueError(f"noise must have shape {expected}, got {noise.shape}")
  return indices, None, noise


def draw_noise(key: Array, index: Array, sample: Array, std: Array, shape) -> Array:
  """std * N(0, 1) noise of one (image, sample), from its own key."""
  return std * jax.random.normal(_engine.sample_key(key, index, sample), shape, jnp.float32)


def smoothgrad(
  logits_fn: Callable[[Array], Array],
  images: Array,
  targets: Array,
  *,
  key: Array | None = None,
  samples: int = 25,
  spread: float = 0.15,
  squared: bool = True,
  noise: Array | None = None,
  indices: Array | None = None,
  max_grads_in_flight: int | None = None,
) -> Array:
  """SmoothGrad maps, float32 [B,H,W,C].

  Args:
    logits_fn: images [N,H,W,C] -> logits [N,K].
    images: float [B,H,W,C].
    targets: int [B].
    key: noise key (required unless `noise` is given).
    samples: number of noisy copies per image.
    spread: noise std as a fraction of each image's value range.
    squared: average squared gradients (PAIR's magnitude=True); False averages gradients.
    noise: optional additive noise [B, samples, H, W, C] used instead of drawing it (to
      reproduce another implementation's draws exactly).
    indices: int [B] dataset indices the noise keys are folded with (default 0..B-1).
    max_grads_in_flight: at most this many gradients per backward pass.
  """
  images, targets = _engine.check_images(images, targets)
  b = images.shape[0]
  shape = images.shape[1:]
  indices, std, noise = noise_source(
    images,
    key=key,
    noise=noise,
    samples=samples,
    spread=spread,
    indices=indices,
    method="smoothgrad",
  )
  grad_fn = _engine.target_gradients(logits_fn)

  def contribution(bi, si):
    if noise is None:
      eps = jax.vmap(lambda i, s, sd: draw_noise(key, i, s, sd, shape))(indices[bi], si, std[bi])
    else:
      eps = noise[bi, si]
    g = grad_fn(images[bi] + eps, targets[bi])
    return g * g if squared else g

  total = _engine.chunked_sum(contribution, b, samples, shape, max_grads_in_flight)
  return total / samples
