"""XRAI as the study's method (`METHODS["XRAI"]`): its settings, `prepare` and `compute`.

`prepare` (model-independent, once per chunk of images and reused for every model state):
Felzenszwalb segments in worker processes, and the atoms the region selection works on.
`compute`: the IG attributions as one jitted computation (`IG_COMPUTE`; on the CPU, windows of
(image, step) items), then the region selection (`xrai.xrai`) and the grayscale step.
"""

import jax.numpy as jnp
import numpy as np

from saliency_jax.attributions import xrai as xrai_lib
from saliency_jax.attributions import xrai_segments
from saliency_jax.attributions import xrai_selection_jax
from saliency_jax.attributions._execution import COMMON_SETTINGS
from saliency_jax.attributions._execution import make_compute
from saliency_jax.attributions._execution import merge_settings
from saliency_jax.attributions.grayscale import visualize

DEFAULTS = {
  "steps": 100,
  "algorithm": "full",
  "area_threshold": 1.0,
  "min_pixel_diff": 50,
  "scales": xrai_segments.SCALES,
  "sigma": xrai_segments.SIGMA,
  "min_size": xrai_segments.MIN_SIZE,
  "segmentation_size": xrai_segments.RESIZE[0],
  "dilation_radius": xrai_segments.DILATION_RADIUS,
  "workers": None,
  # How region scores become the grayscale map: "abs", PAIR's VisualizeImageGrayscale of the
  # [H,W,1] map (|score|: a strongly negative region comes out bright), or "shifted": the
  # scores minus their minimum, so the grayscale keeps their order (lowest region darkest).
  "region_scores": "abs",
}


def _segmentation_size(size):
  """The `segmentation_size` setting (int: square; (h, w); None: the image's size)."""
  if size is None:
    return None
  if isinstance(size, (int, np.integer)):
    return (int(size), int(size))
  return tuple(int(v) for v in size)


def prepare(images, settings=None):
  """XRAI's regions of each image (model-independent): a list of `xrai_selection_jax.Regions`,
  the segments (bool [M_i, H*W]) with the atoms the region selection works on, so that every
  model state of a study reuses both.

  The segmentation runs on the image resized to `segmentation_size` (PAIR: 224); the study's
  CPU demo sets it to the image size (a cubic resize to the same size: the image up to
  rounding), which keeps Felzenszwalb's cost proportional to the image.
  """
  segments = _prepare_async(images, settings)()
  return [xrai_selection_jax.prepare(masks) for masks in segments]


def _prepare_async(images, settings=None):
  s = merge_settings({**COMMON_SETTINGS, **DEFAULTS}, settings)
  return xrai_segments.segment_batch_async(
    np.asarray(images, np.float32),
    workers=s["workers"],
    scales=tuple(s["scales"]),
    sigma=s["sigma"],
    min_size=s["min_size"],
    resize=_segmentation_size(s["segmentation_size"]),
    dilation_radius=s["dilation_radius"],
  )


def _ig_attr(fns, s, images, targets, indices, key):
  del indices, key
  return xrai_lib.xrai_base_attribution(
    fns.logits_fn,
    images,
    targets,
    steps=s["steps"],
    max_grads_in_flight=s["max_grads_in_flight"],
  )


def _ig_impl(fns, s, images, targets, indices, key, prepared):
  del prepared
  return _ig_attr(fns, s, images, targets, indices, key)


# The jitted model part of XRAI, returning [B,H,W,C] attributions; on the CPU, windows of
# (image, step) items like IG's.
IG_COMPUTE = make_compute(
  "XRAI_IG",
  _ig_impl,
  {"steps": 100, "max_grads_in_flight": 64, "compute_dtype": "float32"},
  lambda s: 2 * s["steps"],
  item_split=(_ig_attr, lambda s: 2 * s["steps"], lambda s: 1),
  grayscale=False,
)


def compute(model_fns, images, targets, *, indices=None, key=None, settings=None, prepared=None):
  """The study's XRAI map (host-side selection: not traceable under jit)."""
  del indices, key
  s = merge_settings({**COMMON_SETTINGS, **DEFAULTS}, settings)
  images = np.asarray(images, np.float32)
  targets = np.asarray(targets, np.int32)
  ig_settings = {
    "steps": s["steps"],
    "max_grads_in_flight": s["max_grads_in_flight"],
    "compute_dtype": s["compute_dtype"],
  }
  # Segments (when not prepared) are computed in worker processes while IG runs.
  pending = _prepare_async(images, s) if prepared is None else (lambda: prepared)
  attributions = np.asarray(IG_COMPUTE(model_fns, images, targets, settings=ig_settings))
  segments = pending()
  maps = xrai_lib.xrai(
    None,
    images,
    attributions=attributions,
    segments=segments,
    algorithm=s["algorithm"],
    area_threshold=s["area_threshold"],
    min_pixel_diff=s["min_pixel_diff"],
  )
  return visualize(jnp.asarray(xrai_region_scores(maps, s["region_scores"])), s)


def xrai_region_scores(maps: np.ndarray, how: str) -> np.ndarray:
  """XRAI's region scores [B,H,W] as given to the grayscale step (setting `region_scores`)."""
  if how == "shifted":
    return maps - maps.min(axis=(1, 2), keepdims=True)
  if how != "abs":
    raise ValueError(f"XRAI's region_scores must be 'abs' or 'shifted', got {how!r}")
  return maps  # the grayscale takes |score|, as PAIR's does of its [H,W,1] map
