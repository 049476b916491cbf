"""Two small CNN classifiers of different design for the synthetic study.

Architecture A (`SmallVGG`, registry name "small_vgg") is a plain VGG-like stack; architecture B
(`SmallDenseNet`, "small_densenet") concatenates features in small dense blocks. They play the
roles of InceptionV3 and DenseNet121 in the paper: two unrelated designs, so that
reproducibility (A vs B) compares architectures and not seeds.

Both follow the model contract of `saliency_jax.models.functions`:
  * every ReLU is `self.activation` (passed down to the sub-blocks), so
    `module.clone(activation=guided_relu)` is the guided-backprop model with the same variables;
  * `features(x, train=False)` is the output of the last convolutional block (the Grad-CAM
    layer) and `head(feats)` is global average pooling + Dense(num_classes) named "logits";
  * the top-level parameter (and batch_stats) collections are exactly `block_names`, ordered
    from the logits layer down to the stem.
Modules use `setup()` rather than `nn.compact` so that `features` and `head` can be called
alone through `module.apply(variables, x, method="features")`.

Batch norm keeps running averages in the "batch_stats" collection and uses them unless
`train=True`. `dtype` is the computation dtype (e.g. bfloat16); parameters stay float32 and the
logits are returned in float32.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = Any
Dtype = Any

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _batch_norm(train: bool, dtype: Dtype, name: str | None = None) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=_BN_MOMENTUM,
    epsilon=_BN_EPSILON,
    dtype=dtype,
    name=name,
  )


class ConvBNAct(nn.Module):
  """Conv -> BatchNorm -> activation (the unit of the VGG stack and of both stems)."""

  features: int
  activation: Callable[[Array], Array]
  kernel_size: int = 3
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = nn.Conv(
      self.features,
      (self.kernel_size, self.kernel_size),
      strides=(self.strides, self.strides),
      padding="SAME",
      use_bias=False,
      dtype=self.dtype,
      name="conv",
    )(x)
    x = _batch_norm(train, self.dtype, name="bn")(x)
    return self.activation(x)


class VGGBlock(nn.Module):
  """(Conv-BN-act) x num_convs, then 2x2 max pooling when `pool`."""

  features: int
  activation: Callable[[Array], Array]
  num_convs: int = 2
  pool: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for i in range(self.num_convs):
      x = ConvBNAct(self.features, self.activation, dtype=self.dtype, name=f"conv{i + 1}")(x, train)
    if self.pool:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x


class _ClassifierHead(nn.Module):
  """Global average pooling, then Dense(num_classes); the "logits" block of both models."""

  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: Array) -> Array:
    pooled = jnp.mean(feats, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="dense")(pooled)
    return logits.astype(jnp.float32)


class _StemBlocksHead:
  """The model contract of a net made of `stem`, `blocks` and a `logits` head (set up by the
  subclass): the Grad-CAM layer is the last block's output."""

  def features(self, x: Array, train: bool = False) -> Array:
    x = self.stem(x.astype(self.dtype), train)
    for block in self.blocks:
      x = block(x, train)
    return x

  def head(self, feats: Array) -> Array:
    return self.logits(feats)

  def __call__(self, x: Array, train: bool = False) -> Array:
    return self.head(self.features(x, train))


class SmallVGG(_StemBlocksHead, nn.Module):
  """Architecture A: a VGG-like CNN.

  stem: 3x3 conv with stride 2 (halves the resolution cheaply), BN, act;
  block1..blockN: (conv-BN-act) x 2, then 2x2 max pooling except after the last block, so the
  Grad-CAM layer (the last block's output) is at 1/2**N of the input resolution
  (8x8 for 64x64 inputs with the default three blocks).
  H and W must be divisible by 2**N; other sizes are floored by the pooling.
  """

  num_classes: int = 2
  activation: Callable[[Array], Array] = nn.relu
  stem_width: int = 16
  widths: Sequence[int] = (16, 32, 64)
  dtype: Dtype = jnp.float32

  @property
  def block_names(self) -> tuple[str, ...]:
    return ("logits",) + tuple(f"block{i}" for i in range(len(self.widths), 0, -1)) + ("stem",)

  def setup(self):
    self.stem = ConvBNAct(self.stem_width, self.activation, strides=2, dtype=self.dtype)
    n = len(self.widths)
    blocks = []
    for i, width in enumerate(self.widths):
      block = VGGBlock(
        width, self.activation, pool=i < n - 1, dtype=self.dtype, name=f"block{i + 1}"
      )
      blocks.append(block)
    self.blocks = blocks
    self.logits = _ClassifierHead(self.num_classes, dtype=self.dtype)


class DenseLayer(nn.Module):
  """BN -> act -> 3x3 conv producing `growth_rate` new channels, concatenated to the input."""

  growth_rate: int
  activation: Callable[[Array], Array]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    y = _batch_norm(train, self.dtype, name="bn")(x)
    y = self.activation(y)
    y = nn.Conv(
      self.growth_rate, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype, name="conv"
    )(y)
    return jnp.concatenate([x, y], axis=-1)


class DenseStage(nn.Module):
  """A dense block followed by its exit.

  Every stage except the last exits through a transition (BN-act-1x1 conv halving the
  channels, 2x2 average pooling); the last exits through BN-act, as DenseNet's final norm,
  so its output is the Grad-CAM layer.
  """

  num_layers: int
  growth_rate: int
  activation: Callable[[Array], Array]
  last: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for i in range(self.num_layers):
      x = DenseLayer(self.growth_rate, self.activation, dtype=self.dtype, name=f"layer{i + 1}")(
        x, train
      )
    x = _batch_norm(train, self.dtype, name="bn")(x)
    x = self.activation(x)
    if not self.last:
      x = nn.Conv(x.shape[-1] // 2, (1, 1), use_bias=False, dtype=self.dtype, name="transition")(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return x


class DenseStem(nn.Module):
  """3x3 conv with stride 2, BN, act, 2x2 max pooling: 1/4 of the input resolution."""

  features: int
  activation: Callable[[Array], Array]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = ConvBNAct(self.features, self.activation, strides=2, dtype=self.dtype, name="conv")(
      x, train
    )
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class SmallDenseNet(_StemBlocksHead, nn.Module):
  """Architecture B: a small DenseNet.

  stem: 3x3 conv with stride 2, BN, act, 2x2 max pooling (as DenseNet's stem, it reaches 1/4
  resolution before the first dense block, which keeps the concatenations cheap);
  block1..blockN: dense blocks of `layers_per_block` BN-act-conv layers (growth rate
  `growth_rate`), with transitions (halving the resolution) between blocks and a final BN-act
  after the last one. The Grad-CAM layer is at 1/2**(N+1) of the input resolution (8x8 for
  64x64 inputs with the default two blocks). H and W must be divisible by 2**(N+1).
  """

  num_classes: int = 2
  activation: Callable[[Array], Array] = nn.relu
  stem_width: int = 16
  growth_rate: int = 12
  layers_per_block: Sequence[int] = (4, 4)
  dtype: Dtype = jnp.float32

  @property
  def block_names(self) -> tuple[str, ...]:
    n = len(self.layers_per_block)
    return ("logits",) + tuple(f"block{i}" for i in range(n, 0, -1)) + ("stem",)

  def setup(self):
    self.stem = DenseStem(self.stem_width, self.activation, dtype=self.dtype)
    n = len(self.layers_per_block)
    self.blocks = [
      DenseStage(
        num_layers,
        self.growth_rate,
        self.activation,
        last=i == n - 1,
        dtype=self.dtype,
        name=f"block{i + 1}",
      )
      for i, num_layers in enumerate(self.layers_per_block)
    ]
    self.logits = _ClassifierHead(self.num_classes, dtype=self.dtype)
