"""Grad-CAM (Selvaraju et al., 2017) at any layer split of a model.

channel weights = mean over positions of d logit[target] / d features; map = ReLU(sum_c w_c
feats_c); divided by its maximum (an all-zero map stays zero, as PAIR core guards); resized to
the image size.

Resize convention. PAIR `saliency.core` 0.2.x resizes with scikit-image (bilinear, half-pixel
centres); the study's code ran PAIR for TensorFlow 1, which resized with
`tf.image.resize_bilinear` (legacy corner-aligned-at-origin sampling). The two differ by up to
about 0.2 on a [0,1] map. The default here is the study's ("tf1_bilinear"); "skimage_bilinear"
reproduces PAIR core (tested against it). The TF1 code also divided by a zero maximum (NaN maps
for all-zero Grad-CAMs); we return zeros, and `to_grayscale` then gives NaN exactly as the
study's pipeline did for such constant maps.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from saliency_jax.attributions import _engine
from saliency_jax.attributions.resize import resize_bilinear

Array = jax.Array


def _cam_chunk(features_fn, head_fn, x, targets):
  feats = features_fn(x)

  def total(f):
    logits = head_fn(f)
    return jnp.take_along_axis(logits, targets[:, None], axis=1).sum()

  grads = jax.grad(total)(feats)
  weights = grads.mean(axis=(1, 2))  # [N, c]
  cam = jnp.einsum("nhwc,nc->nhw", feats, weights, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(cam, 0.0)


def gradcam(
  features_fn: Callable[[Array], Array],
  head_fn: Callable[[Array], Array],
  images: Array,
  targets: Array,
  *,
  resize: str | None = "tf1_bilinear",
  max_grads_in_flight: int | None = None,
) -> Array:
  """Grad-CAM maps.

  Args:
    features_fn: images [N,H,W,C] -> features [N,h,w,c] (the Grad-CAM layer).
    head_fn: features -> logits [N,K].
    images: float [B,H,W,C].
    targets: int [B].
    resize: "tf1_bilinear" (the study's code, default), "skimage_bilinear" (PAIR core), or None
      for the raw ReLU map at feature resolution, not normalized (PAIR's should_resize=False).
    max_grads_in_flight: at most this many images per backward pass.

  Returns:
    float32 [B,H,W] in [0,1] (or [B,h,w] unnormalized when resize is None).
  """
  images, targets = _engine.check_images(images, targets)
  cam = _engine.map_in_chunks(
    lambda x, t: _cam_chunk(features_fn, head_fn, x, t),
    images,
    targets,
    max_grads_in_flight=max_grads_in_flight,
  )
  if resize is None:
    return cam
  peak = cam.max(axis=(1, 2), keepdims=True)
  cam = jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)
  return resize_bilinear(cam, images.shape[1:3], resize)
