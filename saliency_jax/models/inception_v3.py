"""InceptionV3 as in `keras.applications.InceptionV3`, ported layer for layer to Flax Linen.

The network is Keras' `include_top=False` model followed by global average pooling and a
`Dense(num_classes)` layer named "logits" (the study's classifier). Every convolution is
Keras' `conv2d_bn`: a bias-free convolution, a batch norm without scale (epsilon 1e-3, momentum
0.99) and a ReLU that goes through the `activation` field, so the guided-ReLU clone of the
model shares its parameters.

Top-level parameter collections are the cascading-randomization blocks, from the top down:
"logits", "mixed10", ..., "mixed0" (Keras' concatenation layers of the same names) and "stem"
(the five convolutions and two max-pools before mixed0). `features` returns the output of
`mixed10`, which is what Keras returns with `include_top=False, pooling=None`.

Inside a block the convolutions are named after their branch (`branch1x1`, `branch5x5_1`, ...);
`keras_conv_paths()` lists them in the order Keras creates its `conv2d_N` layers, which is what
`keras_import` uses to map Keras weights.
"""

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

MIN_SIZE = 75  # Keras' minimum input size: smaller inputs vanish in the valid convolutions.


def _avg_pool_3x3_same(x: Array) -> Array:
  """Keras `AveragePooling2D((3, 3), strides=(1, 1), padding="same")`: borders average only
  the pixels inside the image (the padding is not counted)."""
  y = nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=False)
  return y.astype(x.dtype)


def _max_pool_3x3_s2(x: Array) -> Array:
  """Keras `MaxPooling2D((3, 3), strides=(2, 2))` (valid padding)."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class ConvBN(nn.Module):
  """Keras `conv2d_bn`: Conv2D(use_bias=False) -> BatchNormalization(scale=False) -> ReLU."""

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: str = "SAME"
  activation: Callable[[Array], Array] = nn.relu
  dtype: Any = jnp.float32

  def setup(self):
    self.conv = nn.Conv(
      self.features,
      tuple(self.kernel_size),
      strides=tuple(self.strides),
      padding=self.padding,
      use_bias=False,
      dtype=self.dtype,
    )
    # Keras BatchNormalization defaults: momentum 0.99, epsilon 1e-3; batch variance in two
    # passes as Keras (jnp.var), not E[x^2] - E[x]^2.
    self.bn = nn.BatchNorm(
      use_scale=False, momentum=0.99, epsilon=1e-3, use_fast_variance=False, dtype=self.dtype
    )

  def __call__(self, x: Array, train: bool = False) -> Array:
    return self.activation(self.bn(self.conv(x), use_running_average=not train))


class _Block(nn.Module):
  """Shared fields of the Inception blocks; `conv_names` is their Keras creation order."""

  activation: Callable[[Array], Array] = nn.relu
  dtype: Any = jnp.float32
  conv_names: ClassVar[tuple[str, ...]] = ()

  def _conv(self, features, kernel_size, strides=(1, 1), padding="SAME"):
    return ConvBN(
      features, kernel_size, strides, padding, activation=self.activation, dtype=self.dtype
    )


class Stem(_Block):
  """Everything before mixed0: five conv2d_bn and two 3x3/2 max-pools (299 -> 35)."""

  conv_names: ClassVar[tuple[str, ...]] = (
    "conv2d_1a_3x3",
    "conv2d_2a_3x3",
    "conv2d_2b_3x3",
    "conv2d_3b_1x1",
    "conv2d_4a_3x3",
  )

  def setup(self):
    self.conv2d_1a_3x3 = self._conv(32, (3, 3), (2, 2), "VALID")
    self.conv2d_2a_3x3 = self._conv(32, (3, 3), padding="VALID")
    self.conv2d_2b_3x3 = self._conv(64, (3, 3))
    self.conv2d_3b_1x1 = self._conv(80, (1, 1), padding="VALID")
    self.conv2d_4a_3x3 = self._conv(192, (3, 3), padding="VALID")

  def __call__(self, x: Array, train: bool = False) -> Array:
    x = self.conv2d_1a_3x3(x, train)
    x = self.conv2d_2a_3x3(x, train)
    x = self.conv2d_2b_3x3(x, train)
    x = _max_pool_3x3_s2(x)
    x = self.conv2d_3b_1x1(x, train)
    x = self.conv2d_4a_3x3(x, train)
    return _max_pool_3x3_s2(x)


class InceptionA(_Block):
  """mixed0-2 (35x35): 1x1, 5x5, double 3x3 and pooled branches."""

  pool_features: int = 32
  conv_names: ClassVar[tuple[str, ...]] = (
    "branch1x1",
    "branch5x5_1",
    "branch5x5_2",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3",
    "branch_pool",
  )

  def setup(self):
    self.branch1x1 = self._conv(64, (1, 1))
    self.branch5x5_1 = self._conv(48, (1, 1))
    self.branch5x5_2 = self._conv(64, (5, 5))
    self.branch3x3dbl_1 = self._conv(64, (1, 1))
    self.branch3x3dbl_2 = self._conv(96, (3, 3))
    self.branch3x3dbl_3 = self._conv(96, (3, 3))
    self.branch_pool = self._conv(self.pool_features, (1, 1))

  def __call__(self, x: Array, train: bool = False) -> Array:
    b1 = self.branch1x1(x, train)
    b5 = self.branch5x5_2(self.branch5x5_1(x, train), train)
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x, train), train), train)
    bp = self.branch_pool(_avg_pool_3x3_same(x), train)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """mixed3 (35 -> 17): strided 3x3, strided double 3x3 and max-pool branches."""

  conv_names: ClassVar[tuple[str, ...]] = (
    "branch3x3",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3",
  )

  def setup(self):
    self.branch3x3 = self._conv(384, (3, 3), (2, 2), "VALID")
    self.branch3x3dbl_1 = self._conv(64, (1, 1))
    self.branch3x3dbl_2 = self._conv(96, (3, 3))
    self.branch3x3dbl_3 = self._conv(96, (3, 3), (2, 2), "VALID")

  def __call__(self, x: Array, train: bool = False) -> Array:
    b3 = self.branch3x3(x, train)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x, train), train), train)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Block):
  """mixed4-7 (17x17): factorized 7x7 branches with `channels_7x7` inner channels."""

  channels_7x7: int = 128
  conv_names: ClassVar[tuple[str, ...]] = (
    "branch1x1",
    "branch7x7_1",
    "branch7x7_2",
    "branch7x7_3",
    "branch7x7dbl_1",
    "branch7x7dbl_2",
    "branch7x7dbl_3",
    "branch7x7dbl_4",
    "branch7x7dbl_5",
    "branch_pool",
  )

  def setup(self):
    c = self.channels_7x7
    self.branch1x1 = self._conv(192, (1, 1))
    self.branch7x7_1 = self._conv(c, (1, 1))
    self.branch7x7_2 = self._conv(c, (1, 7))
    self.branch7x7_3 = self._conv(192, (7, 1))
    self.branch7x7dbl_1 = self._conv(c, (1, 1))
    self.branch7x7dbl_2 = self._conv(c, (7, 1))
    self.branch7x7dbl_3 = self._conv(c, (1, 7))
    self.branch7x7dbl_4 = self._conv(c, (7, 1))
    self.branch7x7dbl_5 = self._conv(192, (1, 7))
    self.branch_pool = self._conv(192, (1, 1))

  def __call__(self, x: Array, train: bool = False) -> Array:
    b1 = self.branch1x1(x, train)
    b7 = x
    for layer in (self.branch7x7_1, self.branch7x7_2, self.branch7x7_3):
      b7 = layer(b7, train)
    bd = x
    for layer in (
      self.branch7x7dbl_1,
      self.branch7x7dbl_2,
      self.branch7x7dbl_3,
      self.branch7x7dbl_4,
      self.branch7x7dbl_5,
    ):
      bd = layer(bd, train)
    bp = self.branch_pool(_avg_pool_3x3_same(x), train)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """mixed8 (17 -> 8): strided 3x3, strided 7x7x3 and max-pool branches."""

  conv_names: ClassVar[tuple[str, ...]] = (
    "branch3x3_1",
    "branch3x3_2",
    "branch7x7x3_1",
    "branch7x7x3_2",
    "branch7x7x3_3",
    "branch7x7x3_4",
  )

  def setup(self):
    self.branch3x3_1 = self._conv(192, (1, 1))
    self.branch3x3_2 = self._conv(320, (3, 3), (2, 2), "VALID")
    self.branch7x7x3_1 = self._conv(192, (1, 1))
    self.branch7x7x3_2 = self._conv(192, (1, 7))
    self.branch7x7x3_3 = self._conv(192, (7, 1))
    self.branch7x7x3_4 = self._conv(192, (3, 3), (2, 2), "VALID")

  def __call__(self, x: Array, train: bool = False) -> Array:
    b3 = self.branch3x3_2(self.branch3x3_1(x, train), train)
    b7 = x
    for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = layer(b7, train)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Block):
  """mixed9-10 (8x8): expanded 1x3/3x1 branches."""

  conv_names: ClassVar[tuple[str, ...]] = (
    "branch1x1",
    "branch3x3_1",
    "branch3x3_2a",
    "branch3x3_2b",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3a",
    "branch3x3dbl_3b",
    "branch_pool",
  )

  def setup(self):
    self.branch1x1 = self._conv(320, (1, 1))
    self.branch3x3_1 = self._conv(384, (1, 1))
    self.branch3x3_2a = self._conv(384, (1, 3))
    self.branch3x3_2b = self._conv(384, (3, 1))
    self.branch3x3dbl_1 = self._conv(448, (1, 1))
    self.branch3x3dbl_2 = self._conv(384, (3, 3))
    self.branch3x3dbl_3a = self._conv(384, (1, 3))
    self.branch3x3dbl_3b = self._conv(384, (3, 1))
    self.branch_pool = self._conv(192, (1, 1))

  def __call__(self, x: Array, train: bool = False) -> Array:
    b1 = self.branch1x1(x, train)
    b3 = self.branch3x3_1(x, train)
    b3 = jnp.concatenate([self.branch3x3_2a(b3, train), self.branch3x3_2b(b3, train)], -1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x, train), train)
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd, train), self.branch3x3dbl_3b(bd, train)], -1)
    bp = self.branch_pool(_avg_pool_3x3_same(x), train)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# Keras' InceptionV3 body, bottom-up: (block name, block class, block fields).
_BLOCKS = (
  ("stem", Stem, {}),
  ("mixed0", InceptionA, {"pool_features": 32}),
  ("mixed1", InceptionA, {"pool_features": 64}),
  ("mixed2", InceptionA, {"pool_features": 64}),
  ("mixed3", InceptionB, {}),
  ("mixed4", InceptionC, {"channels_7x7": 128}),
  ("mixed5", InceptionC, {"channels_7x7": 160}),
  ("mixed6", InceptionC, {"channels_7x7": 160}),
  ("mixed7", InceptionC, {"channels_7x7": 192}),
  ("mixed8", InceptionD, {}),
  ("mixed9", InceptionE, {}),
  ("mixed10", InceptionE, {}),
)
FEATURES = 2048  # channels of mixed10


def keras_conv_paths() -> tuple[tuple[str, str], ...]:
  """(block, conv_bn) paths of the 94 conv2d_bn units, in Keras' layer-creation order."""
  return tuple((block, conv) for block, cls, _ in _BLOCKS for conv in cls.conv_names)


class InceptionV3(nn.Module):
  """Keras InceptionV3 (include_top=False) + global average pooling + Dense "logits".

  Attributes:
    num_classes: outputs of the logits layer.
    activation: the nonlinearity of every ReLU (nn.relu, or guided_relu for guided backprop).
    dtype: compute dtype (float32, or bfloat16 for mixed precision); parameters stay float32
      and the logits are returned as float32.
  """

  num_classes: int = 2
  activation: Callable[[Array], Array] = nn.relu
  dtype: Any = jnp.float32

  block_names: ClassVar[tuple[str, ...]] = ("logits",) + tuple(
    name for name, _, _ in reversed(_BLOCKS)
  )

  def setup(self):
    for name, cls, fields in _BLOCKS:
      # Named attributes, so the top-level collections are exactly the block names.
      setattr(self, name, cls(activation=self.activation, dtype=self.dtype, **fields))
    self.logits = nn.Dense(self.num_classes, dtype=self.dtype)

  def features(self, x: Array, train: bool = False) -> Array:
    """Images [B,H,W,C] (H, W >= 75) -> mixed10 output [B,h,w,2048]."""
    if x.ndim != 4 or min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(
        f"InceptionV3 takes images [B,H,W,C] with H, W >= {MIN_SIZE}; got shape {x.shape}."
      )
    for name, _, _ in _BLOCKS:
      x = getattr(self, name)(x, train)
    return x

  def head(self, feats: Array) -> Array:
    """mixed10 output -> logits [B, num_classes] (global average pooling + Dense)."""
    pooled = jnp.mean(feats.astype(jnp.float32), axis=(1, 2))
    return self.logits(pooled).astype(jnp.float32)

  def __call__(self, x: Array, train: bool = False) -> Array:
    return self.head(self.features(x, train))
