"""Localization metrics: a saliency map scored against a binary ground-truth mask.

Every function takes `maps` [N, ...] (any real dtype) and `masks` of the same shape (bool or
{0, 1}) and returns float64 [N], one value per map; undefined cases are NaN per
`saliency_jax.metrics.policy` (empty mask, all-positive mask, constant map, NaN/inf in a map).

Rank metrics (`auprc`, `average_precision`, `roc_auc`) treat every pixel as a binary prediction
scored by the map and reproduce scikit-learn exactly, ties included: one curve point per distinct
map value. On the CPU they sort with NumPy (XLA's CPU sort is an order of magnitude slower); on
accelerators they run the jit-able `*_jax` versions, which are also usable inside `jax.jit`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.metrics import _batching
from saliency_jax.metrics import policy

# Maps per jitted call on accelerators (about 20 float32 arrays of N x H x W live at once).
_CHUNK = 64


# ----------------------------------------------------------------------------------------------
# Rank metrics: NumPy path.


def _group_end_counts(scores: np.ndarray, labels: np.ndarray):
  """Yields per map (tps, fps) at every distinct score, from the highest score down.

  This is scikit-learn's `_binary_clf_curve` without `drop_intermediate`: point k counts the true
  and false positives among pixels whose score is >= the k-th highest distinct score. It needs
  no argsort: one sort of all scores (runs of equal scores are the curve's points) and one sort
  of the positives' scores, placed among all scores by binary search.
  """
  n = scores.shape[0]
  flat = scores.reshape(n, -1)
  lab = labels.reshape(n, -1)
  size = flat.shape[1]
  # float32 sorts twice as fast as float64; use it whenever it holds every value exactly.
  if flat.dtype in (np.float32, np.float16) or (
    np.issubdtype(flat.dtype, np.integer) and flat.dtype.itemsize <= 2
  ):
    flat = flat.astype(np.float32, copy=False)
  else:
    flat = flat.astype(np.float64, copy=False)
    with np.errstate(over="ignore"):
      as32 = flat.astype(np.float32)
    if np.array_equal(as32, flat):
      flat = as32
  sorted_scores = np.sort(flat, axis=1)
  changes = sorted_scores[:, 1:] != sorted_scores[:, :-1]
  for i in range(n):
    row = sorted_scores[i]
    # Ascending runs of equal scores start at 0 and after every change.
    starts = np.concatenate([[0], np.flatnonzero(changes[i]) + 1])
    # Each positive lands at the start of its score's run ('left' finds the first equal value).
    run_start = np.searchsorted(row, np.sort(flat[i][lab[i]]), side="left")
    positives_upto = np.cumsum(np.bincount(run_start, minlength=size))
    positives_before = np.concatenate([[0], positives_upto[starts[1:] - 1]])
    total = positives_upto[-1]
    # Highest threshold first: pixels with score >= the run's score.
    tps = (total - positives_before[::-1]).astype(np.float64)
    fps = (size - starts[::-1]).astype(np.float64) - tps
    yield tps, fps


def _rank_metrics_numpy(maps: np.ndarray, masks: np.ndarray, which: tuple[str, ...]) -> dict:
  valid = policy.localization_valid(maps, masks)
  if not valid.all():
    maps = np.where(valid.reshape((-1,) + (1,) * (maps.ndim - 1)), maps, 0)
  out = {name: np.full(maps.shape[0], np.nan) for name in which}
  for i, (tps, fps) in enumerate(_group_end_counts(maps, masks)):
    if not valid[i]:
      continue
    recall = np.concatenate([[0.0], tps / tps[-1]])
    precision = np.concatenate([[1.0], tps / (tps + fps)])
    if "auprc" in which:
      out["auprc"][i] = np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2)
    if "average_precision" in which:
      out["average_precision"][i] = np.sum(np.diff(recall) * precision[1:])
    if "roc_auc" in which:
      fpr = np.concatenate([[0.0], fps / fps[-1]])
      out["roc_auc"][i] = np.sum(np.diff(fpr) * (recall[1:] + recall[:-1]) / 2)
  return out


# ----------------------------------------------------------------------------------------------
# Rank metrics: JAX path (jit-able, float32).


def _rank_metrics_jax(maps: jax.Array, masks: jax.Array) -> dict[str, jax.Array]:
  """AUPRC, AP and ROC-AUC of each map, scikit-learn's definitions, float32 [N]."""
  n = maps.shape[0]
  scores = jnp.reshape(maps, (n, -1)).astype(jnp.float32)
  labels = jnp.reshape(masks, (n, -1)).astype(bool)
  finite = jnp.all(jnp.isfinite(scores), axis=1)
  nonconstant = jnp.max(scores, axis=1) > jnp.min(scores, axis=1)
  two_class = jnp.any(labels, axis=1) & ~jnp.all(labels, axis=1)
  valid = finite & nonconstant & two_class
  scores = jnp.where(valid[:, None], scores, 0.0)

  neg_scores, sorted_labels = jax.lax.sort(
    (-scores, labels.astype(jnp.float32)), dimension=1, num_keys=1
  )
  size = scores.shape[1]
  position = jnp.arange(size)
  # Counts up to 2**24 are exact in float32.
  tps = jnp.cumsum(sorted_labels, axis=1)
  fps = (position + 1).astype(jnp.float32) - tps
  is_end = jnp.concatenate(
    [neg_scores[:, :-1] != neg_scores[:, 1:], jnp.ones((n, 1), bool)], axis=1
  )
  # Index of the previous curve point (the last run end before this position), -1 if none.
  last_end = jax.lax.cummax(jnp.where(is_end, position, -1), axis=1)
  prev_end = jnp.concatenate([jnp.full((n, 1), -1), last_end[:, :-1]], axis=1)
  has_prev = prev_end >= 0
  prev_index = jnp.maximum(prev_end, 0)
  tps_prev = jnp.where(has_prev, jnp.take_along_axis(tps, prev_index, axis=1), 0.0)
  fps_prev = jnp.where(has_prev, jnp.take_along_axis(fps, prev_index, axis=1), 0.0)
  positives = tps[:, -1:]
  negatives = fps[:, -1:]
  recall, recall_prev = tps / positives, tps_prev / positives
  precision = tps / (tps + fps)
  precision_prev = jnp.where(has_prev, tps_prev / jnp.maximum(tps_prev + fps_prev, 1.0), 1.0)
  fpr, fpr_prev = fps / negatives, fps_prev / negatives

  def curve_sum(terms):
    value = jnp.sum(jnp.where(is_end, terms, 0.0), axis=1)
    return jnp.where(valid, value, jnp.nan)

  d_recall = recall - recall_prev
  return {
    "auprc": curve_sum(d_recall * (precision + precision_prev) / 2),
    "average_precision": curve_sum(d_recall * precision),
    "roc_auc": curve_sum((fpr - fpr_prev) * (recall + recall_prev) / 2),
  }


@jax.jit
def auprc_jax(maps: jax.Array, masks: jax.Array) -> jax.Array:
  """jit-able `auprc`: float32 [N], NaN where undefined (masks: nonzero = positive)."""
  return _rank_metrics_jax(maps, masks)["auprc"]


@jax.jit
def average_precision_jax(maps: jax.Array, masks: jax.Array) -> jax.Array:
  """jit-able `average_precision`: float32 [N], NaN where undefined."""
  return _rank_metrics_jax(maps, masks)["average_precision"]


@jax.jit
def roc_auc_jax(maps: jax.Array, masks: jax.Array) -> jax.Array:
  """jit-able `roc_auc`: float32 [N], NaN where undefined."""
  return _rank_metrics_jax(maps, masks)["roc_auc"]


_JAX_RANK = {"auprc": auprc_jax, "average_precision": average_precision_jax, "roc_auc": roc_auc_jax}


def _checked(maps, masks) -> tuple[np.ndarray, np.ndarray]:
  maps = policy.as_map_stack(maps)
  masks = policy.as_mask_stack(masks, maps.shape)
  return maps, masks


def rank_metrics(maps, masks, which=("auprc", "average_precision", "roc_auc")) -> dict:
  """Several rank metrics from one sort per map: {name: float64 [N]}."""
  maps, masks = _checked(maps, masks)
  if _batching.on_cpu():
    return _rank_metrics_numpy(maps, masks, tuple(which))
  return {
    name: _batching.per_map_in_chunks(_JAX_RANK[name], [maps, masks], chunk=_CHUNK)
    for name in which
  }


def auprc(maps, masks) -> np.ndarray:
  """Area under the precision-recall curve by the trapezoidal rule, the paper's AUPRC.

  Equals `sklearn.metrics.auc(recall, precision)` with `precision, recall, _ =
  precision_recall_curve(mask.ravel(), map.ravel())`: one curve point per distinct map value
  (ties form one point), plus scikit-learn's end point (recall 0, precision 1). Not average
  precision (see `average_precision`).

  Args:
    maps: [N, ...] saliency maps, any real dtype.
    masks: [N, ...] binary ground truth, same shape.

  Returns:
    float64 [N]; NaN for an empty or all-positive mask, a constant map, or NaN/inf in the map.
  """
  return rank_metrics(maps, masks, ("auprc",))["auprc"]


def average_precision(maps, masks) -> np.ndarray:
  """Step-wise average precision, = `sklearn.metrics.average_precision_score`; float64 [N]."""
  return rank_metrics(maps, masks, ("average_precision",))["average_precision"]


def roc_auc(maps, masks) -> np.ndarray:
  """Area under the ROC curve, = `sklearn.metrics.roc_auc_score` (Quantus `AUC`); float64 [N]."""
  return rank_metrics(maps, masks, ("roc_auc",))["roc_auc"]


# ----------------------------------------------------------------------------------------------
# Threshold-free localization metrics. Each is written once against an array namespace `xp`:
# NumPy in float64 for the public functions (exact, and as fast as XLA for one pass of sums on
# the CPU), jax.numpy in float32 for the jit-able `*_jax` versions.


def _flat(xp, maps, masks):
  n = maps.shape[0]
  return xp.reshape(maps, (n, -1)), xp.reshape(masks, (n, -1)).astype(bool)


def _valid(xp, maps, masks):
  """Policy rules 1 and 2 on flattened (map, mask) pairs."""
  finite = xp.all(xp.isfinite(maps), axis=1)
  safe = xp.where(finite[:, None], maps, 0)
  nonconstant = xp.max(safe, axis=1) > xp.min(safe, axis=1)
  two_class = xp.any(masks, axis=1) & ~xp.all(masks, axis=1)
  return finite & nonconstant & two_class, safe


def _ratio(xp, numerator, denominator, valid):
  ok = valid & (denominator != 0)
  return xp.where(ok, numerator / xp.where(ok, denominator, 1), xp.nan)


def _pointing_game(xp, maps, masks):
  maps, masks = _flat(xp, maps, masks)
  valid, maps = _valid(xp, maps, masks)
  peak = maps == xp.max(maps, axis=1, keepdims=True)
  hit = xp.any(peak & masks, axis=1)
  return xp.where(valid, hit.astype(maps.dtype), xp.nan)


def _relevance_mass_accuracy(xp, maps, masks):
  maps, masks = _flat(xp, maps, masks)
  valid, maps = _valid(xp, maps, masks)
  return _ratio(xp, xp.sum(xp.where(masks, maps, 0), axis=1), xp.sum(maps, axis=1), valid)


def _energy_pointing(xp, maps, masks):
  maps, masks = _flat(xp, maps, masks)
  valid, maps = _valid(xp, maps, masks)
  energy = xp.maximum(maps, 0)
  return _ratio(xp, xp.sum(xp.where(masks, energy, 0), axis=1), xp.sum(energy, axis=1), valid)


def _kth_largest(xp, maps, k):
  """Per row, the k-th largest value (k: int [N], 1 <= k <= row length)."""
  size = maps.shape[1]
  if xp is np:
    return np.array(
      [np.partition(row, size - kk)[size - kk] for row, kk in zip(maps, k)], dtype=maps.dtype
    )
  ordered = jnp.sort(maps, axis=1)
  return jnp.take_along_axis(ordered, (size - k)[:, None], axis=1)[:, 0]


def _top_k_hits(xp, maps, masks, k):
  """Mask pixels among the k highest of each map; ties at the k-th value shared out evenly.

  With no tie at the k-th value this is the count of Quantus' `np.argsort(a)[-k:]` inside the
  mask. Where several pixels share the k-th value, which of them enter the top k is arbitrary
  (Quantus leaves it to NumPy's sort); we count the expected hits over every choice, so the
  value does not depend on pixel order.
  """
  kth = _kth_largest(xp, maps, k)[:, None]
  above = maps > kth
  tied = maps == kth
  count_above = xp.sum(above, axis=1)
  hits_above = xp.sum(above & masks, axis=1)
  tied_total = xp.sum(tied, axis=1)
  tied_in_mask = xp.sum(tied & masks, axis=1)
  return hits_above + (k - count_above) * tied_in_mask / xp.maximum(tied_total, 1)


def _relevance_rank_accuracy(xp, maps, masks):
  maps, masks = _flat(xp, maps, masks)
  valid, maps = _valid(xp, maps, masks)
  k = xp.sum(masks, axis=1)
  k_safe = xp.clip(k, 1, maps.shape[1])
  hits = _top_k_hits(xp, maps, masks, k_safe)
  return xp.where(valid, hits / k_safe, xp.nan)


def _top_k_intersection(xp, maps, masks, k):
  maps, masks = _flat(xp, maps, masks)
  valid, maps = _valid(xp, maps, masks)
  ks = xp.full(maps.shape[:1], k)
  return xp.where(valid, _top_k_hits(xp, maps, masks, ks) / k, xp.nan)


def _as_float64(maps, masks):
  maps, masks = _checked(maps, masks)
  return maps.astype(np.float64), masks


def pointing_game(maps, masks) -> np.ndarray:
  """Pointing game hit (1.0 / 0.0): the map's maximum lies inside the mask.

  Ties: a hit when ANY pixel holding the maximum value lies in the mask, as Quantus'
  `PointingGame` (`np.any(s[np.argwhere(a == np.max(a))])`). The hit rate of a method is
  `summarize(...)["mean"]`.
  """
  return _pointing_game(np, *_as_float64(maps, masks))


def relevance_mass_accuracy(maps, masks) -> np.ndarray:
  """Quantus `RelevanceMassAccuracy`: sum of the map inside the mask / sum of the map.

  The map is used as given (Quantus' `abs`/`normalise` preprocessing is the caller's; a max
  normalization does not change the ratio). NaN where the map sums to zero.
  """
  return _relevance_mass_accuracy(np, *_as_float64(maps, masks))


def relevance_rank_accuracy(maps, masks) -> np.ndarray:
  """Quantus `RelevanceRankAccuracy`: share of the K highest pixels inside the mask, K = |mask|.

  Ties at the K-th value are shared out evenly (the expected value over tie orders); without
  such ties this is Quantus' value exactly.
  """
  return _relevance_rank_accuracy(np, *_as_float64(maps, masks))


def top_k_intersection(maps, masks, *, k: int = 1000) -> np.ndarray:
  """Quantus `TopKIntersection` (default k = 1000): |top-k pixels inside the mask| / k.

  Ties at the k-th value are shared out evenly, as in `relevance_rank_accuracy`. Quantus'
  `concept_influence` variant is this value times (pixels / |mask|).
  """
  maps, masks = _as_float64(maps, masks)
  size = int(np.prod(maps.shape[1:]))
  if not 1 <= k <= size:
    raise ValueError(f"k must be in [1, {size}] (pixels per map), got {k}.")
  return _top_k_intersection(np, maps, masks, k)


def energy_pointing(maps, masks) -> np.ndarray:
  """Energy-based pointing game (Score-CAM): positive map mass inside the mask / positive mass.

  Uses max(map, 0), so negative attributions carry no energy; NaN where no pixel is positive.
  """
  return _energy_pointing(np, *_as_float64(maps, masks))


pointing_game_jax = jax.jit(functools.partial(_pointing_game, jnp))
relevance_mass_accuracy_jax = jax.jit(functools.partial(_relevance_mass_accuracy, jnp))
relevance_rank_accuracy_jax = jax.jit(functools.partial(_relevance_rank_accuracy, jnp))
energy_pointing_jax = jax.jit(functools.partial(_energy_pointing, jnp))
top_k_intersection_jax = jax.jit(functools.partial(_top_k_intersection, jnp), static_argnames="k")
