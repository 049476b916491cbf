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


def _sortable_bits(x: np.ndarray) -> np.ndarray:
  """uint32 keys whose unsigned order is the float32 order of `x` (-0.0 folded into +0.0)."""
  bits = (x.astype(np.float32) + np.float32(0.0)).view(np.uint32)
  flip = np.where(bits >> np.uint32(31), np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
  return bits ^ flip


def _group_end_counts(scores: np.ndarray, labels: np.ndarray):
  """Yields per map (tps, fps) at every distinct score, from the highest score down.

  This is scikit-learn's `_binary_clf_curve` without `drop_intermediate`: point k counts the true
  and false positives among pixels whose score is >= the k-th distinct score.
  """
  n = scores.shape[0]
  flat = scores.reshape(n, -1)
  lab = labels.reshape(n, -1)
  exact32 = flat.dtype in (np.float32, np.float16) or np.issubdtype(flat.dtype, np.integer) and (
      flat.dtype.itemsize <= 2)
  if not exact32:
    with np.errstate(over="ignore"):
      exact32 = bool(np.array_equal(flat.astype(np.float32), flat))
  if exact32:
    # One sort of packed (score, label) keys: no argsort, no gather. Within a run of equal
    # scores the labels come out sorted, which changes nothing at the run's end.
    keys = (_sortable_bits(flat).astype(np.uint64) << np.uint64(1)) | lab.astype(np.uint64)
    keys = np.sort(keys, axis=1)[:, ::-1]
    sorted_labels = (keys & np.uint64(1)).astype(np.int64)
    sorted_scores = keys >> np.uint64(1)
  else:
    order = np.argsort(-flat.astype(np.float64), axis=1, kind="stable")
    sorted_scores = np.take_along_axis(flat.astype(np.float64), order, axis=1)
    sorted_labels = np.take_along_axis(lab, order, axis=1).astype(np.int64)
  for i in range(n):
    s = sorted_scores[i]
    ends = np.flatnonzero(np.append(s[:-1] != s[1:], True))
    tps = np.cumsum(sorted_labels[i])[ends].astype(np.float64)
    fps = (ends + 1).astype(np.float64) - tps
    yield tps, fps


def _rank_metrics_numpy(maps: np.ndarray, masks: np.ndarray, which: tuple[str, ...]) -> dict:
  valid = policy.localization_valid(maps, masks)
  clean = np.where(valid.reshape((-1,) + (1,) * (maps.ndim - 1)), maps, 0)
  out = {name: np.full(maps.shape[0], np.nan) for name in which}
  for i, (tps, fps) in enumerate(_group_end_counts(clean, masks)):
    if not valid[i]:
      continue
    recall = np.concatenate([[0.0], tps / tps[-1]])
    precision = np.concatenate([[1.0], tps / (tps + fps)])
    if "auprc" in which:
      out["auprc"][i] = np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2)
    if "average_precision" in which:
      out["average_precision"][i] = np.sum(np.diff(recall) * precision[1:])
    if "roc_auc" in which:
      tpr = np.concatenate([[0.0], tps / tps[-1]])
      fpr = np.concatenate([[0.0], fps / fps[-1]])
      out["roc_auc"][i] = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
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

  neg_scores, sorted_labels = jax.lax.sort((-scores, labels.astype(jnp.float32)), dimension=1,
                                           num_keys=1)
  size = scores.shape[1]
  position = jnp.arange(size)
  # Counts up to 2**24 are exact in float32.
  tps = jnp.cumsum(sorted_labels, axis=1)
  fps = (position + 1).astype(jnp.float32) - tps
  is_end = jnp.concatenate(
      [neg_scores[:, :-1] != neg_scores[:, 1:], jnp.ones((n, 1), bool)], axis=1)
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


_JAX_RANK = {"auprc": auprc_jax, "average_precision": average_precision_jax,
             "roc_auc": roc_auc_jax}


def _checked(maps, masks) -> tuple[np.ndarray, np.ndarray]:
  maps = policy.as_map_stack(maps)
  masks = policy.as_mask_stack(masks, maps.shape)
  return maps, masks


def rank_metrics(maps, masks, which=("auprc", "average_precision", "roc_auc")) -> dict:
  """Several rank metrics from one sort per map: {name: float64 [N]}."""
  maps, masks = _checked(maps, masks)
  if _batching.on_cpu():
    return _rank_metrics_numpy(maps, masks, tuple(which))
  return {name: _batching.map_in_chunks(_JAX_RANK[name], [maps, masks], chunk=_CHUNK)
          for name in which}


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
