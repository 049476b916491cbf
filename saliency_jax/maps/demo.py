"""A tiny deterministic model and image set, for trying map generation without a study.

`tiny_problem` builds everything from a seed, so separate processes (a killed job and its
restart) get the same model and images. The model follows the model contract of
saliency_jax.models.functions, so every MapMethod runs on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from saliency_jax.models.functions import model_functions
from saliency_jax.models.functions import ModelFunctions


class TinyCNN(nn.Module):
  """conv-act-conv-act (the Grad-CAM layer), global average pooling, dense logits."""

  num_classes: int = 2
  features_per_layer: int = 8
  activation: Callable[[Any], Any] = nn.relu
  block_names = ("logits", "conv2", "conv1")

  def setup(self):
    self.conv1 = nn.Conv(self.features_per_layer, (3, 3))
    self.conv2 = nn.Conv(self.features_per_layer, (3, 3))
    self.logits = nn.Dense(self.num_classes)

  def features(self, x):
    return self.activation(self.conv2(self.activation(self.conv1(x))))

  def head(self, feats):
    return self.logits(feats.mean(axis=(1, 2)))

  def __call__(self, x, train: bool = False):
    del train  # No batch norm or dropout.
    return self.head(self.features(x))


def tiny_problem(
  *,
  seed: int = 0,
  num_images: int = 16,
  height: int = 12,
  width: int = 10,
  channels: int = 1,
  num_classes: int = 2,
) -> tuple[ModelFunctions, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """A TinyCNN with random weights and random images in [-1, 1], all from `seed`.

  Returns:
    (model_fns, images float32 [N,H,W,C], targets int32 [N], indices int32 [N], ids str [N]).
  """
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (num_images, height, width, channels)).astype(np.float32)
  targets = rng.integers(0, num_classes, num_images).astype(np.int32)
  module = TinyCNN(num_classes=num_classes)
  # Weights from NumPy (LeCun normal kernels, zero biases): no random-number program to
  # compile, which on the CPU costs more than everything else in a tiny job.
  shapes = jax.eval_shape(module.init, jax.random.key(0), images[:1])

  def draw(path, leaf):
    if path[-1].key == "bias":
      return np.zeros(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  indices = np.arange(num_images, dtype=np.int32)
  ids = np.array([f"tiny-{seed}-{i:05d}" for i in range(num_images)])
  return model_functions(module, variables), images, targets, indices, ids


def _grayscale(grads):
  """|grads| summed over channels, scaled per image to [0, 1] by its maximum."""
  gray = jax.numpy.abs(grads).sum(axis=-1)
  peak = gray.max(axis=(1, 2), keepdims=True)
  return gray / jax.numpy.where(peak > 0, peak, 1.0)


def _input_gradients(logits_fn, images, targets):
  def selected(x):
    logits = logits_fn(x)
    return jax.numpy.take_along_axis(logits, targets[:, None], axis=1).sum()

  return jax.grad(selected)(images)


class DemoGradient:
  """A minimal MapMethod (the contract of saliency_jax.attributions): |input gradient|."""

  name = "DEMO_GRAD"
  default_settings: dict = {}
  prepare = None

  def compute(self, model_fns, images, targets, *, indices, key, settings, prepared=None):
    del indices, key, settings, prepared
    return _grayscale(_input_gradients(model_fns.logits_fn, images, targets))


class DemoSmoothGrad:
  """A minimal noisy MapMethod: mean |gradient| over noisy copies, noise keyed per image."""

  name = "DEMO_SG"
  default_settings: dict = {"num_samples": 4, "spread": 0.15}
  prepare = None

  def compute(self, model_fns, images, targets, *, indices, key, settings, prepared=None):
    del prepared
    jnp = jax.numpy
    num_samples, batch = settings["num_samples"], images.shape[0]
    std = settings["spread"] * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))

    def noise(index, sample):  # The key depends on the image's dataset index, not its place.
      return jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(key, index), sample), images.shape[1:]
      )

    samples = jnp.arange(num_samples)
    noises = jax.vmap(lambda s: jax.vmap(lambda i: noise(i, s))(indices))(samples)
    noisy = (images + std[:, None, None, None] * noises).reshape((-1,) + images.shape[1:])
    grads = _input_gradients(model_fns.logits_fn, noisy, jnp.tile(targets, num_samples))
    return _grayscale(jnp.abs(grads).reshape((num_samples, batch) + images.shape[1:]).mean(0))


DEMO_METHODS = {"DEMO_GRAD": DemoGradient(), "DEMO_SG": DemoSmoothGrad()}
