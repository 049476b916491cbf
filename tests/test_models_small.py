"""The small classifiers, the U-Net and the registry follow the model contract."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import models
from saliency_jax.attributions.guided_relu import guided_relu
from saliency_jax.models import small_cnn

# Small widths keep compilation fast; the structure (block names, splits) is the default one.
# The same tiny models and image shape are used by test_randomization and test_train, so a whole
# test session compiles each of them once.
TINY = {
  "small_vgg": dict(stem_width=4, widths=(4, 8)),
  "small_densenet": dict(stem_width=4, growth_rate=4, layers_per_block=(1, 1)),
}
# Resolution reduction of the Grad-CAM layer: VGG 2 (stem) x 2 (one pooled block);
# DenseNet 4 (stem) x 2 (one transition).
REDUCTION = {"small_vgg": 4, "small_densenet": 8}
SHAPE = (24, 16, 1)  # non-square, divisible by 8


def _images(n=3, shape=SHAPE, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, *shape))


@pytest.fixture(scope="module", params=sorted(TINY))
def model(request):
  module = models.create(request.param, **TINY[request.param])
  variables = models.init_variables(module, jax.random.key(1), SHAPE)
  # Make the batch-norm statistics non-trivial, as after training.
  variables["batch_stats"] = jax.tree.map(
    lambda a: a * (1 + 0.2 * jax.random.uniform(jax.random.key(2), a.shape)),
    variables["batch_stats"],
  )
  return request.param, module, variables


def test_head_of_features_is_the_forward_pass(model):
  name, module, variables = model
  x = _images()
  logits = module.apply(variables, x)
  feats = module.apply(variables, x, method="features")
  assert logits.shape == (3, 2) and logits.dtype == jnp.float32
  r = REDUCTION[name]
  assert feats.ndim == 4 and feats.shape[:3] == (3, 24 // r, 16 // r)
  np.testing.assert_allclose(
    module.apply(variables, feats, method="head"), logits, rtol=1e-6, atol=1e-6
  )
  # The head is global average pooling then the Dense layer named "logits".
  dense = variables["params"]["logits"]["dense"]
  expected = feats.mean(axis=(1, 2)) @ dense["kernel"] + dense["bias"]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_block_names_are_the_top_level_collections_top_down(model):
  name, module, variables = model
  n = len(TINY[name].get("widths", TINY[name].get("layers_per_block")))
  expected = ("logits",) + tuple(f"block{i}" for i in range(n, 0, -1)) + ("stem",)
  assert module.block_names == expected
  assert set(variables["params"]) == set(expected)
  assert set(variables["batch_stats"]) == set(expected) - {"logits"}
  # The forward pass calls the top-level blocks stem first: reversed, that is block_names.
  order = []

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if len(path) == 1 and path[0] not in order:
      order.append(path[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    module.apply(variables, _images())
  assert tuple(reversed(order)) == expected


def test_every_relu_is_the_activation_field(model):
  name, module, variables = model
  calls = []

  def counting_relu(x):
    calls.append(x.shape)
    return nn.relu(x)

  x = _images()
  out = module.clone(activation=counting_relu).apply(variables, x)
  np.testing.assert_allclose(out, module.apply(variables, x), rtol=1e-6, atol=1e-6)
  # Hand count: VGG: stem + 2 convs x 2 blocks; DenseNet: stem + (1 layer + exit norm) x 2.
  assert len(calls) == {"small_vgg": 5, "small_densenet": 5}[name]
  # A different activation changes the output, so none of the nonlinearities is hard-wired.
  tanh_out = module.clone(activation=jnp.tanh).apply(variables, x)
  assert not np.allclose(tanh_out, out, atol=1e-3)


def test_guided_model_shares_parameters_and_changes_only_gradients(model):
  _, module, variables = model
  fns = models.model_functions(module, variables)
  x = _images()
  np.testing.assert_allclose(fns.guided_logits_fn(x), fns.logits_fn(x), rtol=1e-6, atol=1e-6)
  grad = jax.grad(lambda v: fns.logits_fn(v)[:, 1].sum())(x)
  guided = jax.grad(lambda v: fns.guided_logits_fn(v)[:, 1].sum())(x)
  explicit = module.clone(activation=guided_relu)
  reference = jax.grad(lambda v: explicit.apply(variables, v)[:, 1].sum())(x)
  np.testing.assert_allclose(guided, reference, rtol=1e-6, atol=1e-7)
  scale = np.abs(grad).max()
  assert scale > 0 and np.abs(guided - grad).max() > 0.05 * scale


def test_inference_uses_running_averages_and_training_updates_them(model):
  name, module, variables = model
  x = _images(4)
  # Inference: each example's logits do not depend on the rest of the batch.
  np.testing.assert_allclose(
    module.apply(variables, x[:1]), module.apply(variables, x)[:1], rtol=1e-5, atol=1e-5
  )
  # Training: normalization by batch statistics, and the running averages move by
  # 1 - momentum = 0.1 towards them. Checked by hand on the stem's convolution.
  _, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
  unit = (lambda tree: tree["stem"]) if name == "small_vgg" else (lambda tree: tree["stem"]["conv"])
  conv = jax.lax.conv_general_dilated(
    x,
    unit(variables["params"])["conv"]["kernel"],
    (2, 2),
    "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  old, new = unit(variables["batch_stats"])["bn"], unit(updates["batch_stats"])["bn"]
  np.testing.assert_allclose(
    new["mean"], 0.9 * old["mean"] + 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    new["var"], 0.9 * old["var"] + 0.1 * conv.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )


def test_default_models_at_64_pixels():
  for name, grid in (("small_vgg", 8), ("small_densenet", 8)):
    module = models.create(name)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 1)))
    feats = jax.eval_shape(
      lambda v, x: module.apply(v, x, method="features"), shapes, jnp.zeros((2, 64, 64, 1))
    )
    assert feats.shape[:3] == (2, grid, grid)
    count = sum(np.prod(a.shape) for a in jax.tree.leaves(shapes["params"]))
    assert 10_000 < count < 200_000, (name, count)  # small, as the CPU budget requires


def test_unet_output_shape_and_size_check():
  module = models.create("unet", depth=1, base_width=4)
  variables = models.init_variables(module, jax.random.key(0), SHAPE)
  x = _images(2)
  out = module.apply(variables, x)
  assert out.shape == (2, 24, 16) and out.dtype == jnp.float32
  with pytest.raises(ValueError, match="divisible by 2"):
    module.apply(variables, _images(1, (9, 16, 1)))
  # Structure of a deeper one (shapes only): widths double at each level, skips concatenated.
  deep = models.create("unet", depth=3, base_width=2)
  shapes = jax.eval_shape(deep.init, jax.random.key(0), jnp.zeros((1, 16, 24, 3)))["params"]
  assert set(shapes) == {
    "down1",
    "down2",
    "down3",
    "bottleneck",
    "upsample3",
    "up3",
    "upsample2",
    "up2",
    "upsample1",
    "up1",
    "logits",
  }
  assert shapes["down1"]["conv1"]["kernel"].shape == (3, 3, 3, 2)
  assert shapes["bottleneck"]["conv1"]["kernel"].shape == (3, 3, 8, 16)
  assert shapes["upsample3"]["kernel"].shape == (2, 2, 16, 8)
  assert shapes["up3"]["conv1"]["kernel"].shape == (3, 3, 16, 8)  # 8 skip + 8 upsampled
  assert shapes["logits"]["kernel"].shape == (1, 1, 2, 1)
  out = jax.eval_shape(
    deep.apply,
    {
      "params": shapes,
      "batch_stats": jax.eval_shape(deep.init, jax.random.key(0), jnp.zeros((1, 16, 24, 3)))[
        "batch_stats"
      ],
    },
    jnp.zeros((5, 16, 24, 3)),
  )
  assert out.shape == (5, 16, 24)
  with pytest.raises(ValueError, match="divisible by 8"):
    jax.eval_shape(deep.init, jax.random.key(0), jnp.zeros((1, 20, 24, 3)))
  with pytest.raises(ValueError, match="one foreground logit"):
    models.create("unet", num_classes=3)


def test_registry():
  assert set(models.MODEL_NAMES) == {
    "small_vgg",
    "small_densenet",
    "unet",
    "inception_v3",
    "densenet121",
    "retinanet",
  }
  five = models.create("small_vgg", num_classes=5)
  assert isinstance(five, small_cnn.SmallVGG)
  assert jax.eval_shape(five.init, jax.random.key(0), jnp.zeros((2, 8, 8, 1)))["params"]["logits"][
    "dense"
  ]["kernel"].shape == (64, 5)
  assert models.create("small_densenet").num_classes == 2
  with pytest.raises(ValueError, match="Unknown model"):
    models.create("resnet")
  with pytest.raises(ValueError, match=r"\(H, W, C\)"):
    models.init_variables(models.create("small_vgg"), jax.random.key(0), (8, 8))


def test_paper_models_are_imported_only_when_asked_for():
  code = (
    "import sys; import saliency_jax.models as m; m.create('small_vgg'); "
    "print(any(k in sys.modules for k in ('saliency_jax.models.inception_v3', "
    "'saliency_jax.models.densenet', 'saliency_jax.models.keras_import', 'keras')))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert out.stdout.strip() == "False"
