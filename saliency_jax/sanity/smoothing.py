"""sMPRT's smoothing (Hedström et al. 2023): a method's map averaged over noisy copies.

`smoothed(method)` is a MapMethod whose map of an image is the mean of the method's maps of
`smooth_samples` copies of it with Gaussian noise of std `smooth_noise` x (max - min) of the
image (Quantus' SmoothMPRT defaults: 50 copies, 0.1). Maps that are undefined (constant, NaN)
are left out of the mean. Copy j of the image with dataset index i gets its noise from
fold_in(fold_in(fold_in(key, SMOOTHING_STREAM), i), j) and is passed to the method as dataset
index i * smooth_samples + j, so a noisy method (SmoothGrad) draws different noise per copy and
no map depends on batching.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attributions import registry

SMOOTHING_SETTINGS = {"smooth_samples": 50, "smooth_noise": 0.1}
SMOOTHING_STREAM = 0x5A17  # folds the key so the smoothing noise is not the method's own


def _noisy_copies(images, indices, key, samples: int, noise: float):
  std = noise * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
  stream = jax.random.fold_in(key, SMOOTHING_STREAM)

  def one(index, image, scale):
    keys = jax.vmap(lambda j: jax.random.fold_in(jax.random.fold_in(stream, index), j))(
      jnp.arange(samples)
    )
    draws = jax.vmap(lambda k: jax.random.normal(k, image.shape, jnp.float32))(keys)
    return image[None] + scale * draws

  return jax.vmap(one)(indices, images, std)


_noisy_copies_jit = jax.jit(_noisy_copies, static_argnums=(3, 4))


def smoothed(method: registry.MapMethod) -> registry.MapMethod:
  """The sMPRT version of `method` (same name; settings + smooth_samples, smooth_noise)."""

  def compute(model_fns, images, targets, *, indices=None, key=None, settings=None, prepared=None):
    del prepared  # the method prepares each noisy copy itself
    s = registry.merge_settings({**method.default_settings, **SMOOTHING_SETTINGS}, settings)
    samples, noise = int(s.pop("smooth_samples")), float(s.pop("smooth_noise"))
    if samples < 1 or noise < 0:
      raise ValueError(
        f"sMPRT needs smooth_samples >= 1 and smooth_noise >= 0, got {samples}, {noise}"
      )
    images = jnp.asarray(images, jnp.float32)
    b = images.shape[0]
    indices = jnp.arange(b, dtype=jnp.int32) if indices is None else jnp.asarray(indices, jnp.int32)
    key = jax.random.key(0) if key is None else key
    copies = _noisy_copies_jit(images, indices, key, samples, noise)
    copy_indices = (indices[:, None] * samples + jnp.arange(samples)[None]).reshape(-1)
    maps = method.compute(
      model_fns,
      copies.reshape((b * samples,) + images.shape[1:]),
      jnp.repeat(jnp.asarray(targets, jnp.int32), samples),
      indices=copy_indices,
      key=key,
      settings=s,
    )
    maps = np.asarray(maps, np.float64).reshape((b, samples) + tuple(maps.shape[1:]))
    defined = np.isfinite(maps)
    count = defined.sum(axis=1)
    mean = np.where(defined, maps, 0.0).sum(axis=1) / np.maximum(count, 1)
    return jnp.asarray(np.where(count > 0, mean, np.nan), jnp.float32)

  return dataclasses.replace(
    method,
    compute=compute,
    prepare=None,
    traceable=False,
    default_settings={**method.default_settings, **SMOOTHING_SETTINGS},
  )
