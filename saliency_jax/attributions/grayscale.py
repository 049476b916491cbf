"""Maps to 2-D images in [0, 1]: PAIR's VisualizeImageGrayscale and VisualizeImageDiverging.

Bit-for-bit the NumPy arithmetic of PAIR (`saliency.core.visualization`, NumPy >= 1.22):
  * the percentile is NumPy's default "linear" method: virtual index q*(n-1) computed in float64,
    then NumPy's float32 lerp `a + (b-a)*g`, or `b - (b-a)*(1-g)` when g >= 0.5;
  * no guard against division by zero. A constant map (or one whose 99th percentile equals its
    minimum) gives 0/0 = NaN at those pixels (and x/0 = inf, clipped to 1, above them). This is
    what the study's pipeline produced for constant maps (and why its SSIM means drop NaNs);
    callers that prefer a number pass `nan_to` (e.g. 0.0).
The percentile's order statistics come from `lax.top_k`, on every backend.
"""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _as_channels(maps: Array) -> Array:
  maps = jnp.asarray(maps, jnp.float32)
  if maps.ndim == 3:  # [B,H,W]: a single-channel map (Grad-CAM, XRAI)
    return maps[..., None]
  if maps.ndim != 4:
    raise ValueError(f"maps must be [B,H,W,C] or [B,H,W], got shape {maps.shape}")
  return maps


def percentile_of_rows(values: Array, q: float) -> Array:
  """NumPy's `np.percentile(v, q)` (method "linear") of each row of values [B,N], float32 [B].

  The two order statistics come from one `lax.top_k` over the shorter end of each row (for
  q = 99, the largest 1% of values): on XLA:CPU 2x faster than NumPy's percentile of the same
  rows, and 25x faster than a full partition. A row holding NaN gives NaN, as in NumPy.
  """
  values = jnp.asarray(values, jnp.float32)
  n = values.shape[1]
  qf = np.float64(q) / 100.0
  if not 0.0 <= qf <= 1.0:
    raise ValueError(f"percentile must be in [0, 100], got {q}")
  virtual = float(n * qf + (1.0 + qf * (1.0 - 1.0 - 1.0)) - 1.0)  # NumPy's expression
  lo = int(np.floor(virtual))
  gamma = virtual - lo
  lo = min(max(lo, 0), n - 1)
  hi = min(lo + 1, n - 1)
  # The barriers keep XLA from rewriting a top_k of which only two columns are read into a
  # full sort (measured on the CPU: 16 ms instead of 0.5 ms for 32 rows of 4096).
  if n - lo <= hi + 1:
    largest = jax.lax.optimization_barrier(jax.lax.top_k(values, n - lo)[0])  # descending
    a, b = largest[:, n - 1 - lo], largest[:, n - 1 - hi]
  else:
    smallest = -jax.lax.optimization_barrier(jax.lax.top_k(-values, hi + 1)[0])  # ascending
    a, b = smallest[:, lo], smallest[:, hi]
  diff = b - a
  if gamma >= 0.5:
    out = b - diff * np.float32(1.0 - gamma)
  else:
    out = a + diff * np.float32(gamma)
  return jnp.where(jnp.isnan(values).any(axis=1), jnp.float32(jnp.nan), out)


def to_grayscale(maps: Array, percentile: float = 99, *, nan_to: float | None = None) -> Array:
  """PAIR's VisualizeImageGrayscale, batched: float32 [B,H,W] in [0,1].

  sum over channels of |map|, divided into [0,1] by (x - min) / (p-th percentile - min), clipped.

  Args:
    maps: [B,H,W,C] attributions, or [B,H,W] single-channel maps.
    percentile: the clipping percentile (PAIR: 99).
    nan_to: if given, replaces the NaNs of degenerate (constant) maps; None keeps PAIR's NaN.
  """
  image_2d = jnp.abs(_as_channels(maps)).sum(axis=-1)
  b = image_2d.shape[0]
  flat = image_2d.reshape(b, -1)
  vmax = percentile_of_rows(flat, percentile)[:, None, None]
  vmin = flat.min(axis=1)[:, None, None]
  out = jnp.clip((image_2d - vmin) / (vmax - vmin), 0.0, 1.0)
  return out if nan_to is None else jnp.where(jnp.isnan(out), jnp.float32(nan_to), out)


def to_diverging(maps: Array, percentile: float = 99, *, nan_to: float | None = None) -> Array:
  """PAIR's VisualizeImageDiverging, batched: float32 [B,H,W], 0.5 where the signed sum is 0.

  span = |p-th percentile of the signed channel sum|; (x + span) / (2 span), clipped to
  [-1, 1] exactly as PAIR does (values below -span come out negative).
  """
  image_2d = _as_channels(maps).sum(axis=-1)
  b = image_2d.shape[0]
  span = jnp.abs(percentile_of_rows(image_2d.reshape(b, -1), percentile))[:, None, None]
  vmin, vmax = -span, span
  out = jnp.clip((image_2d - vmin) / (vmax - vmin), -1.0, 1.0)
  return out if nan_to is None else jnp.where(jnp.isnan(out), jnp.float32(nan_to), out)


VISUALIZATIONS = ("grayscale", "diverging")


def visualize(maps, s):
  """The 2-D map of raw attributions under the settings `visualization` ("grayscale" or
  "diverging"), `grayscale_percentile` and `grayscale_nan_to`."""
  if s["visualization"] == "diverging":
    return to_diverging(maps, s["grayscale_percentile"], nan_to=s["grayscale_nan_to"])
  if s["visualization"] != "grayscale":
    raise ValueError(f"visualization must be one of {VISUALIZATIONS}, got {s['visualization']!r}")
  return to_grayscale(maps, s["grayscale_percentile"], nan_to=s["grayscale_nan_to"])
