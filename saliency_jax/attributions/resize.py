"""Bilinear resizing as two small interpolation matrices (out = Ry @ map @ Rx^T).

Two conventions matter here (see `gradcam`):
  * "tf1_bilinear": TensorFlow 1 `tf.image.resize_bilinear` with its defaults
    (align_corners=False, half_pixel_centers=False): source = dst * in/out, the upper neighbour
    clamped at the last row. This is what the study's code ran (PAIR saliency for TF1, Grad-CAM
    with should_resize=True).
  * "skimage_bilinear": scikit-image `resize(order=1)` with its defaults, as PAIR
    `saliency.core` 0.2.x does: half-pixel centres, source = (dst + 0.5) * in/out - 0.5, and
    mode="reflect" (NumPy's "mirror": x[-1] = x[1]). Upsampling only (scikit-image
    anti-aliases when downsampling, which this does not reproduce).
Matrices are built in NumPy at trace time (shapes are static) and applied as float32 matmuls.
"""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

METHODS = ("tf1_bilinear", "skimage_bilinear")


def _tf1_matrix(n_in: int, n_out: int) -> np.ndarray:
  scale = np.float32(n_in) / np.float32(n_out)
  src = np.arange(n_out, dtype=np.float32) * scale
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(np.ceil(src).astype(np.int64), n_in - 1)
  t = (src - lo).astype(np.float64)
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), np.clip(lo, 0, n_in - 1)), 1.0 - t)
  np.add.at(m, (np.arange(n_out), hi), t)
  return m


def _mirror(i: np.ndarray, n: int) -> np.ndarray:
  if n == 1:
    return np.zeros_like(i)
  period = 2 * (n - 1)
  i = np.abs(i) % period
  return np.where(i > n - 1, period - i, i)


def _skimage_matrix(n_in: int, n_out: int) -> np.ndarray:
  if n_out < n_in:
    raise ValueError(
      f"skimage_bilinear reproduces upsampling only (got {n_in} -> {n_out}); scikit-image "
      "anti-aliases when downsampling"
    )
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  lo = np.floor(src).astype(np.int64)
  t = src - lo
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), _mirror(lo, n_in)), 1.0 - t)
  np.add.at(m, (np.arange(n_out), _mirror(lo + 1, n_in)), t)
  return m


def resize_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
  """The [n_out, n_in] interpolation matrix of one axis."""
  if method == "tf1_bilinear":
    return _tf1_matrix(n_in, n_out)
  if method == "skimage_bilinear":
    return _skimage_matrix(n_in, n_out)
  raise ValueError(f"unknown resize method {method!r}; expected one of {METHODS}")


def resize_bilinear(maps: Array, size: tuple[int, int], method: str) -> Array:
  """Resizes maps [B,h,w] to [B,*size] with `method` (see module docstring)."""
  _, h, w = maps.shape
  ry = jnp.asarray(resize_matrix(h, size[0], method), jnp.float32)
  rx = jnp.asarray(resize_matrix(w, size[1], method), jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  return jnp.einsum("yh,bhw,xw->byx", ry, maps.astype(jnp.float32), rx, precision=hp)
