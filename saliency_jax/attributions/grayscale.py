"""Maps to 2-D images in [0, 1]: PAIR's VisualizeImageGrayscale and VisualizeImageDiverging.

Bit-for-bit the NumPy arithmetic of PAIR (`saliency.core.visualization`, NumPy >= 1.22):
  * the percentile is NumPy's default "linear" method: virtual index q*(n-1) computed in float64,
    then NumPy's float32 lerp `a + (b-a)*g`, or `b - (b-a)*(1-g)` when g >= 0.5;
  * no guard against division by zero. A constant map (or one whose 99th percentile equals its
    minimum) gives 0/0 = NaN at those pixels (and x/0 = inf, clipped to 1, above them). This is
    what the study's pipeline produced for constant maps (and why its SSIM means drop NaNs);
    callers that prefer a number pass `nan_to` (e.g. 0.0).
The percentile is NumPy's own on the CPU backend and a partition elsewhere.
"""
from typing import Optional

import numpy as np
import jax
import jax.numpy as jnp

Array = jax.Array


def _as_channels(maps: Array) -> Array:
  maps = jnp.asarray(maps, jnp.float32)
  if maps.ndim == 3:          # [B,H,W]: a single-channel map (Grad-CAM, XRAI)
    return maps[..., None]
  if maps.ndim != 4:
    raise ValueError(f"maps must be [B,H,W,C] or [B,H,W], got shape {maps.shape}")
  return maps


def _numpy_percentiles(values: np.ndarray, q: float) -> np.ndarray:
  flat = np.asarray(values).reshape(-1, values.shape[-1])
  # One call over all rows: the same per-row arithmetic as PAIR's np.percentile(image, q).
  out = np.percentile(flat, q, axis=1).astype(np.float32)
  return out.reshape(values.shape[:-1])


def percentile_of_rows(values: Array, q: float, *, use_numpy: Optional[bool] = None) -> Array:
  """NumPy's `np.percentile(v, q)` (method "linear") of each row of values [B,N], float32 [B].

  On the CPU backend this calls NumPy itself (a `pure_callback`: XLA:CPU sorts and partitions
  slowly); elsewhere it is XLA's partition with NumPy's interpolation arithmetic.
  """
  values = jnp.asarray(values, jnp.float32)
  if use_numpy is None:
    use_numpy = jax.default_backend() == "cpu"
  if use_numpy:
    return jax.pure_callback(
        lambda v: _numpy_percentiles(v, q),
        jax.ShapeDtypeStruct(values.shape[:-1], jnp.float32), values,
        vmap_method="expand_dims")
  n = values.shape[1]
  qf = np.float64(q) / 100.0
  if not 0.0 <= qf <= 1.0:
    raise ValueError(f"percentile must be in [0, 100], got {q}")
  virtual = float(n * qf + (1.0 + qf * (1.0 - 1.0 - 1.0)) - 1.0)   # NumPy's expression
  lo = int(np.floor(virtual))
  gamma = virtual - lo
  lo = min(max(lo, 0), n - 1)
  hi = min(lo + 1, n - 1)
  part = jnp.partition(values, lo, axis=1)     # part[:, lo] is the lo-th smallest
  a = part[:, lo]
  b = part[:, lo + 1:].min(axis=1) if hi > lo else a
  diff = b - a
  if gamma >= 0.5:
    return b - diff * np.float32(1.0 - gamma)
  return a + diff * np.float32(gamma)


def to_grayscale(maps: Array, percentile: float = 99, *,
                 nan_to: Optional[float] = None) -> Array:
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


def to_diverging(maps: Array, percentile: float = 99, *,
                 nan_to: Optional[float] = None) -> Array:
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
