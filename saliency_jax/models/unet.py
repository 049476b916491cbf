"""A small U-Net (Ronneberger et al., 2015): the localization-network baseline of the study.

Input images [B, H, W, C] -> per-pixel foreground logits [B, H, W] (one class; apply a sigmoid
for probabilities). The encoder has `depth` levels of (conv-BN-act) x 2 followed by 2x2 max
pooling, a bottleneck, and a decoder of 2x2 transposed convolutions whose outputs are
concatenated with the matching encoder features. H and W must be divisible by 2**depth (checked).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = Any


class _DoubleConv(nn.Module):
  features: int
  activation: Callable[[Array], Array]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    for i in range(2):
      x = nn.Conv(
        self.features, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype, name=f"conv{i + 1}"
      )(x)
      x = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=self.dtype,
        name=f"bn{i + 1}",
      )(x)
      x = self.activation(x)
    return x


class UNet(nn.Module):
  """U-Net with `depth` down/up levels; widths base_width * 2**level.

  Attributes:
    depth: number of poolings (3 or 4 are sensible for 64-320 pixel inputs).
    base_width: channels of the first level.
    activation: used for every nonlinearity.
    dtype: computation dtype; the logits are returned in float32.
  """

  depth: int = 3
  base_width: int = 16
  activation: Callable[[Array], Array] = nn.relu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if x.ndim != 4:
      raise ValueError(f"UNet expects images [B, H, W, C]; got shape {x.shape}.")
    h, w = x.shape[1:3]
    factor = 2**self.depth
    if h % factor or w % factor:
      raise ValueError(
        f"UNet with depth {self.depth} needs H and W divisible by {factor}; got {h}x{w}."
      )
    x = x.astype(self.dtype)
    skips = []
    for level in range(self.depth):
      x = _DoubleConv(
        self.base_width * 2**level, self.activation, self.dtype, name=f"down{level + 1}"
      )(x, train)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = _DoubleConv(
      self.base_width * 2**self.depth, self.activation, self.dtype, name="bottleneck"
    )(x, train)
    for level in reversed(range(self.depth)):
      width = self.base_width * 2**level
      x = nn.ConvTranspose(
        width, (2, 2), strides=(2, 2), dtype=self.dtype, name=f"upsample{level + 1}"
      )(x)
      x = jnp.concatenate([skips[level], x], axis=-1)
      x = _DoubleConv(width, self.activation, self.dtype, name=f"up{level + 1}")(x, train)
    logits = nn.Conv(1, (1, 1), dtype=self.dtype, name="logits")(x)
    return logits[..., 0].astype(jnp.float32)
