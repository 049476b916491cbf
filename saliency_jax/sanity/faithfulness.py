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

The output is the softmax probability of the explained class (`predict_fn` gives it). Ranks
break ties by pixel order (row-major), so a constant map removes pixels in raster order.
"""
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from scipy import sparse
from scipy.sparse import linalg as sparse_linalg

PredictFn = Callable[[np.ndarray], np.ndarray]   # images [B,H,W,C] -> output [B]

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
    return ndimage.gaussian_filter(images, (0, blur_sigma, blur_sigma, 0),
                                   mode="nearest").astype(np.float32)
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


def perturbation_curves(images: np.ndarray, maps: np.ndarray, predict_fn: PredictFn, *,
                        steps: int, baseline: str, blur_sigma: float,
                        insertion: bool) -> np.ndarray:
  """The model's output along a deletion (or insertion) curve: float64 [N, steps + 1]."""
  images = np.asarray(images, np.float32)
  base = baseline_images(images, baseline, blur_sigma)
  ranks = pixel_ranks(maps)
  counts = _counts(fractions(steps), ranks[0].size)
  stack = _composites(images, base, ranks, jnp.asarray(counts), insertion)
  s, b = stack.shape[:2]
  outputs = np.asarray(predict_fn(stack.reshape((s * b,) + images.shape[1:])), np.float64)
  return outputs.reshape(s, b).T


def curve_area(curves: np.ndarray, steps: int) -> np.ndarray:
  """Trapezoid area under curves sampled at fractions k / steps: float64 [N]."""
  return np.trapezoid(np.asarray(curves, np.float64), fractions(steps), axis=-1)


# ROAD's neighbour weights: (row offset, column offset) -> weight; they sum to 1.
ROAD_WEIGHTS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
                ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


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
  system = sparse.csc_matrix((np.concatenate(a_vals), (np.concatenate(a_rows),
                                                       np.concatenate(a_cols))),
                             shape=(unknown.size, unknown.size))
  solution = sparse_linalg.spsolve(system, rhs).reshape(unknown.size, -1)
  out = flat.copy()
  out[unknown] = solution
  return out.reshape(image.shape).astype(np.float32)


def road_curves(images: np.ndarray, maps: np.ndarray, predict_fn: PredictFn, *,
                percentages: Sequence[float], most_relevant_first: bool, noise: float,
                seed: int) -> np.ndarray:
  """The model's output on ROAD-imputed images, one column per percentage: float64 [N, P]."""
  images = np.asarray(images, np.float32)
  ranks = pixel_ranks(maps)
  n, h, w = ranks.shape
  if not most_relevant_first:
    ranks = h * w - 1 - ranks      # least relevant first
  rng = np.random.default_rng(seed)
  counts = _counts(percentages, h * w)
  imputed = np.empty((len(counts), n) + images.shape[1:], np.float32)
  for p, count in enumerate(counts):
    for i in range(n):
      removed = ranks[i] < count
      filled = linear_imputation(images[i], removed)
      filled[removed] += noise * rng.standard_normal(filled[removed].shape).astype(np.float32)
      imputed[p, i] = filled
  outputs = np.asarray(predict_fn(imputed.reshape((-1,) + images.shape[1:])), np.float64)
  return outputs.reshape(len(counts), n).T


def pic_auc(image: np.ndarray, saliency_map: np.ndarray, random_mask: np.ndarray,
            predict_fn: Callable[[np.ndarray], np.ndarray], thresholds: Sequence[float], *,
            min_pred_value: float, keep_monotonous: bool = True,
            num_data_points: int = 1000) -> float:
  """PAIR's PIC area (SIC with softmax predictions, AIC with 0/1 correctness) of one uint8
  image [H,W] or [H,W,C]; `predict_fn` gets the uint8 images of all thresholds in one batch.

  The same computation as `saliency.metrics.compute_pic_metric`; NaN where it would raise
  ComputePicMetricError (the image is skipped: low confidence, or blurring does not lower the
  prediction or the entropy).
  """
  from saliency.metrics import pic  # pylint: disable=g-import-not-at-top
  from scipy import interpolate  # pylint: disable=g-import-not-at-top
  if image.dtype != np.uint8:
    raise ValueError(f"PIC needs uint8 images, got {image.dtype}")
  blurred = [pic.create_blurred_image(image, random_mask)]
  for threshold in thresholds:
    mask = saliency_map >= np.quantile(saliency_map, 1 - threshold)
    blurred.append(pic.create_blurred_image(image, np.logical_or(mask, random_mask)))
  preds = np.asarray(predict_fn(np.stack([image] + blurred)), np.float64)
  original_pred, blurred_pred, preds = preds[0], preds[1], preds[2:]
  original_entropy = pic.estimate_image_entropy(image)
  blurred_entropy = pic.estimate_image_entropy(blurred[0])
  if (original_pred < min_pred_value or blurred_entropy >= original_entropy
      or blurred_pred >= original_pred):
    return float("nan")
  points, best = [], 0.0
  for img, pred in zip(blurred[1:], preds):
    entropy = np.clip((pic.estimate_image_entropy(img) - blurred_entropy)
                      / (original_entropy - blurred_entropy), 0.0, 1.0)
    normalized = np.clip((pred - blurred_pred) / (original_pred - blurred_pred), 0.0, 1.0)
    best = max(best, normalized)
    points.append((entropy, best if keep_monotonous else normalized))
  points += [(0.0, 0.0), (1.0, 1.0)]
  xs, ys = zip(*points)
  curve_x = np.linspace(0.0, 1.0, num=num_data_points, endpoint=False)
  curve_y = np.asarray([interpolate.interp1d(x=xs, y=ys)(x) for x in curve_x])
  return float(np.trapezoid(np.append(curve_y, 1.0), np.append(curve_x, 1.0)))
