"""The Keras-faithful ResNet-50 against Keras itself, and the RetinaNet built on it."""

import math
import os

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported; no TensorFlow

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from saliency_jax import models
from saliency_jax.detection import boxes as boxes_lib
from saliency_jax.models import resnet
from saliency_jax.models import retinanet
from saliency_jax.models.keras_import import import_keras_weights

SHAPE = (35, 41, 3)  # odd, non-square: exposes padding and stride differences
STAGE_OUTPUTS = ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")


def _size(tree) -> int:
  return sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def keras_case(tmp_path_factory):
  keras.utils.set_random_seed(0)
  base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=SHAPE)
  rng = np.random.RandomState(1)
  for w in base.weights:  # every variable random, BN statistics and biases included
    name, shape = w.path.split("/")[-1], tuple(w.shape)
    if name == "kernel":
      value = rng.randn(*shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif name in ("gamma", "moving_variance"):
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.randn(*shape) * 0.2
    w.assign(value.astype(np.float32))
  stages = keras.Model(base.input, [base.get_layer(n).output for n in STAGE_OUTPUTS])
  images = np.random.RandomState(2).randn(2, *SHAPE).astype(np.float32)
  path = str(tmp_path_factory.mktemp("resnet") / "resnet50.weights.h5")
  base.save_weights(path)
  return base, [np.asarray(o) for o in stages.predict(images, verbose=0)], images, path


def test_resnet50_matches_keras(keras_case):
  base, keras_outputs, images, path = keras_case
  variables = import_keras_weights("resnet50", path)
  assert _size(variables["params"]) == sum(int(np.prod(w.shape)) for w in base.trainable_weights)
  assert _size(variables["batch_stats"]) == sum(
    int(np.prod(w.shape)) for w in base.non_trainable_weights
  )
  ours = jax.jit(resnet.ResNet().apply)(variables, images)
  for got, want in zip(ours, keras_outputs):
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def test_resnet50_import_refuses_other_files(keras_case, tmp_path):
  del keras_case
  model = keras.Sequential(
    [
      keras.Input((8, 8, 3)),
      keras.layers.Conv2D(4, 3, name="conv1_conv"),
      keras.layers.Dense(2, name="extra"),
    ]
  )
  path = str(tmp_path / "other.weights.h5")
  model.save_weights(path)
  with pytest.raises(ValueError, match="no layer 'conv1_bn'"):
    import_keras_weights("resnet50", path)


def test_retinanet_outputs_anchors_and_prior():
  module = models.create(
    "retinanet",
    stem_width=8,
    widths=(4, 8, 8, 8),
    blocks=(1, 1, 1, 1),
    fpn_width=8,
    head_depth=2,
    anchor_sizes=(8, 16, 32, 64, 128),
  )
  x = jnp.asarray(np.random.RandomState(0).randn(2, 45, 37, 1), jnp.float32)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  logits, deltas = jax.jit(module.apply)(variables, x)
  anchors = module.anchors(45, 37)
  assert logits.shape == (2, len(anchors)) and deltas.shape == (2, len(anchors), 4)
  cells = sum(h * w for h, w in boxes_lib.level_shapes(45, 37))
  assert len(anchors) == cells * boxes_lib.NUM_ANCHORS
  # Prior 0.01: the class output's bias, and the starting foreground probabilities.
  bias = variables["params"]["class_out"]["bias"]
  np.testing.assert_allclose(bias, -math.log(99.0), rtol=1e-6)
  assert abs(float(jax.nn.sigmoid(logits).mean()) - 0.01) < 0.003
  kernel = variables["params"]["box_0"]["kernel"]
  assert abs(float(kernel.std()) - 0.01) < 0.002 and float(abs(kernel.mean())) < 0.002
  with pytest.raises(ValueError, match="one foreground logit"):
    models.create("retinanet", num_classes=3)


def test_retinanet_takes_the_imported_backbone(keras_case):
  path = keras_case[3]
  backbone = import_keras_weights("resnet50", path)
  module = retinanet.RetinaNet(fpn_width=16, head_depth=1)
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *SHAPE)))
  assert jax.tree.map(np.shape, variables["params"]["backbone"]) == jax.tree.map(
    np.shape, backbone["params"]
  )
  assert jax.tree.map(np.shape, variables["batch_stats"]["backbone"]) == jax.tree.map(
    np.shape, backbone["batch_stats"]
  )


def test_paper_rsna_detector_builds_at_320():
  """configs/paper_rsna.py's RetinaNet (ResNet-50, anchors 32-512) at 320x320x3, traced only."""
  from configs import paper_rsna

  loc = paper_rsna.get_config().localization
  assert loc.arch == "retinanet" and len(loc.seeds) == 2 and loc.seeds[0] != loc.seeds[1]
  module = models.create(loc.arch, **loc.kwargs)
  x = jnp.zeros((1, 320, 320, 3))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  logits, deltas = jax.eval_shape(module.apply, variables, x)
  assert logits.shape == (1, len(module.anchors(320, 320))) == (1, 9 * (1600 + 400 + 100 + 25 + 9))
  assert deltas.shape == (1, logits.shape[1], 4)
  assert _size(variables["params"]["backbone"]) == 23_534_592  # Keras ResNet50 notop trainable
