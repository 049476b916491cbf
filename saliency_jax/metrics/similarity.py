"""Similarity metrics besides SSIM (see structural_similarity): correlations, distances, HOG.

Every function takes two stacks of the same shape, `a` and `b` [N, H, W] (pairs compared
row by row), and returns float64 [N]. Undefined cases follow `saliency_jax.metrics.policy`:
NaN/inf in either map -> NaN; otherwise the reference's own value where it defines one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.metrics import _batching
from saliency_jax.metrics import policy

# Maps per jitted call on accelerators.
_CHUNK = 128

# Written once against an array namespace `xp`: NumPy in float64 for the public functions,
# jax.numpy in float32 for the jit-able `*_jax` versions.


def _pairs(xp, a, b):
  n = a.shape[0]
  a = xp.reshape(a, (n, -1))
  b = xp.reshape(b, (n, -1))
  finite = xp.all(xp.isfinite(a), axis=1) & xp.all(xp.isfinite(b), axis=1)
  a = xp.where(finite[:, None], a, 0)
  b = xp.where(finite[:, None], b, 0)
  return a, b, finite


def _pearson_rows(xp, a, b, valid):
  # Zero variance decided exactly (max == min), not from float32 rounding of the centred sums.
  varies = lambda x: xp.max(x, axis=1) > xp.min(x, axis=1)  # noqa: E731
  valid = valid & varies(a) & varies(b)
  a = a - xp.mean(a, axis=1, keepdims=True)
  b = b - xp.mean(b, axis=1, keepdims=True)
  denominator = xp.sqrt(xp.sum(a * a, axis=1) * xp.sum(b * b, axis=1))
  ok = valid & (denominator > 0)
  r = xp.sum(a * b, axis=1) / xp.where(ok, denominator, 1)
  # As SciPy: clip rounding beyond [-1, 1]; zero variance is undefined.
  return xp.where(ok, xp.clip(r, -1.0, 1.0), xp.nan)


def _average_ranks(xp, x):
  """1-based ranks along axis 1, ties given their average rank (scipy.stats.rankdata)."""
  if xp is np:
    return _average_ranks_numpy(x)
  ordered = xp.sort(x, axis=1)
  less = jax.vmap(lambda o, r: jnp.searchsorted(o, r, side="left"))(ordered, x)
  less_equal = jax.vmap(lambda o, r: jnp.searchsorted(o, r, side="right"))(ordered, x)
  return (less + less_equal + 1) / 2


def _average_ranks_numpy(x: np.ndarray) -> np.ndarray:
  """As `_average_ranks`, from one argsort per row: a tie group's ranks run from its first to
  its last sorted position, found by running max/min over the group boundaries (no per-row
  Python loop, no binary searches)."""
  n = x.shape[1]
  order = np.argsort(x, axis=1, kind="stable")
  ordered = np.take_along_axis(x, order, axis=1)
  position = np.broadcast_to(np.arange(n), ordered.shape)
  differs = ordered[:, 1:] != ordered[:, :-1]
  starts = np.concatenate([np.ones((len(x), 1), bool), differs], axis=1)
  ends = np.concatenate([differs, np.ones((len(x), 1), bool)], axis=1)
  first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
  last = np.minimum.accumulate(np.where(ends, position, n - 1)[:, ::-1], axis=1)[:, ::-1]
  ranks = np.empty(x.shape, np.float64)
  np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=1)
  return ranks


def _pearson(xp, a, b):
  a, b, finite = _pairs(xp, a, b)
  return _pearson_rows(xp, a, b, finite)


def _spearman(xp, a, b, absolute=False):
  a, b, finite = _pairs(xp, a, b)
  if absolute:
    a, b = xp.abs(a), xp.abs(b)
  return _pearson_rows(xp, _average_ranks(xp, a), _average_ranks(xp, b), finite)


def _normalized_distance(xp, a, b, power):
  a, b, finite = _pairs(xp, a, b)

  def minmax(x):
    low = xp.min(x, axis=1, keepdims=True)
    span = xp.max(x, axis=1, keepdims=True) - low
    return (x - low) / xp.where(span > 0, span, 1), span[:, 0] > 0

  a, a_ok = minmax(a)
  b, b_ok = minmax(b)
  value = xp.mean(xp.abs(a - b) ** power, axis=1)
  return xp.where(finite & a_ok & b_ok, value, xp.nan)


def _checked_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
  a = policy.as_map_stack(a, "a")
  b = policy.as_map_stack(b, "b")
  if a.shape != b.shape:
    raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}.")
  return a.astype(np.float64), b.astype(np.float64)


def pearson(a, b) -> np.ndarray:
  """Pearson correlation of each pair of maps over pixels, = scipy.stats.pearsonr; float64 [N].

  NaN where either map is constant (zero variance) or holds NaN/inf.
  """
  return _pearson(np, *_checked_pair(a, b))


def spearman(a, b, *, absolute: bool = False) -> np.ndarray:
  """Spearman rank correlation over pixels, ties at their average rank, = scipy.stats.spearmanr.

  Args:
    a, b: [N, ...] maps.
    absolute: rank |a| and |b| instead (Adebayo et al.'s "with absolute value" variant, which
      ignores the sign of attributions).

  Returns:
    float64 [N]; NaN where a map is constant or holds NaN/inf.
  """
  a, b = _checked_pair(a, b)
  if _batching.on_cpu():
    return _spearman(np, a, b, absolute)
  fn = functools.partial(spearman_jax, absolute=absolute)
  return _batching.per_map_in_chunks(fn, [a, b], chunk=_CHUNK)


def average_ranks(maps, *, absolute: bool = False) -> np.ndarray:
  """Each map's pixel ranks (1-based, ties at their average rank, = scipy.stats.rankdata),
  float64 with the maps' shape; NaN everywhere in a map holding NaN/inf.

  `pearson(average_ranks(a), average_ranks(b)) == spearman(a, b)`: rank a map once when it is
  compared with many others (the random-pair baseline).
  """
  maps = np.asarray(maps, np.float64)
  flat = maps.reshape(maps.shape[0], -1)
  finite = np.all(np.isfinite(flat), axis=1)
  flat = np.where(finite[:, None], np.abs(flat) if absolute else flat, 0.0)
  ranks = _average_ranks_numpy(flat)
  return np.where(finite[:, None], ranks, np.nan).reshape(maps.shape)


def mse(a, b) -> np.ndarray:
  """Mean squared difference of the min-max normalized maps ([0, 1] each); float64 [N].

  NaN where a map is constant (it has no min-max normalization) or holds NaN/inf.
  """
  return _normalized_distance(np, *_checked_pair(a, b), 2)


def l1(a, b) -> np.ndarray:
  """Mean absolute difference of the min-max normalized maps; float64 [N]. NaN as `mse`."""
  return _normalized_distance(np, *_checked_pair(a, b), 1)


def top_k_iou(a, b, *, fraction: float = 0.1) -> np.ndarray:
  """IoU of the two maps' top-k pixel sets, k = ceil(fraction * pixels); float64 [N].

  A map's top-k set holds every pixel at or above its k-th largest value, so pixels tied with
  the k-th value are all in (the set may exceed k; this does not depend on pixel order).
  NaN where a map is constant (its set would be every pixel) or holds NaN/inf.
  """
  a, b = _checked_pair(a, b)
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  a, b, finite = _pairs(np, a, b)
  size = a.shape[1]
  k = min(size, max(1, int(np.ceil(fraction * size))))

  def top(x):
    kth = np.partition(x, size - k, axis=1)[:, size - k]
    return x >= kth[:, None]

  top_a, top_b = top(a), top(b)
  inter = np.sum(top_a & top_b, axis=1)
  union = np.sum(top_a | top_b, axis=1)
  valid = finite & policy.nonconstant_rows(a) & policy.nonconstant_rows(b)
  return np.where(valid, inter / union, np.nan)


def hog_similarity(
  a,
  b,
  *,
  orientations: int = 9,
  pixels_per_cell=(8, 8),
  cells_per_block=(3, 3),
  block_norm: str = "L2-Hys",
) -> np.ndarray:
  """Pearson correlation of the maps' HOG features (Adebayo et al. 2018's HOG similarity).

  Features are `skimage.feature.hog(map, orientations, pixels_per_cell, cells_per_block,
  block_norm)`, one map at a time on the CPU (scikit-image's defaults; Adebayo et al. do not
  publish theirs in the paper, so these are stated, not copied), then Pearson's r of the two
  feature vectors. NaN where a map holds NaN/inf or its HOG features are constant (a constant
  map has all-zero gradients).
  """
  a = policy.as_map_stack(a, "a", ndim=3)
  b = policy.as_map_stack(b, "b", ndim=3)
  if a.shape != b.shape:
    raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}.")
  kwargs = dict(
    orientations=orientations,
    pixels_per_cell=pixels_per_cell,
    cells_per_block=cells_per_block,
    block_norm=block_norm,
  )
  features_a, finite_a = hog_features(a, **kwargs)
  features_b, finite_b = hog_features(b, **kwargs)
  return hog_pearson(features_a, features_b, finite_a & finite_b)


def hog_features(
  maps,
  *,
  orientations: int = 9,
  pixels_per_cell=(8, 8),
  cells_per_block=(3, 3),
  block_norm: str = "L2-Hys",
) -> tuple[np.ndarray, np.ndarray]:
  """(features float64 [N, F], finite bool [N]): each map's HOG feature vector as
  `hog_similarity` computes it (zeros for a map holding NaN/inf, which `finite` marks), so
  that maps compared many times (the random-pair baseline) are described once."""
  from skimage import feature  # Local: only this metric needs it.

  maps = policy.as_map_stack(maps, "maps", ndim=3).astype(np.float64)
  finite = np.all(np.isfinite(maps.reshape(maps.shape[0], -1)), axis=1)
  kwargs = dict(
    orientations=orientations,
    pixels_per_cell=pixels_per_cell,
    cells_per_block=cells_per_block,
    block_norm=block_norm,
    feature_vector=True,
  )
  rows = {i: feature.hog(maps[i], **kwargs) for i in np.flatnonzero(finite)}
  size = next(iter(rows.values())).size if rows else 0
  features = np.zeros((maps.shape[0], size))
  for i, row in rows.items():
    features[i] = row
  return features, finite


def hog_pearson(features_a: np.ndarray, features_b: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Pearson's r of paired rows of `hog_features`, NaN where not `valid` (a map holding
  NaN/inf) or where a row is constant."""
  if features_a.shape[1] == 0:  # no map had features (every one held NaN/inf)
    return np.full(features_a.shape[0], np.nan)
  return _pearson_rows(np, features_a, features_b, valid)


pearson_jax = jax.jit(functools.partial(_pearson, jnp))
spearman_jax = jax.jit(functools.partial(_spearman, jnp), static_argnames="absolute")
mse_jax = jax.jit(lambda a, b: _normalized_distance(jnp, a, b, 2))
l1_jax = jax.jit(lambda a, b: _normalized_distance(jnp, a, b, 1))
