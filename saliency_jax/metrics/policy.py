"""The one policy for values a metric cannot define, and the input checks behind it.

Every metric in `saliency_jax.metrics` scores a stack of maps (leading axis N) and returns one
float64 value per map. It never raises for a map whose score is undefined; it returns NaN for that
map, and the aggregation helpers (`statistics.summarize`, `statistics.bootstrap_ci`, the paired
tests) leave NaN out and report how many values they left out. Malformed input (wrong shapes, a
mask that is not binary, a non-positive `data_range`) is a caller's bug and raises `ValueError`.

The rules, in order:

1. **NaN or inf in a map (or in either map of a pair) -> NaN**, for every metric. A map with a
   non-finite pixel is broken; no score of it means anything. (scikit-learn raises on such input,
   scikit-image propagates NaN.)
2. **Localization metrics need a mask with both classes and a map that ranks something.** An empty
   mask (no positive pixel), an all-positive mask (no negative pixel) or a constant map gives NaN
   for `auprc`, `average_precision`, `roc_auc`, `pointing_game`, `iou`, `relevance_mass_accuracy`,
   `relevance_rank_accuracy`, `top_k_intersection` and `energy_pointing`. Where the reference
   returns a number here it is a placeholder or an artefact, not a localization score:
   scikit-learn warns and returns 0.5 for the AUPRC of an empty mask (recall is set to 1), 1.0
   for the AUPRC/AP of an all-positive mask whatever the map, (1 + prevalence) / 2 for the
   trapezoidal AUPRC of a constant map, and NaN/raises for ROC-AUC with one class; Quantus returns
   NaN for an empty mask and a trivial hit for an all-positive one.
   Additionally `relevance_mass_accuracy` and `energy_pointing` are NaN when the map's (positive)
   mass is zero (0 / 0).
3. **Similarity metrics follow their reference wherever the reference defines a value.** SSIM of
   constant maps is defined by its stabilizing constants (two equal constant maps score 1, as in
   scikit-image) and is returned as such. Correlations (`spearman`, `pearson`, `hog_similarity`)
   of a map with zero variance are NaN, as SciPy's are. `mse` / `l1` compare min-max normalized
   maps, so a constant map (which has no normalization) gives NaN.

Masks are binary: bool, or numbers in {0, 1}; anything else raises `ValueError`.
"""

from __future__ import annotations

import numpy as np

POLICY_TEXT = __doc__


def as_map_stack(maps, name: str = "maps", *, ndim: int | None = None) -> np.ndarray:
  """Returns `maps` as a float NumPy array with a leading batch axis; checks its rank."""
  maps = np.asarray(maps)
  if maps.dtype == bool:
    maps = maps.astype(np.float32)
  if not np.issubdtype(maps.dtype, np.number):
    raise ValueError(f"{name} must be numeric, got dtype {maps.dtype}.")
  if ndim is not None and maps.ndim != ndim:
    raise ValueError(
      f"{name} must have {ndim} dimensions (a stack [N, H, W] of 2-D maps), got shape {maps.shape}."
    )
  if maps.ndim < 2:
    raise ValueError(f"{name} must be a stack [N, ...] of maps, got shape {maps.shape}.")
  if np.iscomplexobj(maps):
    raise ValueError(f"{name} must be real, got dtype {maps.dtype}.")
  return maps


def as_mask_stack(masks, shape: tuple[int, ...]) -> np.ndarray:
  """Returns binary masks as bool with the maps' shape; raises on non-binary values."""
  masks = np.asarray(masks)
  if masks.shape != tuple(shape):
    raise ValueError(
      f"masks must have the maps' shape {tuple(shape)}, got {masks.shape} "
      "(squeeze a trailing channel axis first)."
    )
  if masks.dtype == bool:
    return masks
  if not np.issubdtype(masks.dtype, np.number):
    raise ValueError(f"masks must be bool or numeric, got dtype {masks.dtype}.")
  binary = masks != 0
  if not np.array_equal(binary, masks == 1):
    raise ValueError(
      "masks must be binary (bool, or values in {0, 1}); got other values "
      "(binarize soft or 0/255 masks first)."
    )
  return binary


def finite_rows(x: np.ndarray) -> np.ndarray:
  """bool[N]: maps without NaN or inf."""
  return np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)


def nonconstant_rows(x: np.ndarray) -> np.ndarray:
  """bool[N]: maps with at least two distinct values (NaN rows count as constant)."""
  flat = x.reshape(x.shape[0], -1)
  with np.errstate(invalid="ignore"):
    return flat.max(axis=1) > flat.min(axis=1)


def two_class_rows(masks: np.ndarray) -> np.ndarray:
  """bool[N]: masks with at least one positive and one negative pixel."""
  flat = masks.reshape(masks.shape[0], -1)
  return flat.any(axis=1) & ~flat.all(axis=1)


def localization_valid(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """bool[N]: rule 1 and rule 2 of the policy for (map, mask) pairs."""
  return finite_rows(maps) & nonconstant_rows(maps) & two_class_rows(masks)
