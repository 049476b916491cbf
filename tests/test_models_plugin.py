"""Models that are not in the package (a Flax module by import path, or only a logits_fn), their
weights (orbax, msgpack), and custom attribution methods by import path."""

from flax import serialization
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from saliency import core as pair

from saliency_jax import attributions
from saliency_jax import randomization
from saliency_jax.attributions import custom
from saliency_jax.attributions.pair_interop import pair_call_model_function
from saliency_jax.models import plugin
from saliency_jax.models.functions import ModelFunctions

SHAPE = (12, 10, 1)


class CompactNet(nn.Module):
  """Implements none of the protocol's optional parts: no features/head, no activation field,
  no block_names."""

  num_classes: int = 2

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name="c1")(x))
    x = nn.Conv(5, (3, 3), strides=(2, 2), name="c2")(x)
    return nn.Dense(self.num_classes, name="head")(nn.relu(x).mean(axis=(1, 2)))


class SkipNet(nn.Module):
  """c2's output is not the only path to the logits."""

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(3, (3, 3), name="c2")(x)
    return nn.Dense(2, name="head")(jnp.concatenate([h.mean((1, 2)), x.mean((1, 2))], -1))


def _net(seed=0):
  module = CompactNet()
  variables = module.init(jax.random.key(seed), jnp.zeros((1, *SHAPE)))
  variables = jax.tree.map(lambda p: p + 0.1, variables)  # biases on: not every ReLU off
  return module, variables


def _images(n=3):
  return np.random.default_rng(0).uniform(-1, 1, (n, *SHAPE)).astype(np.float32)


def test_gradcam_layer_split_equals_pair_on_a_hand_written_split():
  module, variables = _net()
  model = plugin.from_flax(
    "M1", module, variables, SHAPE, gradcam_layer="c2", blocks=("head", "c2", "c1")
  )
  p = variables["params"]
  conv = lambda name, stride: (
    lambda x: (
      jax.lax.conv_general_dilated(
        x, p[name]["kernel"], (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
      + p[name]["bias"]
    )
  )
  feats = lambda x: conv("c2", 2)(jax.nn.relu(conv("c1", 1)(x)))
  head = lambda f: jax.nn.relu(f).mean((1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]
  hand = ModelFunctions(lambda x: head(feats(x)), feats, head)
  images = _images()
  fns = model.functions()
  np.testing.assert_allclose(fns.logits_fn(images), hand.logits_fn(images), atol=1e-5)
  targets = np.asarray(jnp.argmax(fns.logits_fn(images), -1), np.int32)
  ours = np.asarray(
    attributions.METHODS["GCAM"].compute(
      fns, images, targets, settings={"resize": "skimage_bilinear"}
    )
  )
  cmf = pair_call_model_function(hand)
  for i, t in enumerate(targets):
    ref = pair.VisualizeImageGrayscale(pair.GradCam().GetMask(images[i], cmf, {"target": int(t)}))
    np.testing.assert_allclose(ours[i], ref, atol=2e-5)
  assert np.isfinite(ours).all()
  # No activation field: guided backprop is what it lacks, and the report is told why.
  assert set(model.lacks) == {plugin.GUIDED}
  assert [what for what, _ in model.skipped()] == ["GBP", "GGCAM"]
  with pytest.raises(ValueError, match="guided_logits_fn"):
    fns.guided_logits_fn  # noqa: B018


def test_split_errors_name_what_is_wrong():
  module, variables = _net()
  with pytest.raises(ValueError, match="not a submodule"):
    plugin.from_flax("M1", module, variables, SHAPE, gradcam_layer="c9")
  with pytest.raises(ValueError, match="not top-level parameter collections"):
    plugin.from_flax("M1", module, variables, SHAPE, blocks=("head", "conv9"))
  skip = SkipNet()
  skip_vars = skip.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(ValueError, match="skip connection"):
    plugin.from_flax("S", skip, skip_vars, SHAPE, gradcam_layer="c2")
  bare = plugin.from_flax("M2", module, variables, SHAPE)
  assert set(bare.lacks) == {plugin.GRADCAM, plugin.GUIDED, plugin.BLOCKS}
  assert "gradcam_layer" in bare.lacks[plugin.GRADCAM]


def test_cascading_randomization_of_given_blocks():
  module, variables = _net()
  steps = randomization.cascading_randomization(
    module, variables, jax.random.key(1), jnp.zeros((1, *SHAPE)), block_names=("head", "c2", "c1")
  )
  assert [name for name, _ in steps] == ["original", "head", "c2", "c1"]
  _, after_head = steps[1]
  np.testing.assert_array_equal(
    after_head["params"]["c1"]["kernel"], variables["params"]["c1"]["kernel"]
  )
  assert not np.allclose(
    after_head["params"]["head"]["kernel"], variables["params"]["head"]["kernel"]
  )


def test_prediction_only_model_lacks_every_internal():
  module, variables = _net()
  model = plugin.prediction_only("P", lambda x: module.apply(variables, x))
  assert set(model.lacks) == {plugin.GRADCAM, plugin.GUIDED, plugin.BLOCKS}
  assert model.block_names == ()
  skipped = dict(model.skipped())
  assert {"GCAM", "GGCAM", "GBP", "cascading randomization"} <= set(skipped)
  grad = attributions.METHODS["GRAD"].compute(model.functions(), _images(), np.zeros(3, int))
  assert np.isfinite(np.asarray(grad)).all()


def test_weights_from_orbax_and_msgpack(tmp_path):
  module, variables = _net(seed=3)
  template = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(tmp_path / "ckpt"), variables)
  (tmp_path / "w.msgpack").write_bytes(serialization.to_bytes(variables))
  for path in (str(tmp_path / "ckpt"), str(tmp_path / "w.msgpack")):
    restored = plugin.load_variables(path, template)
    jax.tree.map(np.testing.assert_array_equal, restored, jax.device_get(variables))
  other = CompactNet(num_classes=3)
  wrong = jax.eval_shape(other.init, jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(ValueError, match="do not fit"):
    plugin.load_variables(str(tmp_path / "w.msgpack"), wrong)
  (tmp_path / "junk.msgpack").write_bytes(b"\xc1junk")
  with pytest.raises(ValueError, match="msgpack"):
    plugin.load_variables(str(tmp_path / "junk.msgpack"), template)


def test_resolve_by_import_path(tmp_path):
  module, variables = _net(seed=4)
  (tmp_path / "w.msgpack").write_bytes(serialization.to_bytes(variables))
  spec = dict(
    name="M1",
    module="test_models_plugin:CompactNet",
    kwargs=dict(num_classes=2),
    weights=str(tmp_path / "w.msgpack"),
    gradcam_layer="c2",
    blocks=("head", "c2"),
  )
  got_module, got_vars, extras = plugin.resolve(spec, SHAPE)
  assert got_module == module
  assert extras == {
    "gradcam_layer": "c2",
    "blocks": ("head", "c2"),
    "arch": "test_models_plugin:CompactNet",
  }
  jax.tree.map(np.testing.assert_array_equal, got_vars, jax.device_get(variables))
  with pytest.raises(AttributeError, match="NoSuchNet"):
    plugin.resolve(dict(spec, module="test_models_plugin:NoSuchNet"), SHAPE)
  with pytest.raises(ValueError, match="package.module:Name"):
    plugin.resolve(dict(spec, module="CompactNet"), SHAPE)
  with pytest.raises(ValueError, match="unknown fields"):
    plugin.resolve(dict(spec, gradcam="c2"), SHAPE)
  with pytest.raises(ValueError, match="exactly one"):
    plugin.resolve(dict(spec, arch="small_vgg"), SHAPE)


def gradient_times_input(model_fns, images, targets, *, indices, key, settings):
  """A custom method for the tests: gradient x input, scaled by a setting."""
  del indices, key
  grads = jax.grad(
    lambda x: jnp.take_along_axis(model_fns.logits_fn(x), targets[:, None], axis=1).sum()
  )(images)
  return settings["scale"] * grads * images


gradient_times_input.default_settings = {"scale": 1.0}


def test_custom_method_by_import_path():
  names = custom.register_from_config({"GxI": "test_models_plugin:gradient_times_input"})
  assert names == ["GxI"]
  custom.register_from_config({"GxI": "test_models_plugin:gradient_times_input"})  # no-op
  module, variables = _net()
  fns = plugin.from_flax("M1", module, variables, SHAPE).functions()
  images, targets = _images(), np.array([0, 1, 1], np.int32)
  maps = np.asarray(
    attributions.METHODS["GxI"].compute(fns, images, targets, settings={"scale": 3.0})
  )
  cmf = pair_call_model_function(fns)
  for i, t in enumerate(targets):
    grad = pair.GradientSaliency().GetMask(images[i], cmf, {"target": int(t)})
    np.testing.assert_allclose(maps[i], pair.VisualizeImageGrayscale(grad * images[i]), atol=2e-5)
  with pytest.raises(ValueError, match="taken"):
    custom.register("GRAD", gradient_times_input)
  with pytest.raises(ValueError, match="unknown settings"):
    attributions.METHODS["GxI"].compute(fns, images, targets, settings={"scael": 3.0})
  custom.register("BAD_SHAPE", lambda *a, **k: jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="returned shape"):
    attributions.METHODS["BAD_SHAPE"].compute(fns, images, targets)
