"""The four trust criteria of the study, computed per image from stacks of 2-D maps.

Each function takes maps as numpy arrays [N,H,W] (the study's grayscale maps in [0, 1]) and
returns one value per image, so verdicts can use paired per-image tests. Undefined values
(an empty mask, a constant map where the metric needs variance) are NaN, following the policy
of `saliency_jax.metrics`; the statistics count and report what they exclude.
"""

from collections.abc import Callable, Sequence

import numpy as np

from saliency_jax import metrics

# Localization metrics the report shows for utility: the paper's AUPRC first, then the columns
# users of CheXlocalize and Quantus compare with.
UTILITY_METRICS = ("auprc", "pointing_game", "iou_otsu")
# Similarity metrics for the randomization, repeatability and reproducibility criteria: the
# paper's SSIM first, then Adebayo et al.'s and Quantus' rank correlation.
SIMILARITY_METRICS = ("ssim", "spearman_abs")


def _similarity_functions(data_range: float, top_k_fraction: float) -> dict[str, Callable]:
  """Every similarity a criterion can use, by record name: f(maps_a, maps_b) -> [N]."""
  return {
    "ssim": lambda a, b: metrics.ssim(a, b, data_range=data_range),
    "spearman_abs": lambda a, b: metrics.spearman(a, b, absolute=True),
    "spearman": lambda a, b: metrics.spearman(a, b),
    "hog": metrics.hog_similarity,
    "top_k_iou": lambda a, b: metrics.top_k_iou(a, b, fraction=top_k_fraction),
  }


SIMILARITY_NAMES = tuple(_similarity_functions(1.0, 0.1))
# Ranked once per map in the random-pair baseline (Spearman = Pearson of the ranks).
_RANKED = {"spearman_abs": True, "spearman": False}


def _check_names(names: Sequence[str]) -> None:
  unknown = [n for n in names if n not in SIMILARITY_NAMES]
  if unknown:
    raise ValueError(f"unknown similarity metrics {unknown}; known: {list(SIMILARITY_NAMES)}")


def utility(maps: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
  """Localization utility: each map scored against its ground-truth mask."""
  masks = np.asarray(masks).astype(bool)
  return {
    "auprc": metrics.auprc(maps, masks),
    "pointing_game": metrics.pointing_game(maps, masks),
    "iou_otsu": metrics.iou(maps, masks, threshold="otsu"),
  }


def similarity(
  maps_a: np.ndarray,
  maps_b: np.ndarray,
  *,
  data_range: float,
  names: Sequence[str] = SIMILARITY_METRICS,
  top_k_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
  """Map-to-map similarity of paired maps (same image, two model states or models).

  names: which of `SIMILARITY_NAMES` to compute (SSIM with `data_range`, Spearman of |map| or
  of the signed map, HOG, IoU of the top `top_k_fraction` pixels).
  """
  _check_names(names)
  functions = _similarity_functions(data_range, top_k_fraction)
  return {name: functions[name](maps_a, maps_b) for name in names}


def random_pair_baseline(
  maps: np.ndarray,
  *,
  pairs: int,
  seed: int,
  data_range: float,
  names: Sequence[str] = SIMILARITY_METRICS,
  top_k_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
  """The randomization baseline of the paper: similarity of maps of different images.

  For each image i, `pairs` other images j != i are drawn (with replacement when fewer exist)
  and the similarity of map i with map j is averaged, giving one baseline value per image.
  """
  _check_names(names)
  n = len(maps)
  if n < 2:
    raise ValueError("the random-pair baseline needs at least two images")
  rng = np.random.default_rng(seed)
  # Draw from the n-1 other images: an offset in [1, n) never lands on i itself.
  partners = (np.arange(n)[:, None] + rng.integers(1, n, size=(n, pairs))) % n
  left, right = np.repeat(np.arange(n), pairs), partners.ravel()
  functions = _similarity_functions(data_range, top_k_fraction)
  values = {}
  for name in names:
    if name in _RANKED:
      # Each map is in about 2 x pairs comparisons: rank it once.
      ranks = metrics.average_ranks(maps, absolute=_RANKED[name])
      values[name] = metrics.pearson(ranks[left], ranks[right])
    elif name == "hog":  # likewise: each map's HOG features once
      features, finite = metrics.hog_features(maps)
      values[name] = metrics.hog_pearson(
        features[left], features[right], finite[left] & finite[right]
      )
    else:
      values[name] = functions[name](maps[left], maps[right])
  return {name: mean_of_defined(v.reshape(n, pairs), axis=1) for name, v in values.items()}


def mean_of_defined(values, axis: int = 0):
  """Mean over `axis` of the finite values, NaN where there are none: undefined values (NaN)
  are left out of every mean the study reports, never averaged in (see metrics.POLICY_TEXT)."""
  values = np.asarray(values, np.float64)
  defined = np.isfinite(values)
  count = defined.sum(axis=axis)
  total = np.where(defined, values, 0.0).sum(axis=axis)
  return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def average_mask(train_masks: Sequence[np.ndarray]) -> np.ndarray:
  """The average-mask baseline: the mean of all positive training masks, as a map."""
  total, count = None, 0
  for mask in train_masks:
    mask = np.asarray(mask, np.float64).squeeze()
    total = mask if total is None else total + mask
    count += 1
  if count == 0:
    raise ValueError("the average-mask baseline needs at least one positive training mask")
  return (total / count).astype(np.float32)
