"""CheXlocalize's localization metrics (Saporta et al. 2022), batched over maps.

Definitions follow the CheXlocalize code (rajpurkarlab/cheXlocalize: heatmap_to_segmentation.py,
tune_heatmap_threshold.py, eval.py, calculate_percentage_decrease.py):

- A map is min-max normalized to [0, 1]. Otsu: the normalized map is quantized to uint8
  (`np.uint8(255 * m)`, truncation) and a pixel is positive when its level is above Otsu's
  threshold of those 256 levels (OpenCV's `THRESH_OTSU`, = scikit-image's `threshold_otsu` of
  the uint8 map). Fixed threshold t: positive where the normalized map is above t.
  Not reproduced: CheXlocalize then fills the outer contours of the Otsu segmentation
  (OpenCV contours drawn as polygons), which also fills holes; we score the Otsu pixels as
  they are.
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
  for both) 100 (b - m) / b, its CI as above; the point value is 100 (B - M) / B of the means
  B, M of the resample means.

Undefined values follow `saliency_jax.metrics.policy`: a constant map, NaN/inf in a map, or an
empty or all-positive mask gives NaN.
"""

from __future__ import annotations

import numpy as np

from saliency_jax.metrics import policy

TUNING_THRESHOLDS = tuple(float(t) for t in np.arange(0.2, 0.8, 0.1))


def _checked(maps, masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  maps = policy.as_map_stack(maps)
  masks = policy.as_mask_stack(masks, maps.shape)
  n = maps.shape[0]
  flat = maps.reshape(n, -1).astype(np.float64)
  flat_masks = masks.reshape(n, -1)
  valid = policy.localization_valid(flat, flat_masks)
  return np.where(valid[:, None], flat, 0.0), flat_masks, valid


def normalized(flat: np.ndarray) -> np.ndarray:
  """Min-max normalized rows in [0, 1] (a constant row gives 0; callers mark it invalid)."""
  low = flat.min(axis=1, keepdims=True)
  span = flat.max(axis=1, keepdims=True) - low
  return (flat - low) / np.where(span > 0, span, 1.0)


def otsu_levels(levels: np.ndarray) -> np.ndarray:
  """Otsu's threshold of each row of uint8 levels [N, P], = `threshold_otsu(row)`: int [N].

  Over the 256 levels: the t maximizing w0 w1 (mu0 - mu1)^2 with class 0 = levels <= t, the
  lowest t on a tie (the split into the same two pixel sets). Positive pixels are > t.
  """
  n = levels.shape[0]
  counts = (
    np.bincount((np.arange(n)[:, None] * 256 + levels).ravel(), minlength=256 * n)
    .reshape(n, 256)
    .astype(np.float64)
  )
  values = np.arange(256, dtype=np.float64)
  w0 = np.cumsum(counts, axis=1)[:, :-1]
  s0 = np.cumsum(counts * values, axis=1)[:, :-1]
  total, total_sum = counts.sum(axis=1, keepdims=True), (counts * values).sum(axis=1, keepdims=True)
  w1, s1 = total - w0, total_sum - s0
  with np.errstate(invalid="ignore", divide="ignore"):
    between = w0 * w1 * (s0 / w0 - s1 / w1) ** 2
  between = np.where((w0 > 0) & (w1 > 0), between, -1.0)
  return np.argmax(between, axis=1)


def segment(maps, masks, *, threshold: float | str = "otsu") -> tuple[np.ndarray, np.ndarray]:
  """CheXlocalize's binary segmentation of each map: (bool [N, P], valid bool [N])."""
  flat, _, valid = _checked(maps, masks)
  m = normalized(flat)
  if isinstance(threshold, str):
    if threshold != "otsu":
      raise ValueError(f"threshold must be 'otsu' or a number, got {threshold!r}")
    levels = (255 * m).astype(np.uint8)
    return levels > otsu_levels(levels)[:, None], valid
  return m > float(threshold), valid


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
  return np.stack([_iou_rows(m > float(t), flat_masks, valid) for t in thresholds])


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
    "bootstrap_mean": float(np.nanmean(means)),
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
  with np.errstate(invalid="ignore", divide="ignore"):
    low, high = _ci(100 * (b - m) / b, confidence)
    big_m, big_b = np.nanmean(m), np.nanmean(b)
    decrease = 100 * (big_b - big_m) / big_b
  return {"decrease": float(decrease), "low": low, "high": high}


def _check_bootstrap(values: np.ndarray, n_resamples: int, confidence: float) -> None:
  if values.size == 0:
    raise ValueError("the bootstrap needs at least one value")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  if int((1 - confidence) / 2 * n_resamples) < 1:
    raise ValueError(
      f"{n_resamples} resamples are too few for a {confidence:.0%} interval by order statistics"
    )
