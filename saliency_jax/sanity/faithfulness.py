"""Faithfulness of a map to its model: deletion, insertion, ROAD and PAIR's PIC curves.

Every curve follows the model's output for the explained class as pixels are removed from or
added to the image in the order the map ranks them.

* Deletion / insertion (Petsiuk et al. 2018, RISE): at fractions k / steps (k = 0..steps) the
  top-ranked pixels are replaced by a baseline image (deletion, starting from the image) or
  restored on it (insertion, starting from the baseline); the score is the trapezoid area under
  the output-vs-fraction curve. Baselines: "blur" (SciPy's Gaussian filter of the image) or
  "mean" (each image's per-channel mean). A faithful map has a low deletion and a high insertion
  area.
* ROAD (Rong et al. 2022): at each fraction the removed pixels are filled by noisy linear
  imputation (each removed pixel the weighted mean of its 8 neighbours, direct ones 1/6,
  diagonal ones 1/12, solved as one sparse linear system, plus Gaussian noise), removing the
  most relevant first (MoRF, low is faithful) or the least relevant first (LeRF, high is
  faithful); the score is the mean output over the fractions.
* SIC / AIC (Kapishnikov et al. 2019, PAIR's `saliency.metrics`): `pic_auc` is
  `compute_pic_metric` with the model's predictions batched over thresholds.

The output is the probability of the explained class (column `targets[i]` of `probs_fn`). Ranks
break ties by pixel order (row-major), so a constant map removes pixels in raster order.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from scipy import sparse
from scipy.sparse import linalg as sparse_linalg

ProbsFn = Callable[[np.ndarray], np.ndarray]  # images [M,H,W,C] -> probabilities [M,K]

BASELINES = ("blur", "mean")


def pixel_ranks(maps: np.ndarray) -> np.ndarray:
  """Rank of each pixel, 0 = most salient, ties by raster order: int [N,H,W]. NaN ranks last."""
  maps = np.asarray(maps, np.float64)
  flat = np.nan_to_num(maps.reshape(len(maps), -1), nan=-np.inf)
  order = np.argsort(-flat, axis=1, kind="stable")
  ranks = np.empty_like(order)
  np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None], axis=1)
  return ranks.reshape(maps.shape)


def baseline_images(images: np.ndarray, kind: str, blur_sigma: float) -> np.ndarray:
  """The images with all information removed: "blur" or "mean", float32 [N,H,W,C]."""
  images = np.asarray(images, np.float32)
  if kind == "blur":
    return ndimage.gaussian_filter(images, (0, blur_sigma, blur_sigma, 0), mode="nearest").astype(
      np.float32
    )
  if kind == "mean":
    return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape).copy()
  raise ValueError(f"faithfulness baseline must be one of {BASELINES}, got {kind!r}")


def fractions(steps: int) -> np.ndarray:
  if steps < 1:
    raise ValueError(f"faithfulness steps must be >= 1, got {steps}")
  return np.arange(steps + 1) / steps


def _counts(fracs: np.ndarray, num_pixels: int) -> np.ndarray:
  return np.round(np.asarray(fracs) * num_pixels).astype(np.int32)


@jax.jit
def _composites(images, baselines, ranks, counts, insert):
  """[S,B,H,W,C]: at step s the pixels ranked below counts[s] come from `baselines`
  (deletion) or from `images` on the baseline (insertion)."""
  top = ranks[None, ..., None] < counts[:, None, None, None, None]
  keep_image = jnp.where(insert, top, ~top)
  return jnp.where(keep_image, images[None], baselines[None])


def _target_outputs(probs_fn: ProbsFn, stack: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """probs_fn on a step-major stack [S*N,...] of N images: the targets' columns, [N, S]."""
  targets = np.asarray(targets, np.int64)
  probs = np.asarray(probs_fn(stack), np.float64)
  rows = np.tile(targets, len(stack) // len(targets))
  return probs[np.arange(len(rows)), rows].reshape(-1, len(targets)).T


def perturbation_curves(
  images: np.ndarray,
  maps: np.ndarray,
  targets: np.ndarray,
  probs_fn: ProbsFn,
  *,
  steps: int,
  baseline: str,
  blur_sigma: float,
  insertion: bool,
) -> np.ndarray:
  """The model's output along a deletion (or insertion) curve: float64 [N, steps + 1]."""
  images = np.asarray(images, np.float32)
  base = baseline_images(images, baseline, blur_sigma)
  ranks = pixel_ranks(maps)
  counts = _counts(fractions(steps), ranks[0].size)
  stack = _composites(images, base, ranks, jnp.asarray(counts), insertion)
  return _target_outputs(probs_fn, stack.reshape((-1,) + images.shape[1:]), targets)


def curve_area(curves: np.ndarray, steps: int) -> np.ndarray:
  """Trapezoid area under curves sampled at fractions k / steps: float64 [N]."""
  return np.trapezoid(np.asarray(curves, np.float64), fractions(steps), axis=-1)


# ROAD's neighbour weights: (row offset, column offset) -> weight; they sum to 1.
ROAD_WEIGHTS = (
  ((1, 1), 1 / 12),
  ((0, 1), 1 / 6),
  ((-1, 1), 1 / 12),
  ((1, -1), 1 / 12),
  ((0, -1), 1 / 6),
  ((-1, -1), 1 / 12),
  ((1, 0), 1 / 6),
  ((-1, 0), 1 / 6),
)


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
  """ROAD's linear imputation (without noise) of the `removed` pixels of one image [H,W,C].

  Each removed pixel equals the weighted mean of its in-image neighbours (weights renormalized
  at the border), known neighbours entering as constants: one sparse system for all of them.
  """
  h, w = removed.shape
  flat = np.asarray(image, np.float64).reshape(h * w, -1)
  removed = np.asarray(removed, bool).ravel()
  unknown = np.flatnonzero(removed)
  if unknown.size == 0:
    return flat.reshape(image.shape).astype(np.float32)
  variable = np.full(h * w, -1)
  variable[unknown] = np.arange(unknown.size)
  rows, cols = np.divmod(unknown, w)
  a_rows, a_cols, a_vals = [], [], []
  rhs = np.zeros((unknown.size, flat.shape[1]))
  total = np.zeros(unknown.size)
  for (dr, dc), weight in ROAD_WEIGHTS:
    r, c = rows + dr, cols + dc
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    eq = np.flatnonzero(inside)
    neighbour = r[inside] * w + c[inside]
    total[eq] += weight
    known = ~removed[neighbour]
    rhs[eq[known]] -= weight * flat[neighbour[known]]
    a_rows.append(eq[~known])
    a_cols.append(variable[neighbour[~known]])
    a_vals.append(np.full((~known).sum(), weight))
  a_rows.append(np.arange(unknown.size))
  a_cols.append(np.arange(unknown.size))
  a_vals.append(-total)
  system = sparse.csc_matrix(
    (np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))),
    shape=(unknown.size, unknown.size),
  )
  solution = sparse_linalg.spsolve(system, rhs).reshape(unknown.size, -1)
  out = flat.copy()
  out[unknown] = solution
  return out.reshape(image.shape).astype(np.float32)


def road_curves(
  images: np.ndarray,
  maps: np.ndarray,
  targets: np.ndarray,
  probs_fn: ProbsFn,
  *,
  percentages: Sequence[float],
  most_relevant_first: bool,
  noise: float,
  seed: int,
) -> np.ndarray:
  """The model's output on ROAD-imputed images, one column per percentage: float64 [N, P]."""
  images = np.asarray(images, np.float32)
  ranks = pixel_ranks(maps)
  n, h, w = ranks.shape
  if not most_relevant_first:
    ranks = h * w - 1 - ranks  # least relevant first
  rng = np.random.default_rng(seed)
  counts = _counts(percentages, h * w)
  imputed = np.empty((len(counts), n) + images.shape[1:], np.float32)
  for p, count in enumerate(counts):
    for i in range(n):
      removed = ranks[i] < count
      filled = linear_imputation(images[i], removed)
      filled[removed] += noise * rng.standard_normal(filled[removed].shape).astype(np.float32)
      imputed[p, i] = filled
  return _target_outputs(probs_fn, imputed.reshape((-1,) + images.shape[1:]), targets)


def random_mask(shape: tuple[int, int], fraction: float, seed: int) -> np.ndarray:
  """PAIR's generate_random_mask with its own seeded generator: bool [H,W]."""
  mask = np.zeros(shape, bool)
  size = mask.size
  mask.ravel()[np.random.default_rng(seed).choice(size, int(size * fraction), replace=False)] = True
  return mask


def pic_images(
  image: np.ndarray, saliency_map: np.ndarray, mask: np.ndarray, thresholds: Sequence[float]
) -> list[np.ndarray]:
  """PIC's images of one uint8 image: [fully blurred, then one per threshold] (PAIR's
  create_blurred_image from the `mask` pixels and those of the top `threshold` fraction)."""
  from saliency.metrics import pic  # pylint: disable=g-import-not-at-top

  if image.dtype != np.uint8:
    raise ValueError(f"PIC needs uint8 images, got {image.dtype}")
  out = [pic.create_blurred_image(image, mask)]
  for threshold in thresholds:
    top = saliency_map >= np.quantile(saliency_map, 1 - threshold)
    out.append(pic.create_blurred_image(image, np.logical_or(top, mask)))
  # PAIR returns a gray [H,W] image as [H,W,1] where the mask keeps every pixel.
  return [np.reshape(im, image.shape) for im in out]


def image_entropy(image: np.ndarray) -> float:
  """PAIR's estimate: the size of the image losslessly compressed as WebP."""
  from saliency.metrics import pic  # pylint: disable=g-import-not-at-top

  return float(pic.estimate_image_entropy(image))


def pic_area(
  original: tuple[float, float],
  blurred: tuple[float, float],
  steps: Sequence[tuple[float, float]],
  *,
  min_pred_value: float,
  keep_monotonous: bool = True,
  num_data_points: int = 1000,
) -> float:
  """The PIC area from (prediction, entropy) of the original image, of the fully blurred one
  and of each threshold's image, as `saliency.metrics.compute_pic_metric` computes it; NaN
  where that raises ComputePicMetricError (low confidence, or blurring does not lower the
  prediction or the entropy: the image is skipped)."""
  from scipy import interpolate  # pylint: disable=g-import-not-at-top

  (original_pred, original_entropy), (blurred_pred, blurred_entropy) = original, blurred
  if (
    original_pred < min_pred_value
    or blurred_entropy >= original_entropy
    or blurred_pred >= original_pred
  ):
    return float("nan")
  points, best = [], 0.0
  for pred, entropy in steps:
    entropy = np.clip((entropy - blurred_entropy) / (original_entropy - blurred_entropy), 0.0, 1.0)
    normalized = np.clip((pred - blurred_pred) / (original_pred - blurred_pred), 0.0, 1.0)
    best = max(best, normalized)
    points.append((entropy, best if keep_monotonous else normalized))
  points += [(0.0, 0.0), (1.0, 1.0)]
  xs, ys = zip(*points)
  curve = interpolate.interp1d(x=xs, y=ys)
  curve_x = np.linspace(0.0, 1.0, num=num_data_points, endpoint=False)
  curve_y = np.asarray([curve(x) for x in curve_x])
  return float(np.trapezoid(np.append(curve_y, 1.0), np.append(curve_x, 1.0)))


def pic_auc(
  image: np.ndarray,
  saliency_map: np.ndarray,
  mask: np.ndarray,
  predict_fn: Callable[[np.ndarray], np.ndarray],
  thresholds: Sequence[float],
  *,
  min_pred_value: float,
  keep_monotonous: bool = True,
  num_data_points: int = 1000,
) -> float:
  """PIC of one uint8 image with `predict_fn` (uint8 images -> [M] scores: the softmax of the
  class for SIC, 1/0 correctness for AIC) called once on all its images; NaN: skipped."""
  images = pic_images(image, saliency_map, mask, thresholds)
  preds = np.asarray(predict_fn(np.stack([image] + images)), np.float64)
  entropies = [image_entropy(im) for im in [image] + images]
  return pic_area(
    (preds[0], entropies[0]),
    (preds[1], entropies[1]),
    list(zip(preds[2:], entropies[2:])),
    min_pred_value=min_pred_value,
    keep_monotonous=keep_monotonous,
    num_data_points=num_data_points,
  )
