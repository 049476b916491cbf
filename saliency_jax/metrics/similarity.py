"""Similarity metrics: one saliency map compared with another.

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

# Maps per jitted SSIM call (about 10 float32 copies of N x H x W live at once).
_SSIM_CHUNK = 128
# On the CPU, maps per jitted call (`ssim`) and per loop step (`ssim_jax`), by window kind:
# a few 320x320 maps keep the intermediates in cache. Measured on 100 maps: the uniform
# window runs 1.2x faster with 4 maps than with 2; the Gaussian one 3x slower with 4 than 2.
_CPU_MAPS_PER_STEP = {False: 4, True: 2}
# scikit-image's Gaussian window: truncated at 3.5 sigma (11 taps for sigma 1.5, Wang et al.).
_GAUSSIAN_TRUNCATE = 3.5


def _window(win_size: int, gaussian_weights: bool, sigma: float) -> np.ndarray:
  """1-D weights of scikit-image's separable SSIM filter (scipy.ndimage's kernels)."""
  if gaussian_weights:
    radius = int(_GAUSSIAN_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 / sigma**2 * x**2)
    return weights / weights.sum()
  return np.full(win_size, 1.0 / win_size)


def _resolve_win_size(win_size: int | None, gaussian_weights: bool, sigma: float) -> int:
  if win_size is not None:
    return int(win_size)
  if gaussian_weights:
    return 2 * int(_GAUSSIAN_TRUNCATE * sigma + 0.5) + 1
  return 7


def _box_sums(x: jax.Array, width: int, axis: int) -> jax.Array:
  """Sums of `width` consecutive values along `axis` ('valid': the axis shrinks by width - 1)."""
  window = [1] * x.ndim
  window[axis] = width
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, [1] * x.ndim, "VALID")


def _correlate_box(x: jax.Array, weights: np.ndarray, axis: int) -> jax.Array:
  """'valid' correlation along `axis` with a symmetric kernel, as box sums.

  reduce_window runs several times faster on XLA:CPU than sums of shifted slices along the
  non-contiguous axis. A non-uniform kernel is a weighted sum of centred box sums of widths
  1, 3, ..., taps: a symmetric kernel w equals sum_k (w[r + k] - w[r + k + 1]) * box_{2k+1}.
  A uniform kernel's weight is left out (see `_kernel_scale`).
  """
  taps = len(weights)
  if _is_uniform(weights):
    return _box_sums(x, taps, axis)
  radius = (taps - 1) // 2
  size = x.shape[axis] - taps + 1
  acc = 0.0
  for k in range(radius + 1):
    outer = weights[radius + k + 1] if k < radius else 0.0
    acc = acc + float(weights[radius + k] - outer) * jax.lax.slice_in_dim(
      _box_sums(x, 2 * k + 1, axis), radius - k, radius - k + size, axis=axis
    )
  return acc


def _correlate_slices(x: jax.Array, weights: np.ndarray, axis: int) -> jax.Array:
  """'valid' correlation along `axis` as a weighted sum of shifted slices.

  XLA fuses the slices into their consumer or their producer: no pass of their own.
  A uniform kernel's weight is left out (see `_kernel_scale`).
  """
  taps = len(weights)
  size = x.shape[axis] - taps + 1
  uniform = _is_uniform(weights)
  acc = 0.0
  for k in range(taps):
    part = jax.lax.slice_in_dim(x, k, k + size, axis=axis)
    acc = acc + (part if uniform else float(weights[k]) * part)
  return acc


def _correlate_2d(x: jax.Array, weights: np.ndarray) -> jax.Array:
  """'valid' separable correlation over the last two axes: one pass writes, one fuses.

  One of the two 1-D passes must write its result (else XLA fuses both into the SSIM
  formula and recomputes taps^2 products per pixel). Measured on XLA:CPU:
  - uniform kernel: box sums down the columns (reduce_window), then slices along the rows,
    fused into the SSIM formula;
  - other kernels: slices down the columns, fused with the products that feed them, then
    box sums along the rows (reduce_window, which is not fused with its operand), whose
    weighted sum is fused into the SSIM formula.
  """
  if _is_uniform(weights):
    return _correlate_slices(_correlate_box(x, weights, axis=-2), weights, axis=-1)
  return _correlate_box(_correlate_slices(x, weights, axis=-2), weights, axis=-1)


def _is_uniform(weights: np.ndarray) -> bool:
  return bool(np.all(weights == weights[0]))


def _kernel_scale(weights: np.ndarray) -> float:
  """The weight the two correlations leave out: folded into the caller's elementwise pass."""
  return float(weights[0]) ** 2 if _is_uniform(weights) else 1.0


def _ssim_maps(
  a: jax.Array,
  b: jax.Array,
  data_range: jax.Array,
  *,
  win_size: int,
  gaussian_weights: bool,
  sigma: float,
  use_sample_covariance: bool,
  K1: float,
  K2: float,
) -> jax.Array:
  """SSIM over the last two axes of `a` and `b` (any leading axes); float32."""
  weights = _window(win_size, gaussian_weights, sigma)
  radius = (len(weights) - 1) // 2
  pad = (win_size - 1) // 2
  height, width = a.shape[-2:]
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  # Variances are shift-invariant: the second moments are filtered from maps centred on their
  # mean, which keeps float32's cancellation in E[x^2] - E[x]^2 small.
  mean_a = jnp.mean(a, axis=(-2, -1), keepdims=True)
  mean_b = jnp.mean(b, axis=(-2, -1), keepdims=True)
  # A map's mean is finite iff all its pixels are (a separate isfinite reduction costs as much
  # as the filtering on XLA:CPU).
  finite = jnp.isfinite(mean_a[..., 0, 0]) & jnp.isfinite(mean_b[..., 0, 0])
  # Only the crop [pad:-pad] enters the mean. It needs the input `radius` pixels further out;
  # when the filter is wider than the crop margin, extend the image by 'reflect' padding
  # (scipy.ndimage's 'reflect' is NumPy's 'symmetric').
  inner = max(pad - radius, 0)
  outer = max(radius - pad, 0)
  a = a[..., inner : height - inner, inner : width - inner]
  b = b[..., inner : height - inner, inner : width - inner]
  if outer:
    widths = [(0, 0)] * (a.ndim - 2) + [(outer, outer)] * 2
    a = jnp.pad(a, widths, mode="symmetric")
    b = jnp.pad(b, widths, mode="symmetric")
  x, y = a - mean_a, b - mean_b
  # SSIM needs only the sum of the two variances, so four maps are filtered, not five, and as
  # one stacked array: XLA then writes them in one pass and filters them in one op each way.
  scale = _kernel_scale(weights)
  dx, dy, uxx_yy, uxy = scale * _correlate_2d(jnp.stack([x, y, x * x + y * y, x * y]), weights)
  ux, uy = dx + mean_a, dy + mean_b  # local means; dx, dy are those of the centred maps

  num_pixels = win_size**2
  cov_norm = num_pixels / (num_pixels - 1) if use_sample_covariance else 1.0
  vx_vy = cov_norm * (uxx_yy - dx * dx - dy * dy)
  vxy = cov_norm * (uxy - dx * dy)

  data_range = jnp.asarray(data_range, jnp.float32)[..., None, None]
  c1 = (K1 * data_range) ** 2
  c2 = (K2 * data_range) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx_vy + c2))
  # Row sums as a matrix-vector product: XLA:CPU fuses the elementwise SSIM formula into a
  # plain reduction with poorly vectorized code (measured 10x slower here); a dot stores the
  # SSIM map first. Each row sum is short, so float32 accumulates little error.
  row_sums = jnp.matmul(s, jnp.ones((s.shape[-1],), s.dtype), precision="highest")
  value = jnp.mean(row_sums, axis=-1) / s.shape[-1]
  return jnp.where(finite, value, jnp.nan)


@functools.partial(
  jax.jit,
  static_argnames=("win_size", "gaussian_weights", "sigma", "use_sample_covariance", "K1", "K2"),
)
def ssim_jax(
  a: jax.Array,
  b: jax.Array,
  *,
  data_range,
  win_size: int | None = None,
  gaussian_weights: bool = False,
  sigma: float = 1.5,
  use_sample_covariance: bool = True,
  K1: float = 0.01,
  K2: float = 0.03,
) -> jax.Array:
  """jit-able `ssim` (float32 [N]); see `ssim`. No input checks beyond shapes."""
  kwargs = dict(
    win_size=_resolve_win_size(win_size, gaussian_weights, sigma),
    gaussian_weights=gaussian_weights,
    sigma=sigma,
    use_sample_covariance=use_sample_covariance,
    K1=K1,
    K2=K2,
  )
  data_range = jnp.broadcast_to(jnp.asarray(data_range, jnp.float32), a.shape[:1])
  per_step = _CPU_MAPS_PER_STEP[gaussian_weights]
  if jax.default_backend() == "cpu" and a.shape[0] > per_step:
    # A few maps at a time keep the working set in cache. Accelerators take the whole batch.
    return jax.lax.map(lambda t: _ssim_maps(*t, **kwargs), (a, b, data_range), batch_size=per_step)
  return _ssim_maps(a, b, data_range, **kwargs)


def ssim(
  a,
  b,
  *,
  data_range,
  win_size: int | None = None,
  gaussian_weights: bool = False,
  sigma: float = 1.5,
  use_sample_covariance: bool = True,
  K1: float = 0.01,
  K2: float = 0.03,
) -> np.ndarray:
  """Mean structural similarity of each pair of 2-D maps, = scikit-image's.

  Equals `skimage.metrics.structural_similarity(a[i], b[i], data_range=..., ...)` with the same
  keyword arguments: a 7x7 uniform window (or, with `gaussian_weights`, scipy's Gaussian of
  `sigma` truncated at 3.5 sigma: 11 taps, 'reflect' boundary), sample covariance
  (`use_sample_covariance=True`, scikit-image's default for both window kinds; pass False
  to match Wang et al. 2004), and the mean over the image cropped by (win_size - 1) // 2.
  Computed in float32 with JAX (batched, jit-compiled), the mean accumulated per row.

  Args:
    a, b: [N, H, W] maps, H and W >= win_size.
    data_range: required. The dynamic range of the maps (scalar or [N]): enters the
      constants C1 = (K1 R)^2, C2 = (K2 R)^2. The paper's code got 2.0 from scikit-image's old
      float default; 1.0 is the textbook value for maps in [0, 1].
    win_size: odd window side; None = 7, or 2 * int(3.5 sigma + 0.5) + 1 with Gaussian
      weights (scikit-image's rule).
    gaussian_weights, sigma, use_sample_covariance, K1, K2: as in scikit-image.

  Returns:
    float64 [N]. NaN where either map holds NaN or inf. Constant maps follow scikit-image
    (two equal constant maps score 1).
  """
  a = policy.as_map_stack(a, "a", ndim=3)
  b = policy.as_map_stack(b, "b", ndim=3)
  if a.shape != b.shape:
    raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}.")
  win = _resolve_win_size(win_size, gaussian_weights, sigma)
  if win % 2 != 1 or win < 1:
    raise ValueError(f"win_size must be odd, got {win}.")
  if min(a.shape[1:]) < win:
    raise ValueError(f"win_size {win} exceeds the map size {a.shape[1:]}.")
  if data_range is None:
    raise ValueError(
      "data_range is required (2.0 reproduces the paper, 1.0 is the textbook "
      "value for maps in [0, 1])."
    )
  data_range = np.broadcast_to(np.asarray(data_range, np.float64), (a.shape[0],))
  if not np.all(data_range > 0):
    raise ValueError(f"data_range must be positive, got {data_range}.")
  if min(K1, K2, sigma) < 0:
    raise ValueError("K1, K2 and sigma must be non-negative.")
  fn = functools.partial(
    ssim_jax,
    win_size=win,
    gaussian_weights=gaussian_weights,
    sigma=float(sigma),
    use_sample_covariance=use_sample_covariance,
    K1=float(K1),
    K2=float(K2),
  )
  chunk = _CPU_MAPS_PER_STEP[gaussian_weights] if _batching.on_cpu() else _SSIM_CHUNK
  return _batching.per_map_in_chunks(
    lambda x, y, r: fn(x, y, data_range=r), [a, b, data_range], chunk=chunk
  )


# ----------------------------------------------------------------------------------------------
# Correlations and distances. Written once against an array namespace `xp`: NumPy in float64
# for the public functions, jax.numpy in float32 for the jit-able `*_jax` versions.


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
  return _batching.per_map_in_chunks(fn, [a, b], chunk=_SSIM_CHUNK)


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
  from skimage import feature  # Local: only this metric needs it.

  a = policy.as_map_stack(a, "a", ndim=3)
  b = policy.as_map_stack(b, "b", ndim=3)
  if a.shape != b.shape:
    raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}.")
  _, _, finite = _pairs(np, a.astype(np.float64), b.astype(np.float64))
  kwargs = dict(
    orientations=orientations,
    pixels_per_cell=pixels_per_cell,
    cells_per_block=cells_per_block,
    block_norm=block_norm,
    feature_vector=True,
  )
  out = np.full(a.shape[0], np.nan)
  for i in np.flatnonzero(finite):
    fa = feature.hog(a[i].astype(np.float64), **kwargs)
    fb = feature.hog(b[i].astype(np.float64), **kwargs)
    out[i] = _pearson_rows(np, fa[None], fb[None], np.ones(1, bool))[0]
  return out


pearson_jax = jax.jit(functools.partial(_pearson, jnp))
spearman_jax = jax.jit(functools.partial(_spearman, jnp), static_argnames="absolute")
mse_jax = jax.jit(lambda a, b: _normalized_distance(jnp, a, b, 2))
l1_jax = jax.jit(lambda a, b: _normalized_distance(jnp, a, b, 1))
