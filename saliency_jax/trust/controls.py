"""Control maps: uninformative maps scored by every criterion like a method.

A control knows nothing of the model (Binder et al. 2023; Yona & Greenfeld 2021). What it scores
on a criterion is what that criterion gives away for free; a method that does not beat it on a
criterion where beating it is possible has shown nothing there. Every control is a stack of
float32 maps [N, H, W] in [0, 1]:

  NOISE         uniform noise, drawn afresh for every image, model and model state
  SOBEL         scikit-image's Sobel edge magnitude of the image, divided by its maximum
  BLOB          a centred Gaussian, the same for every image
  AVERAGE_MASK  the mean positive training mask, the same for every image

Which comparisons mean something (`APPLICABLE`):
  - utility: every control. A map that localizes must beat noise, edges, a central prior and
    the average lesion position.
  - randomization: SOBEL, BLOB and AVERAGE_MASK do not depend on the model, so the trained and
    the randomized model's maps are the same map (similarity 1): they are the insensitive maps
    the criterion exists to catch, and a method must beat them. NOISE is drawn afresh per model
    state, so it is as dissimilar as two maps can be by construction: it shows that the
    criterion rewards randomness, and no method is asked to beat it.
  - repeatability, reproducibility: the model-independent controls are the same map for every
    replicate and architecture (similarity 1), a ceiling no method can beat, which shows that
    these criteria reward ignoring the model; only NOISE (a floor) must be beaten.
"""

from __future__ import annotations

from collections.abc import Sequence
import zlib

import numpy as np
from scipy import ndimage

NOISE = "NOISE"
SOBEL = "SOBEL"
BLOB = "BLOB"
AVERAGE_MASK = "AVERAGE_MASK"
CONTROLS = (NOISE, SOBEL, BLOB, AVERAGE_MASK)
MODEL_INDEPENDENT = (SOBEL, BLOB, AVERAGE_MASK)

# Records name a control's maps "control:<NAME>", apart from the methods and baselines.
RECORD_PREFIX = "control:"

# Per criterion, the controls a trustworthy method must beat (see the module docstring).
APPLICABLE = {
  "utility": CONTROLS,
  "randomization": MODEL_INDEPENDENT,
  "repeatability": (NOISE,),
  "reproducibility": (NOISE,),
}

# Why a control is left out of a criterion's comparison, for the report.
NOT_APPLICABLE_WHY = {
  "randomization": (
    "NOISE is drawn afresh for every model state, so it passes by "
    "construction: the criterion rewards randomness."
  ),
  "repeatability": (
    "SOBEL, BLOB and AVERAGE_MASK are the same map for every replicate "
    "(similarity 1): a ceiling that rewards ignoring the model."
  ),
  "reproducibility": (
    "SOBEL, BLOB and AVERAGE_MASK are the same map for every "
    "architecture (similarity 1): a ceiling that rewards ignoring the "
    "model."
  ),
}

# scikit-image's Sobel weights (skimage.filters.edges): derivative along one axis, smoothing
# along the other.
_EDGE = np.array([1.0, 0.0, -1.0])
_SMOOTH = np.array([1.0, 2.0, 1.0]) / 4.0


def record_name(name: str) -> str:
  """The method name under which a control's records are written."""
  return RECORD_PREFIX + name


def _stable_hash(text: str) -> int:
  return zlib.crc32(text.encode())


def noise_maps(ids: Sequence[str], shape: tuple[int, int], *, seed: int, salt: str) -> np.ndarray:
  """Uniform [0, 1) noise per image, float32 [N, H, W].

  Image i's map depends only on (seed, salt, ids[i]): the same image gets the same map
  wherever it appears, and a different salt (model and state) gives independent noise.
  """
  out = np.empty((len(ids),) + tuple(shape), np.float32)
  for i, image_id in enumerate(ids):
    rng = np.random.default_rng([seed, _stable_hash(salt), _stable_hash(str(image_id))])
    out[i] = rng.random(shape, dtype=np.float32)
  return out


def sobel_edges(images: np.ndarray) -> np.ndarray:
  """Sobel edge magnitude of each image, = `skimage.filters.sobel(image)`, float64 [N, H, W].

  sqrt((Gy^2 + Gx^2) / 2) with 'reflect' borders, computed for the whole stack at once by
  separable 1-D convolutions over the image axes. `images` is [N, H, W] or [N, H, W, C]
  (channels averaged first); integer images are used as they are (scikit-image scales them
  to [0, 1] first, which only scales the magnitude).
  """
  images = np.asarray(images)
  if images.ndim == 4:
    images = images.mean(axis=-1)
  if images.ndim != 3:
    raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
  x = images.astype(np.float64)
  total = np.zeros_like(x)
  for edge_axis, smooth_axis in ((1, 2), (2, 1)):
    g = ndimage.convolve1d(x, _EDGE, axis=edge_axis, mode="reflect")
    g = ndimage.convolve1d(g, _SMOOTH, axis=smooth_axis, mode="reflect")
    total += g * g
  return np.sqrt(total / 2)


def sobel_maps(images: np.ndarray) -> np.ndarray:
  """The SOBEL control: Sobel magnitude divided by its maximum, float32 [N, H, W] in [0, 1].

  A constant image has no edges: its map is all zeros (constant, so NaN under the metric
  policy wherever a criterion needs a map that ranks something).
  """
  edges = sobel_edges(images)
  peak = edges.reshape(len(edges), -1).max(axis=1)[:, None, None]
  return (edges / np.where(peak > 0, peak, 1.0)).astype(np.float32)


def gaussian_blob(shape: tuple[int, int], *, sigma: float) -> np.ndarray:
  """The BLOB control's map: exp(-r^2 / (2 s^2)) about the image centre, float32 [H, W].

  r is the distance in pixels from ((H - 1) / 2, (W - 1) / 2); s = sigma * min(H, W), so
  `sigma` is a fraction of the shorter side. The peak is 1 (exactly so for odd sizes).
  """
  if not sigma > 0:
    raise ValueError(f"controls.blob_sigma must be positive, got {sigma}")
  height, width = shape
  s = sigma * min(height, width)
  y = np.arange(height) - (height - 1) / 2
  x = np.arange(width) - (width - 1) / 2
  r2 = y[:, None] ** 2 + x[None, :] ** 2
  return np.exp(-r2 / (2 * s * s)).astype(np.float32)


def control_maps(
  name: str,
  *,
  ids: Sequence[str],
  images: np.ndarray,
  seed: int,
  salt: str,
  blob_sigma: float,
  average_mask: np.ndarray | None,
) -> np.ndarray:
  """The maps of control `name` for a set of images, float32 [N, H, W] in [0, 1].

  Args:
    name: one of `CONTROLS`.
    ids: the images' ids (seed the noise).
    images: [N, H, W] or [N, H, W, C] images (SOBEL; their shape sets every control's shape).
    seed: the study's seed.
    salt: names the model and state the map stands for (NOISE only).
    blob_sigma: BLOB's width, a fraction of the shorter image side.
    average_mask: [H, W] mean positive training mask (AVERAGE_MASK only).
  """
  images = np.asarray(images)
  n, shape = images.shape[0], tuple(images.shape[1:3])
  if len(ids) != n:
    raise ValueError(f"{len(ids)} ids for {n} images")
  if name == NOISE:
    return noise_maps(ids, shape, seed=seed, salt=salt)
  if name == SOBEL:
    return sobel_maps(images)
  if name == BLOB:
    return np.broadcast_to(gaussian_blob(shape, sigma=blob_sigma), (n,) + shape).copy()
  if name == AVERAGE_MASK:
    if average_mask is None:
      raise ValueError("the AVERAGE_MASK control needs the average training mask")
    mask = np.asarray(average_mask, np.float32).squeeze()
    if mask.shape != shape:
      raise ValueError(f"average mask of shape {mask.shape}, images of shape {shape}")
    return np.broadcast_to(mask, (n,) + shape).copy()
  raise ValueError(f"unknown control {name!r}; known: {', '.join(CONTROLS)}")
