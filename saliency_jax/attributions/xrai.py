"""XRAI (Kapishnikov et al., 2019) as PAIR's `saliency.core.XRAI`, batched.

1. Base attribution: integrated gradients from two baselines, the image's minimum and maximum
   value (constant images), `steps` alphas each (PAIR: 100), averaged; channels merged by max.
   Computed for the whole batch as one jitted, chunked IG over 2B paths (or, on the CPU
   plan, windows of them).
2. Segments: `xrai_segments.felzenszwalb_segments` per image (model-independent: pass them in
   via `segments` to reuse them for every model state), in parallel worker processes.
3. Region selection, equal to PAIR's output: "full" greedy for the whole batch as one JAX
   program (`xrai_selection_jax`), "fast" in NumPy (`xrai_selection`).
Steps 2-3 involve the host (scikit-image, NumPy), so `xrai` is not traceable under `jax.jit`.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attributions import _engine
from saliency_jax.attributions import xrai_segments
from saliency_jax.attributions import xrai_selection
from saliency_jax.attributions import xrai_selection_jax
from saliency_jax.attributions.integrated_gradients import integrated_gradients

Array = jax.Array


def xrai_base_attribution(
  logits_fn: Callable[[Array], Array],
  images: Array,
  targets: Array,
  *,
  steps: int = 100,
  max_grads_in_flight: int | None = None,
) -> Array:
  """PAIR XRAI's default attribution: mean of IG from the min and max baselines, [B,H,W,C].

  Its (image, item) pairs are 2 * steps items per image (the min baseline's steps, then the
  max's), so the CPU plan's item windows (`_execution.item_window`) fall through to IG's sum.
  """
  images, targets = _engine.check_images(images, targets)
  b = images.shape[0]
  lo = jnp.broadcast_to(images.min(axis=(1, 2, 3), keepdims=True), images.shape)
  hi = jnp.broadcast_to(images.max(axis=(1, 2, 3), keepdims=True), images.shape)
  # Each image's two paths side by side, so that its 2 * steps items are consecutive.
  baselines = jnp.stack([lo, hi], axis=1).reshape((2 * b,) + images.shape[1:])
  ig = integrated_gradients(
    logits_fn,
    jnp.repeat(images, 2, axis=0),
    jnp.repeat(targets, 2),
    baseline=baselines,
    steps=steps,
    max_grads_in_flight=max_grads_in_flight,
  )
  ig = ig.reshape((b, 2) + images.shape[1:])
  return (ig[:, 0] + ig[:, 1]) / 2


def xrai(
  logits_fn: Callable[[Array], Array] | None,
  images: Array,
  targets: Array | None = None,
  *,
  steps: int = 100,
  attributions: Array | None = None,
  segments: Sequence[np.ndarray] | None = None,
  algorithm: str = "full",
  area_threshold: float = 1.0,
  min_pixel_diff: int = 50,
  scales: Sequence[float] = xrai_segments.SCALES,
  sigma: float = xrai_segments.SIGMA,
  min_size: int = xrai_segments.MIN_SIZE,
  segmentation_size: tuple[int, int] | None = xrai_segments.RESIZE,
  dilation_radius: int = xrai_segments.DILATION_RADIUS,
  workers: int | None = None,
  max_grads_in_flight: int | None = None,
) -> np.ndarray:
  """XRAI maps, float32 [B,H,W], equal to PAIR's `XRAI.GetMask`.

  Args:
    logits_fn: images -> logits (unused when `attributions` is given).
    images: float [B,H,W,C].
    targets: int [B] (unused when `attributions` is given).
    steps: IG steps per baseline (PAIR: 100).
    attributions: precomputed base attributions [B,H,W,C] (or [B,H,W]) instead of IG.
    segments: per image, boolean masks [M_i,H,W] (or a list of [H,W] masks, or
      `xrai_selection_jax.prepare`'s Regions), instead of Felzenszwalb; PAIR's `segments`.
    algorithm: "full" (PAIR's default greedy) or "fast".
    area_threshold: "full" stops once this fraction of the image is covered (PAIR: 1.0).
    min_pixel_diff: masks adding fewer new pixels are dropped (PAIR: 50).
    scales, sigma, min_size, segmentation_size, dilation_radius: the segmentation
      (`xrai_segments.felzenszwalb_segments`; PAIR: 224x224 resize; None keeps the image size).
    workers: segmentation processes (default: CPU count; <= 1 serial).
    max_grads_in_flight: gradient chunk size of the IG step.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"images must be [B,H,W,C], got shape {images.shape}")
  b, h, w, _ = images.shape
  pending = None
  if segments is None:  # segment in worker processes while the model runs
    pending = xrai_segments.segment_batch_async(
      images,
      workers=workers,
      scales=tuple(scales),
      sigma=sigma,
      min_size=min_size,
      resize=None if segmentation_size is None else tuple(segmentation_size),
      dilation_radius=dilation_radius,
    )
  if attributions is None:
    if logits_fn is None or targets is None:
      raise ValueError("xrai needs logits_fn and targets, or precomputed `attributions`")
    attributions = xrai_base_attribution(
      logits_fn, images, targets, steps=steps, max_grads_in_flight=max_grads_in_flight
    )
  attr = np.asarray(attributions, np.float32)
  if attr.ndim == 4:
    attr = attr.max(axis=-1)
  if attr.shape != (b, h, w):
    raise ValueError(
      f"attributions must be [B,H,W,C] or [B,H,W] of the images' size, got {np.shape(attributions)}"
    )
  if pending is not None:
    segments = pending()
  if len(segments) != b:
    raise ValueError(f"segments must hold one entry per image ({b}), got {len(segments)}")
  segments = [
    seg if isinstance(seg, xrai_selection_jax.Regions) else np.asarray(seg, bool).reshape(-1, h, w)
    for seg in segments
  ]
  if algorithm == "full":  # every image at once on the device
    return xrai_selection_jax.select_full_batch(
      attr, segments, area_threshold=area_threshold, min_pixel_diff=min_pixel_diff
    ).astype(np.float32)
  out = np.empty((b, h, w), np.float32)
  for i, seg in enumerate(segments):
    masks = seg.masks.reshape(-1, h, w) if isinstance(seg, xrai_selection_jax.Regions) else seg
    out[i] = xrai_selection.select(
      attr[i],
      masks,
      algorithm=algorithm,
      area_threshold=area_threshold,
      min_pixel_diff=min_pixel_diff,
    )
  return out
