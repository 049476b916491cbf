"""Small Flax classifiers and PAIR adapters for the attribution tests.

`TinyNet` follows the model contract of saliency_jax/models/functions.py (field `activation`,
`num_classes`, `features`/`head` split, `block_names`) without depending on the models package.
`pair_call_model_function` is how a PAIR user drives `saliency.core` with a JAX model.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax.attributions.pair_interop import pair_call_model_function  # noqa: F401
from saliency_jax.models.functions import model_functions


class TinyNet(nn.Module):
  """conv-relu-conv-relu (Grad-CAM layer) | global average pool - dense."""

  num_classes: int = 3
  activation: object = nn.relu
  block_names = ("head", "conv2", "conv1")

  def setup(self):
    self.conv1 = nn.Conv(5, (3, 3), padding="SAME", name="conv1")
    self.conv2 = nn.Conv(6, (3, 3), strides=(2, 2), padding="SAME", name="conv2")
    self.dense = nn.Dense(self.num_classes, name="head")

  def features(self, x):
    x = self.activation(self.conv1(x))
    return self.activation(self.conv2(x))

  def head(self, feats):
    return self.dense(feats.mean(axis=(1, 2)))

  def __call__(self, x, train=False):
    del train
    return self.head(self.features(x))


def tiny_model(channels=3, num_classes=3, seed=0, size=(12, 10)):
  """(module, variables, ModelFunctions) of a randomly initialized TinyNet."""
  module = TinyNet(num_classes=num_classes)
  variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + size + (channels,)))
  # Make the biases non-zero so ReLUs are not all on at initialization.
  variables = jax.tree.map(
    lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(seed + 1), p.shape), variables
  )
  return module, variables, model_functions(module, variables)


def random_images(shape, seed=0):
  """float32 images in [-1, 1] with some spatial structure."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, shape).astype(np.float32)
  return np.clip(x + np.linspace(-0.5, 0.5, shape[2])[None, None, :, None], -1, 1).astype(
    np.float32
  )


@pytest.fixture(autouse=True)
def full_float32_precision():
  """Full float32 matmuls/convolutions on GPU/TPU (their default is TF32/bf16 passes), so
  comparisons with PAIR test the algorithms, not the accelerator's precision. No-op on CPU."""
  with jax.default_matmul_precision("highest"):
    yield
