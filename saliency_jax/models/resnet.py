"""ResNet-50 as in `keras.applications.ResNet50` (include_top=False), ported to Flax Linen.

Keras' layers, one for one: a 7x7/2 convolution with bias after 3 pixels of zero padding, batch
norm (epsilon 1.001e-5, momentum 0.99), ReLU, 1 pixel of zero padding and a 3x3/2 max-pool;
then stages conv2-conv5 of bottleneck blocks (1x1 -> 3x3 -> 1x1 with 4x the width, every
convolution with bias; the first block of a stage has a 1x1 projection shortcut "_0_" and
strides 2 in its first 1x1 convolution, except conv2).

Parameter paths are Keras' layer names split at the block: Keras' "conv3_block2_1_conv" is
["conv3_block2"]["1_conv"], "conv1_conv" is ["conv1_conv"], so `keras_layer_name` maps them
back (the Keras weight import uses it). `widths`, `blocks` and `stem_width` give narrower
or shallower variants (for small CPU runs); the defaults are ResNet-50.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

STAGES = ("conv2", "conv3", "conv4", "conv5")
_EPSILON = 1.001e-5


def keras_layer_name(path: Sequence[str]) -> str:
  """Our parameter path (block, layer) -> Keras' layer name."""
  return "_".join(path)


def _conv_bn(
  x: Array, features: int, kernel: int, stride: int, train: bool, dtype: Any, name: str
) -> Array:
  """Keras Conv2D (with bias) + BatchNormalization, as submodules "<name>_conv", "<name>_bn"
  of the calling module."""
  padding = "SAME" if kernel > 1 else "VALID"  # Keras' 1x1 convolutions are "valid"
  x = nn.Conv(
    features, (kernel, kernel), (stride, stride), padding=padding, dtype=dtype, name=f"{name}_conv"
  )(x)
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.99, epsilon=_EPSILON, dtype=dtype, name=f"{name}_bn"
  )(x)


class _Bottleneck(nn.Module):
  filters: int
  stride: int
  projection: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    f, dt = self.filters, self.dtype
    shortcut = x
    if self.projection:
      shortcut = _conv_bn(x, 4 * f, 1, self.stride, train, dt, "0")
    y = nn.relu(_conv_bn(x, f, 1, self.stride, train, dt, "1"))
    y = nn.relu(_conv_bn(y, f, 3, 1, train, dt, "2"))
    y = _conv_bn(y, 4 * f, 1, 1, train, dt, "3")
    return nn.relu(shortcut + y)


class ResNet(nn.Module):
  """Keras ResNet50 without top; returns the outputs of conv2-conv5 (strides 4, 8, 16, 32).

  Attributes:
    stem_width: channels of conv1 (64).
    widths: bottleneck widths of conv2-conv5 (outputs are 4x these).
    blocks: blocks per stage ((3, 4, 6, 3) for ResNet-50).
    dtype: compute dtype; parameters stay float32.
  """

  stem_width: int = 64
  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (3, 4, 6, 3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, ...]:
    if x.ndim != 4:
      raise ValueError(f"ResNet expects images [B, H, W, C]; got shape {x.shape}.")
    if len(self.widths) != len(STAGES) or len(self.blocks) != len(STAGES):
      raise ValueError(
        f"widths and blocks need one entry per stage {STAGES}; got {self.widths}, {self.blocks}."
      )
    x = jnp.pad(x.astype(self.dtype), ((0, 0), (3, 3), (3, 3), (0, 0)))
    x = nn.Conv(
      self.stem_width, (7, 7), (2, 2), padding="VALID", dtype=self.dtype, name="conv1_conv"
    )(x)
    x = nn.relu(
      nn.BatchNorm(
        use_running_average=not train,
        momentum=0.99,
        epsilon=_EPSILON,
        dtype=self.dtype,
        name="conv1_bn",
      )(x)
    )
    # Zero padding before the max-pool, as Keras (equal to -inf padding after a ReLU).
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    outputs = []
    for stage, (width, count) in enumerate(zip(self.widths, self.blocks)):
      for block in range(count):
        x = _Bottleneck(
          width,
          stride=(1 if stage == 0 or block else 2),
          projection=block == 0,
          dtype=self.dtype,
          name=f"{STAGES[stage]}_block{block + 1}",
        )(x, train)
      outputs.append(x)
    return tuple(outputs)
