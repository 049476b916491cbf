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
# scikit-image's Gaussian window: truncated at 3.5 sigma (11 taps for sigma 1.5, Wang et al.).
_GAUSSIAN_TRUNCATE = 3.5
_PER_MAP_LOOP = True


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


def _filter_valid(x: jax.Array, weights: np.ndarray) -> jax.Array:
  """Separable correlation over the last two axes, 'valid' part only (shifted-slice sums)."""
  taps = len(weights)
  rows = x.shape[-2] - taps + 1
  cols = x.shape[-1] - taps + 1
  acc = sum(float(w) * x[..., i:i + rows, :] for i, w in enumerate(weights))
  return sum(float(w) * acc[..., :, j:j + cols] for j, w in enumerate(weights))


def _ssim_maps(a: jax.Array, b: jax.Array, data_range: jax.Array, *, win_size: int,
               gaussian_weights: bool, sigma: float, use_sample_covariance: bool, K1: float,
               K2: float) -> jax.Array:
  """SSIM over the last two axes of `a` and `b` (any leading axes); float32."""
  weights = _window(win_size, gaussian_weights, sigma)
  radius = (len(weights) - 1) // 2
  pad = (win_size - 1) // 2
  height, width = a.shape[-2:]
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  finite = jnp.all(jnp.isfinite(a), axis=(-2, -1)) & jnp.all(jnp.isfinite(b), axis=(-2, -1))
  a = jnp.where(finite[..., None, None], a, 0.0)
  b = jnp.where(finite[..., None, None], b, 0.0)
  # Variances are shift-invariant: filter maps centred on their mean, which keeps float32's
  # cancellation in E[x^2] - E[x]^2 small, then add the means back for the luminance term.
  mean_a = jnp.mean(a, axis=(-2, -1), keepdims=True)
  mean_b = jnp.mean(b, axis=(-2, -1), keepdims=True)
  x, y = a - mean_a, b - mean_b
  # Only the crop [pad:-pad] enters the mean. It needs the input `radius` pixels further out;
  # when the filter is wider than the crop margin, extend the image by 'reflect' padding
  # (scipy.ndimage's 'reflect' is NumPy's 'symmetric').
  inner = max(pad - radius, 0)
  outer = max(radius - pad, 0)
  x = x[..., inner:height - inner, inner:width - inner]
  y = y[..., inner:height - inner, inner:width - inner]
  if outer:
    widths = [(0, 0)] * (x.ndim - 2) + [(outer, outer)] * 2
    x = jnp.pad(x, widths, mode="symmetric")
    y = jnp.pad(y, widths, mode="symmetric")
  ux, uy, uxx, uyy, uxy = (_filter_valid(v, weights) for v in (x, y, x * x, y * y, x * y))

  num_pixels = win_size**2
  cov_norm = num_pixels / (num_pixels - 1) if use_sample_covariance else 1.0
  vx = cov_norm * (uxx - ux * ux)
  vy = cov_norm * (uyy - uy * uy)
  vxy = cov_norm * (uxy - ux * uy)
  ux = ux + mean_a
  uy = uy + mean_b

  data_range = jnp.asarray(data_range, jnp.float32)[..., None, None]
  c1 = (K1 * data_range)**2
  c2 = (K2 * data_range)**2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
  # Mean of row means: each partial sum is short, so float32 accumulates little error.
  value = jnp.mean(jnp.mean(s, axis=-1), axis=-1)
  return jnp.where(finite, value, jnp.nan)


@functools.partial(jax.jit, static_argnames=("win_size", "gaussian_weights", "sigma",
                                             "use_sample_covariance", "K1", "K2"))
def ssim_jax(a: jax.Array, b: jax.Array, *, data_range, win_size: int | None = None,
             gaussian_weights: bool = False, sigma: float = 1.5,
             use_sample_covariance: bool = True, K1: float = 0.01,
             K2: float = 0.03) -> jax.Array:
  """jit-able `ssim` (float32 [N]); see `ssim`. No input checks beyond shapes."""
  kwargs = dict(win_size=_resolve_win_size(win_size, gaussian_weights, sigma),
                gaussian_weights=gaussian_weights, sigma=sigma,
                use_sample_covariance=use_sample_covariance, K1=K1, K2=K2)
  data_range = jnp.broadcast_to(jnp.asarray(data_range, jnp.float32), a.shape[:1])
  if _PER_MAP_LOOP and jax.default_backend() == "cpu":
    # One map at a time keeps the working set in cache; on the CPU that beats one big vmap.
    return jax.lax.map(lambda t: _ssim_maps(*t, **kwargs), (a, b, data_range))
  return _ssim_maps(a, b, data_range, **kwargs)


def ssim(a, b, *, data_range, win_size: int | None = None, gaussian_weights: bool = False,
         sigma: float = 1.5, use_sample_covariance: bool = True, K1: float = 0.01,
         K2: float = 0.03) -> np.ndarray:
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
    raise ValueError("data_range is required (2.0 reproduces the paper, 1.0 is the textbook "
                     "value for maps in [0, 1]).")
  data_range = np.broadcast_to(np.asarray(data_range, np.float64), (a.shape[0],))
  if not np.all(data_range > 0):
    raise ValueError(f"data_range must be positive, got {data_range}.")
  if min(K1, K2, sigma) < 0:
    raise ValueError("K1, K2 and sigma must be non-negative.")
  fn = functools.partial(ssim_jax, win_size=win, gaussian_weights=gaussian_weights,
                         sigma=float(sigma), use_sample_covariance=use_sample_covariance,
                         K1=float(K1), K2=float(K2))
  return _batching.map_in_chunks(lambda x, y, r: fn(x, y, data_range=r),
                                 [a, b, data_range], chunk=_SSIM_CHUNK)
