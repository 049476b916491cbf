"""CheXlocalize's localization metrics (Saporta et al. 2022), batched over maps.

Definitions follow the CheXlocalize code (rajpurkarlab/cheXlocalize: heatmap_to_segmentation.py,
tune_heatmap_threshold.py, eval.py, calculate_percentage_decrease.py):

- A map is min-max normalized as CheXlocalize's torch code does, `(x - min) / max(x - min)`,
  in the map's precision (float32; float64 maps and integer maps in float64). Otsu: the
  normalized map is quantized to uint8 (`np.uint8(255 * m)`, truncation, in that precision) and
  a pixel is positive when its level is strictly above Otsu's threshold of those 256 levels
  (`cv2.threshold(levels, 0, max, THRESH_OTSU)`: THRESH_BINARY keeps `level > t`; the threshold
  is OpenCV's `getThreshVal_Otsu_8u`, transcribed, = scikit-image's `threshold_otsu` of the
  uint8 map up to rounding on exact ties of the between-class variance). Fixed threshold t:
  positive where the normalized map is strictly above t, compared in the map's precision
  (CheXlocalize's NumPy 1.18 casts the float64 t to a float32 map's dtype).
  Not reproduced: CheXlocalize then fills the contours of the Otsu segmentation (OpenCV
  contours drawn as polygons), which fills holes and drops single-pixel components; we score
  the Otsu pixels as they are.
- IoU of the segmentation with the mask, NaN where either is empty ("true positive only").
- Hit: the map's first maximum (`np.argmax`, row-major) lies in the mask. Unlike
  `pointing_game`, a tie for the maximum is not a hit when any tied pixel is inside.
- A per-method threshold is tuned on validation maps: the t in NumPy's
  `arange(0.2, 0.8, 0.1)` (0.2, 0.3, ..., 0.8: the float end point lets 0.8 in) with the
  highest mean IoU, the first on a tie.
- Bootstrap: `n_resamples` resamples of the images with replacement (NumPy's legacy
  `RandomState(seed)`, one `choice` per resample, as CheXlocalize's `np.random.seed` +
  `np.random.choice`), the mean of each resample skipping NaN (pandas' mean), and the 95% CI
  as the sorted resample means at 0-based positions int(0.025 R) - 1 and int(0.975 R) - 1.
- Percentage decrease from a baseline b to a method m: per resample (the same resampled images
  for both) (b - m) / b, its CI as above, times 100; the point value is (B - M) / B * 100 of the
  means B, M of the resample means.

Undefined values follow `saliency_jax.metrics.policy`: a constant map, NaN/inf in a map, or an
empty or all-positive mask gives NaN. CheXlocalize gives a number for an all-positive mask (an
IoU) and for a constant map (a hit at its first pixel), and tunes to its first threshold when no
threshold has a defined IoU (here: NaN).
"""

from __future__ import annotations

import numpy as np

from saliency_jax.metrics import policy

TUNING_THRESHOLDS = tuple(float(t) for t in np.arange(0.2, 0.8, 0.1))
# OpenCV's guard in getThreshVal_Otsu_8u: a split leaving either class below FLT_EPSILON of the
# pixels is not considered.
_FLT_EPSILON = float(np.finfo(np.float32).eps)


def _precision(dtype: np.dtype) -> type:
  """The float type CheXlocalize's torch code would normalize a map of this dtype in."""
  small_float = np.issubdtype(dtype, np.floating) and dtype.itemsize <= 4
  return np.float32 if small_float else np.float64


def _checked(maps, masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  maps = policy.as_map_stack(maps)
  masks = policy.as_mask_stack(masks, maps.shape)
  n = maps.shape[0]
  flat = maps.reshape(n, -1).astype(_precision(maps.dtype))
  flat_masks = masks.reshape(n, -1)
  valid = policy.localization_valid(flat, flat_masks)
  return np.where(valid[:, None], flat, 0), flat_masks, valid


def normalized(flat: np.ndarray) -> np.ndarray:
  """Rows min-max normalized to [0, 1] in their own precision, as CheXlocalize: `mask = cam -
  cam.min(); mask = mask / mask.max()` (a constant row gives 0; callers mark it invalid)."""
  shifted = flat - flat.min(axis=1, keepdims=True)
  span = shifted.max(axis=1, keepdims=True)
  return shifted / np.where(span > 0, span, 1)


def uint8_levels(normalized_rows: np.ndarray) -> np.ndarray:
  """CheXlocalize's `np.uint8(255 * mask)`: truncation, computed in the rows' precision."""
  return (255 * normalized_rows).astype(np.uint8)


def otsu_levels(levels: np.ndarray) -> np.ndarray:
  """Otsu's threshold of each row of uint8 levels [N, P], OpenCV's `getThreshVal_Otsu_8u`: int [N].

  OpenCV's loop over the 256 levels in double precision, vectorized over rows: the first t
  (class 0 = levels <= t) whose between-class variance q1 q2 (mu1 - mu2)^2 is strictly the
  largest, splits with a class under FLT_EPSILON of the pixels skipped, 0 when no split has a
  positive variance. Positive pixels are > t.
  """
  n, size = levels.shape
  counts = np.bincount((np.arange(n)[:, None] * 256 + levels).ravel(), minlength=256 * n)
  counts = counts.reshape(n, 256)
  scale = 1.0 / size
  mu = (counts * np.arange(256)).sum(axis=1) * scale  # exact integer sums, as OpenCV's loop
  mu1, q1 = np.zeros(n), np.zeros(n)
  max_sigma, max_val = np.zeros(n), np.zeros(n, np.int64)
  with np.errstate(invalid="ignore", divide="ignore"):
    for i in range(256):
      p_i = counts[:, i] * scale
      mu1 = mu1 * q1
      q1 = q1 + p_i
      q2 = 1.0 - q1
      skip = (np.minimum(q1, q2) < _FLT_EPSILON) | (np.maximum(q1, q2) > 1.0 - _FLT_EPSILON)
      mu1 = np.where(skip, mu1, (mu1 + i * p_i) / q1)
      mu2 = (mu - q1 * mu1) / q2
      sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
      better = ~skip & (sigma > max_sigma)
      max_sigma = np.where(better, sigma, max_sigma)
      max_val = np.where(better, i, max_val)
  return max_val


def _above(m: np.ndarray, threshold: float) -> np.ndarray:
  """Fixed-threshold segmentation: m > t with t in m's precision (NumPy 1.18's casting)."""
  return m > m.dtype.type(threshold)


def segment(maps, masks, *, threshold: float | str = "otsu") -> tuple[np.ndarray, np.ndarray]:
  """CheXlocalize's binary segmentation of each map: (bool [N, P], valid bool [N])."""
  flat, _, valid = _checked(maps, masks)
  m = normalized(flat)
  if isinstance(threshold, str):
    if threshold != "otsu":
      raise ValueError(f"threshold must be 'otsu' or a number, got {threshold!r}")
    levels = uint8_levels(m)
    return levels > otsu_levels(levels)[:, None], valid
  return _above(m, threshold), valid


def _iou_rows(predicted: np.ndarray, masks: np.ndarray, valid: np.ndarray) -> np.ndarray:
  inter = np.sum(predicted & masks, axis=1)
  union = np.sum(predicted | masks, axis=1)
  ok = valid & predicted.any(axis=1) & masks.any(axis=1)
  return np.where(ok, inter / np.maximum(union, 1), np.nan)


def iou(maps, masks, *, threshold: float | str = "otsu") -> np.ndarray:
  """IoU of CheXlocalize's segmentation (Otsu, or a fixed threshold) with the mask: float64 [N].

  NaN where the map is constant or non-finite, the mask empty or all-positive, or the
  segmentation empty.
  """
  predicted, valid = segment(maps, masks, threshold=threshold)
  _, flat_masks, _ = _checked(maps, masks)
  return _iou_rows(predicted, flat_masks, valid)


def iou_per_threshold(maps, masks, thresholds=TUNING_THRESHOLDS) -> np.ndarray:
  """IoU at each fixed threshold: float64 [T, N], one normalization per map."""
  flat, flat_masks, valid = _checked(maps, masks)
  m = normalized(flat)
  return np.stack([_iou_rows(_above(m, t), flat_masks, valid) for t in thresholds])


def tune_threshold(maps, masks, thresholds=TUNING_THRESHOLDS) -> dict:
  """The threshold with the highest mean IoU over (validation) maps, the first on a tie.

  Returns:
    dict with `threshold` (NaN when no threshold has a defined IoU), `thresholds` and
    `miou` (mean IoU at each threshold, NaN skipped).
  """
  table = iou_per_threshold(maps, masks, thresholds)
  defined = np.isfinite(table)
  miou = np.where(
    defined.any(axis=1),
    np.where(defined, table, 0).sum(axis=1) / np.maximum(defined.sum(axis=1), 1),
    np.nan,
  )
  best = float(thresholds[int(np.nanargmax(miou))]) if np.isfinite(miou).any() else np.nan
  return {
    "threshold": best,
    "thresholds": [float(t) for t in thresholds],
    "miou": [float(v) for v in miou],
  }


def hit(maps, masks) -> np.ndarray:
  """CheXlocalize's hit: 1.0 when the map's first maximum (row-major) is in the mask, else 0.0.

  float64 [N]; NaN per the policy (constant or non-finite map, empty or all-positive mask).
  """
  flat, flat_masks, valid = _checked(maps, masks)
  peak = np.argmax(flat, axis=1)
  inside = flat_masks[np.arange(len(flat)), peak]
  return np.where(valid, inside.astype(np.float64), np.nan)


def _resample_means(values: np.ndarray, *, seed: int, n_resamples: int) -> np.ndarray:
  """[R] or [R, K]: each resample's mean of `values` ([N] or [N, K]), NaN skipped."""
  values = np.asarray(values, np.float64)
  n = values.shape[0]
  rng = np.random.RandomState(seed)
  indices = np.stack([rng.choice(n, size=n, replace=True) for _ in range(n_resamples)])
  sample = values[indices]
  defined = np.isfinite(sample)
  count = defined.sum(axis=1)
  with np.errstate(invalid="ignore"):
    return np.where(count > 0, np.where(defined, sample, 0).sum(axis=1) / count, np.nan)


def _ci(resamples: np.ndarray, confidence: float) -> tuple[float, float]:
  """CheXlocalize's `compute_cis`: order statistics of the sorted resamples (NaN last)."""
  ordered = np.sort(resamples)
  r = len(ordered)
  alpha = round(1 - confidence, 12)  # 0.05, not 0.050000000000000044: int() truncates
  return float(ordered[int(alpha / 2 * r) - 1]), float(ordered[int((1 - alpha / 2) * r) - 1])


def _nanmean(values: np.ndarray) -> float:
  """np.nanmean, but NaN without NumPy's warning when every value is NaN."""
  return float(np.nanmean(values)) if (~np.isnan(values)).any() else float("nan")


def bootstrap(values, *, seed: int, n_resamples: int = 1000, confidence: float = 0.95) -> dict:
  """CheXlocalize's bootstrap CI of the mean of per-image values (NaN skipped per resample).

  Returns:
    dict with `mean` (of the values, NaN skipped), `low`, `high`, `bootstrap_mean` (mean of
    the resample means), `n` (defined values) and `n_excluded` (NaN values).
  """
  values = np.asarray(values, np.float64).ravel()
  _check_bootstrap(values, n_resamples, confidence)
  means = _resample_means(values, seed=seed, n_resamples=n_resamples)
  low, high = _ci(means, confidence)
  defined = np.isfinite(values)
  return {
    "mean": float(values[defined].mean()) if defined.any() else float("nan"),
    "low": low,
    "high": high,
    "bootstrap_mean": _nanmean(means),
    "n": int(defined.sum()),
    "n_excluded": int((~defined).sum()),
  }


def percentage_decrease(
  values, baseline, *, seed: int, n_resamples: int = 1000, confidence: float = 0.95
) -> dict:
  """CheXlocalize's percentage decrease from `baseline` to `values` (per image, paired).

  Returns:
    dict with `decrease` = 100 (B - M) / B of the mean resample means, and its CI `low`,
    `high` from the same resamples of both.
  """
  values = np.asarray(values, np.float64).ravel()
  baseline = np.asarray(baseline, np.float64).ravel()
  if values.shape != baseline.shape:
    raise ValueError(f"paired values need equal lengths, got {values.size} and {baseline.size}")
  _check_bootstrap(values, n_resamples, confidence)
  means = _resample_means(np.stack([values, baseline], axis=1), seed=seed, n_resamples=n_resamples)
  m, b = means[:, 0], means[:, 1]
  # CheXlocalize's order of operations: the CI of the fraction, then times 100.
  with np.errstate(invalid="ignore", divide="ignore"):
    low, high = _ci((b - m) / b, confidence)
    big_m, big_b = _nanmean(m), _nanmean(b)
    decrease = (big_b - big_m) / big_b * 100
  return {"decrease": float(decrease), "low": low * 100, "high": high * 100}


def _check_bootstrap(values: np.ndarray, n_resamples: int, confidence: float) -> None:
  if values.size == 0:
    raise ValueError("the bootstrap needs at least one value")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  if int((1 - confidence) / 2 * n_resamples) < 1:
    raise ValueError(
      f"{n_resamples} resamples are too few for a {confidence:.0%} interval by order statistics"
    )
