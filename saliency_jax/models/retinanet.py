"""RetinaNet (Lin et al. 2017) in Flax Linen: the detection baseline of box datasets (RSNA).

Keras-faithful ResNet backbone (`resnet.ResNet`, parameters under "backbone", which is where
the Keras ResNet50 ImageNet weights go) -> FPN P3-P7 -> class and box subnets shared by every
level. One foreground class (the finding), `NUM_ANCHORS` anchors per location.

  module = RetinaNet()                               # ResNet-50, 256-wide FPN and heads
  class_logits, box_deltas = module.apply(variables, images)   # [B, N], [B, N, 4]
  anchors = module.anchors(H, W)                     # [N, 4], the same order

FPN as the paper: P3-P5 from 1x1 laterals of C3-C5 plus the nearest-upsampled coarser level,
each smoothed by a 3x3 convolution; P6 a 3x3/2 convolution of C5, P7 a 3x3/2 convolution of
ReLU(P6). Subnets: `head_depth` 3x3 convolutions with ReLU, then a 3x3 convolution to the
outputs. Initialization as the paper for the subnets (Gaussian weights, std 0.01, zero bias; the
class output's bias -log((1 - 0.01) / 0.01) so every anchor starts at foreground probability
0.01); Flax defaults for the FPN.
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.detection import boxes as boxes_lib
from saliency_jax.models import resnet

Array = jax.Array

PRIOR = 0.01


def _upsample_to(x: Array, shape: tuple[int, int]) -> Array:
  """Nearest-neighbour 2x upsampling, cropped to `shape` (odd sizes)."""
  x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x[:, : shape[0], : shape[1]]


class RetinaNet(nn.Module):
  """RetinaNet with a Keras ResNet backbone.

  Attributes:
    stem_width, widths, blocks: the backbone (`resnet.ResNet`; defaults: ResNet-50).
    fpn_width: channels of P3-P7 and of the subnets (256).
    head_depth: 3x3 convolutions of each subnet before its output (4).
    anchor_sizes: base anchor size of P3-P7 (the paper: 32 to 512); smaller for small images.
    dtype: compute dtype; parameters and outputs stay float32.
  """

  stem_width: int = 64
  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (3, 4, 6, 3)
  fpn_width: int = 256
  head_depth: int = 4
  anchor_sizes: Sequence[float] = boxes_lib.PAPER_ANCHOR_SIZES
  dtype: Any = jnp.float32

  def anchors(self, height: int, width: int) -> np.ndarray:
    """The anchors of an input of height x width, in the order of the outputs."""
    return boxes_lib.anchors(height, width, tuple(self.anchor_sizes))

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    dt, width = self.dtype, self.fpn_width
    _, c3, c4, c5 = resnet.ResNet(
      self.stem_width, tuple(self.widths), tuple(self.blocks), dtype=dt, name="backbone"
    )(x, train)

    def conv(k, s, name):
      return nn.Conv(width, (k, k), (s, s), padding="SAME", dtype=dt, name=name)

    p5 = conv(1, 1, "lateral5")(c5)
    p4 = conv(1, 1, "lateral4")(c4) + _upsample_to(p5, c4.shape[1:3])
    p3 = conv(1, 1, "lateral3")(c3) + _upsample_to(p4, c3.shape[1:3])
    p6 = conv(3, 2, "p6")(c5)
    p7 = conv(3, 2, "p7")(nn.relu(p6))
    levels = [
      conv(3, 1, "smooth3")(p3),
      conv(3, 1, "smooth4")(p4),
      conv(3, 1, "smooth5")(p5),
      p6,
      p7,
    ]
    expected = boxes_lib.level_shapes(*x.shape[1:3])
    if tuple(p.shape[1:3] for p in levels) != expected:
      raise AssertionError(
        f"FPN grids {[p.shape[1:3] for p in levels]} differ from the anchors' {expected}."
      )

    head_init = nn.initializers.normal(0.01)
    prior_bias = -math.log((1 - PRIOR) / PRIOR)

    def subnet(name: str, outputs: int, bias: float) -> list[nn.Conv]:
      layers = [
        nn.Conv(width, (3, 3), padding="SAME", kernel_init=head_init, dtype=dt, name=f"{name}_{i}")
        for i in range(self.head_depth)
      ]
      return layers + [
        nn.Conv(
          outputs,
          (3, 3),
          padding="SAME",
          kernel_init=head_init,
          bias_init=nn.initializers.constant(bias),
          dtype=dt,
          name=f"{name}_out",
        )
      ]

    # Created once and applied to every level: the subnets' weights are shared.
    class_net = subnet("class", boxes_lib.NUM_ANCHORS, prior_bias)
    box_net = subnet("box", 4 * boxes_lib.NUM_ANCHORS, 0.0)

    def run(layers, p, per_anchor):
      for layer in layers[:-1]:
        p = nn.relu(layer(p))
      p = layers[-1](p)
      return p.reshape(p.shape[0], -1, per_anchor)

    logits = jnp.concatenate([run(class_net, p, 1) for p in levels], axis=1)[..., 0]
    deltas = jnp.concatenate([run(box_net, p, 4) for p in levels], axis=1)
    return logits.astype(jnp.float32), deltas.astype(jnp.float32)
