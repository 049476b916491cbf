"""SSIM: the mean structural similarity of two maps, = scikit-image's, batched and jit-compiled.

`ssim(a, b, data_range=...)` takes two stacks [N, H, W] (pairs compared row by row) and returns
float64 [N]; `ssim_jax` is the jit-able float32 version. NaN/inf in either map gives NaN
(`saliency_jax.metrics.policy`); constant maps follow scikit-image.
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
