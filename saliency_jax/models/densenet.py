"""DenseNet121 as in `keras.applications.DenseNet121`, ported layer for layer to Flax Linen.

The network is Keras' `include_top=False` model followed by global average pooling and a
`Dense(num_classes)` layer named "logits". Batch norms use Keras' settings here (epsilon
1.001e-5, momentum 0.99, with scale); convolutions have no bias; every ReLU goes through the
`activation` field, so the guided-ReLU clone shares the parameters.

Blocks (top-level parameter collections) follow Keras' layer-name prefixes, top-down:
  "logits"  the Dense head;
  "bn"      the final BatchNormalization (Keras layer "bn"; its ReLU follows it), kept as its own
            block because Keras makes it a separate stage after conv5;
  "conv5", "conv4", "conv3", "conv2"   dense blocks (16, 24, 12, 6 conv blocks, named
            "block1", "block2", ... as Keras' "conv2_block1_..." layers);
  "pool4", "pool3", "pool2"           transition blocks (BN, ReLU, 1x1 conv, 2x2 average pool);
  "stem"    Keras "conv1" (zero-pad 3, 7x7/2 conv, BN, ReLU) and "pool1" (zero-pad 1, 3x3/2
            max-pool).
`features` returns the output of the final BN + ReLU, which is what Keras returns with
`include_top=False, pooling=None`.

Keras layer names map to parameter paths by `keras_layer_name(path)`:
  ("stem", "conv") <-> "conv1_conv", ("conv2", "block1", "bn0") <-> "conv2_block1_0_bn",
  ("pool2", "conv") <-> "pool2_conv", ("bn",) <-> "bn".
"""

from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

MIN_SIZE = 32  # Keras' minimum input size for DenseNet.
EPSILON = 1.001e-5
GROWTH_RATE = 32
BLOCKS = (6, 12, 24, 16)  # conv blocks of conv2..conv5 in DenseNet121
FEATURES = 1024  # channels of the final BN


def _batch_norm(dtype: Any) -> nn.BatchNorm:
  # Keras' momentum; batch variance in two passes as Keras (jnp.var), not E[x^2] - E[x]^2.
  return nn.BatchNorm(momentum=0.99, epsilon=EPSILON, use_fast_variance=False, dtype=dtype)


class ConvBlock(nn.Module):
  """Keras `conv_block`: BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k), concatenated to x."""

  growth_rate: int = GROWTH_RATE
  activation: Callable[[Array], Array] = nn.relu
  dtype: Any = jnp.float32

  def setup(self):
    self.bn0 = _batch_norm(self.dtype)
    self.conv1 = nn.Conv(4 * self.growth_rate, (1, 1), use_bias=False, dtype=self.dtype)
    self.bn1 = _batch_norm(self.dtype)
    self.conv2 = nn.Conv(self.growth_rate, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)

  def __call__(self, x: Array, train: bool = False) -> Array:
    y = self.conv1(self.activation(self.bn0(x, use_running_average=not train)))
    y = self.conv2(self.activation(self.bn1(y, use_running_average=not train)))
    return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nn.Module):
  """Keras `dense_block`: `num_layers` ConvBlocks named block1, block2, ..."""

  num_layers: int
  activation: Callable[[Array], Array] = nn.relu
  dtype: Any = jnp.float32

  def setup(self):
    for i in range(self.num_layers):
      setattr(self, f"block{i + 1}", ConvBlock(activation=self.activation, dtype=self.dtype))

  def __call__(self, x: Array, train: bool = False) -> Array:
    for i in range(self.num_layers):
      x = getattr(self, f"block{i + 1}")(x, train)
    return x


class Transition(nn.Module):
  """Keras `transition_block`: BN-ReLU-1x1 conv (`features` channels) - 2x2/2 average pool."""

  features: int
  activation: Callable[[Array], Array] = nn.relu
  dtype: Any = jnp.float32

  def setup(self):
    self.bn = _batch_norm(self.dtype)
    self.conv = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype)

  def __call__(self, x: Array, train: bool = False) -> Array:
    x = self.conv(self.activation(self.bn(x, use_running_average=not train)))
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Stem(nn.Module):
  """Keras conv1 + pool1: ZeroPadding(3), 7x7/2 conv, BN, ReLU, ZeroPadding(1), 3x3/2 max-pool."""

  activation: Callable[[Array], Array] = nn.relu
  dtype: Any = jnp.float32

  def setup(self):
    self.conv = nn.Conv(
      64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype
    )
    self.bn = _batch_norm(self.dtype)

  def __call__(self, x: Array, train: bool = False) -> Array:
    x = self.activation(self.bn(self.conv(x), use_running_average=not train))
    # Keras pads with zeros (not -inf) before the max-pool; same result after a ReLU, but kept
    # literal so that any `activation` behaves as in Keras.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def _transition_features() -> tuple[int, ...]:
  """Output channels of pool2..pool4: half the channels of the dense block below."""
  channels, out = 64, []
  for num_layers in BLOCKS[:-1]:
    channels = (channels + num_layers * GROWTH_RATE) // 2
    out.append(channels)
  return tuple(out)


def keras_layer_name(path: tuple[str, ...]) -> str:
  """The Keras layer name of the conv/BN at parameter path `path` (see the module docstring)."""
  if path[0] == "stem":
    return f"conv1_{path[1]}"
  if path[0].startswith("conv"):  # ("conv2", "block1", "bn0") -> conv2_block1_0_bn
    kind, index = path[2][:-1], path[2][-1]
    return f"{path[0]}_{path[1]}_{index}_{kind}"
  return "_".join(path)  # ("pool2", "bn") -> pool2_bn; ("bn",) -> bn


class DenseNet121(nn.Module):
  """Keras DenseNet121 (include_top=False) + global average pooling + Dense "logits".

  Attributes:
    num_classes: outputs of the logits layer.
    activation: the nonlinearity of every ReLU (nn.relu, or guided_relu for guided backprop).
    dtype: compute dtype (float32, or bfloat16 for mixed precision); parameters stay float32
      and the logits are returned as float32.
  """

  num_classes: int = 2
  activation: Callable[[Array], Array] = nn.relu
  dtype: Any = jnp.float32

  block_names: ClassVar[tuple[str, ...]] = (
    "logits",
    "bn",
    "conv5",
    "pool4",
    "conv4",
    "pool3",
    "conv3",
    "pool2",
    "conv2",
    "stem",
  )

  def setup(self):
    kw = {"activation": self.activation, "dtype": self.dtype}
    self.stem = Stem(**kw)
    pool_features = _transition_features()
    for stage, num_layers in enumerate(BLOCKS):
      setattr(self, f"conv{stage + 2}", DenseBlock(num_layers, **kw))
      if stage < len(pool_features):
        setattr(self, f"pool{stage + 2}", Transition(pool_features[stage], **kw))
    self.bn = _batch_norm(self.dtype)
    self.logits = nn.Dense(self.num_classes, dtype=self.dtype)

  def features(self, x: Array, train: bool = False) -> Array:
    """Images [B,H,W,C] (H, W >= 32) -> output of the final BN + ReLU [B,h,w,1024]."""
    if x.ndim != 4 or min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(
        f"DenseNet121 takes images [B,H,W,C] with H, W >= {MIN_SIZE}; got shape {x.shape}."
      )
    x = self.stem(x, train)
    for stage in range(len(BLOCKS)):
      x = getattr(self, f"conv{stage + 2}")(x, train)
      if stage < len(BLOCKS) - 1:
        x = getattr(self, f"pool{stage + 2}")(x, train)
    return self.activation(self.bn(x, use_running_average=not train))

  def head(self, feats: Array) -> Array:
    """Final features -> logits [B, num_classes] (global average pooling + Dense)."""
    pooled = jnp.mean(feats.astype(jnp.float32), axis=(1, 2))
    return self.logits(pooled).astype(jnp.float32)

  def __call__(self, x: Array, train: bool = False) -> Array:
    return self.head(self.features(x, train))
