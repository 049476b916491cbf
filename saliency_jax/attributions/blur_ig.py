"""Blur integrated gradients (Xu et al., 2020), as PAIR's `BlurIG.GetMask`, batched.

The path goes from the image blurred with sigma = max_sigma back to the image, sigmas
i * max_sigma / steps (or their square roots with sqrt=True), i = 0..steps. At step i the
gradient at blur(x, sigma_i) is multiplied by the finite-difference derivative of the blur,
(blur(x, sigma_i + grad_step) - blur(x, sigma_i)) / grad_step, and by the step's spacing
sigma_{i+1} - sigma_i; the sum is negated.

The blur is SciPy's `gaussian_filter(x, [s, s, 0], mode="constant")` (truncate 4, kernel
radius int(4 s + 0.5), zero padding) written as two [H,H] and [W,W] matrices per step, whose
kernels are computed in float64 at trace time; the blur difference is taken between the float64
kernels, so it is more accurate than differencing two float32 blurs.

PAIR defect, fixed here: PAIR's batched loop multiplies every path point of a batch by the
spacing of the batch's *last* step. With sqrt=False the spacing is constant and PAIR is right;
with sqrt=True it is right only with batch_size=1. This implementation always uses each step's
own spacing (tested against PAIR with sqrt=False at any batch size and with sqrt=True at
batch_size=1).
"""

from collections.abc import Callable
import math

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attributions import _engine

Array = jax.Array
_TRUNCATE = 4.0


def blur_sigmas(max_sigma: float, steps: int, sqrt: bool) -> list[float]:
  """PAIR's sigmas, steps + 1 values from 0 to max_sigma."""
  if sqrt:
    return [math.sqrt(float(i) * max_sigma / float(steps)) for i in range(steps + 1)]
  return [float(i) * max_sigma / float(steps) for i in range(steps + 1)]


def _kernel(sigma: float, radius_max: int) -> np.ndarray:
  """SciPy's normalized 1-D Gaussian kernel on offsets -radius_max..radius_max (float64)."""
  out = np.zeros(2 * radius_max + 1)
  if sigma <= 1e-15:  # SciPy skips the axis: identity (PAIR: sigma == 0 returns x)
    out[radius_max] = 1.0
    return out
  radius = int(_TRUNCATE * float(sigma) + 0.5)
  x = np.arange(-radius, radius + 1)
  phi = np.exp(-0.5 / (sigma * sigma) * x.astype(np.float64) ** 2)
  r = min(radius, radius_max)
  out[radius_max - r : radius_max + r + 1] = (phi / phi.sum())[radius - r : radius + r + 1]
  return out


def _band(kernels: Array, n: int, radius_max: int) -> Array:
  """Matrices [..., n, n] with M[i, j] = kernel[j - i] (zero beyond the kernel)."""
  d = np.arange(n)[None, :] - np.arange(n)[:, None]
  valid = np.abs(d) <= radius_max
  idx = np.clip(d + radius_max, 0, 2 * radius_max)
  return jnp.where(valid, kernels[..., idx], 0.0)


def blur_ig(
  logits_fn: Callable[[Array], Array],
  images: Array,
  targets: Array,
  *,
  max_sigma: float = 50.0,
  steps: int = 100,
  grad_step: float = 0.01,
  sqrt: bool = False,
  max_grads_in_flight: int | None = None,
) -> Array:
  """Blur-IG maps, float32 [B,H,W,C]; arguments as PAIR's `BlurIG.GetMask`."""
  images, targets = _engine.check_images(images, targets)
  b, h, w, _ = images.shape
  sigmas = blur_sigmas(max_sigma, steps, sqrt)
  spacing = np.diff(np.asarray(sigmas))
  # Only offsets inside the image matter: |j - i| < max(H, W).
  radius_max = max(h, w) - 1
  k0 = np.stack([_kernel(s, radius_max) for s in sigmas[:-1]])  # [steps, 2R+1]
  k1 = np.stack([_kernel(s + grad_step, radius_max) for s in sigmas[:-1]])
  dk = (k1 - k0) / grad_step  # float64
  k0, k1, dk = (jnp.asarray(k, jnp.float32) for k in (k0, k1, dk))
  spacing = jnp.asarray(spacing, jnp.float32)
  grad_fn = _engine.target_gradients(logits_fn)
  hp = jax.lax.Precision.HIGHEST

  def contribution(bi, si):
    x = images[bi]
    ah0, aw0 = _band(k0[si], h, radius_max), _band(k0[si], w, radius_max)
    aw1 = _band(k1[si], w, radius_max)
    dh, dw = _band(dk[si], h, radius_max), _band(dk[si], w, radius_max)
    blurred = jnp.einsum("nyh,nhwc,nxw->nyxc", ah0, x, aw0, precision=hp)
    # d blur / d sigma ~ (A1 X A1'^T - A0 X A0'^T) / step = dA X A1'^T + A0 X dA'^T.
    dblur = jnp.einsum("nyh,nhwc,nxw->nyxc", dh, x, aw1, precision=hp) + jnp.einsum(
      "nyh,nhwc,nxw->nyxc", ah0, x, dw, precision=hp
    )
    g = grad_fn(blurred, targets[bi])
    return spacing[si].reshape(-1, 1, 1, 1) * dblur * g

  total = _engine.chunked_sum(contribution, b, steps, images.shape[1:], max_grads_in_flight)
  return -total
