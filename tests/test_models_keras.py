"""The Keras-faithful InceptionV3 and DenseNet121 against Keras itself (JAX backend).

A Keras model with random weights (batch-norm statistics re-randomized too, so the BN mapping
is really exercised) is saved as a Keras 3 `.weights.h5`, as a legacy HDF5 file written the way
Keras 2 wrote its `*_notop.h5` ImageNet files (Keras 3 can no longer write that layout from
`save_weights`; see `_write_keras2_weights`), and as Keras 3's own legacy whole-model `.h5`.
Each file is imported into our module, which must give Keras' features and logits.
Odd, non-square inputs expose padding and pooling differences.
"""

import os
import shutil

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported; no TensorFlow

import flax.linen as nn  # noqa: E402
import h5py  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from saliency_jax.models import densenet  # noqa: E402
from saliency_jax.models import inception_v3  # noqa: E402
from saliency_jax.models.keras_import import import_keras_weights  # noqa: E402

NUM_CLASSES = 3
ARCHS = {
  # arch: (Keras constructor, our module, input shape of the test (odd, non-square))
  "inception_v3": (keras.applications.InceptionV3, inception_v3.InceptionV3, (75, 83, 3)),
  "densenet121": (keras.applications.DenseNet121, densenet.DenseNet121, (35, 37, 3)),
}
# Keras' numbers without the head: (trainable params, BN moving statistics), and the totals
# Keras reports for the same model with a Dense(2) head.
KERAS_COUNTS = {
  "inception_v3": (21_768_352, 34_432, 21_806_882),
  "densenet121": (6_953_856, 83_648, 7_039_554),
}


def _size(tree) -> int:
  return sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(tree))


def _randomize(model: keras.Model, seed: int) -> None:
  """Random values for every variable, BN statistics and biases included."""
  rng = np.random.RandomState(seed)
  for w in model.weights:
    name, shape = w.path.split("/")[-1], tuple(w.shape)
    if name == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      value = rng.randn(*shape) * np.sqrt(2.0 / fan_in)
    elif name in ("gamma", "moving_variance"):
      value = rng.uniform(0.5, 1.5, shape)
    else:  # beta, moving_mean, bias
      value = rng.randn(*shape) * 0.2
    w.assign(value.astype(np.float32))


def _keras2_layer_name(arch: str, name: str) -> str:
  """Names as in the keras-2 ImageNet files: auto names count from 1 (conv2d_1 for keras 3's
  conv2d); DenseNet's stem was "conv1/conv", "conv1/bn"."""
  if arch == "inception_v3":
    prefix, _, suffix = name.rpartition("_")
    if suffix.isdigit() and prefix in ("conv2d", "batch_normalization"):
      return f"{prefix}_{int(suffix) + 1}"
    if name in ("conv2d", "batch_normalization"):
      return f"{name}_1"
    return name
  return {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn"}.get(name, name)


def _write_keras2_weights(path: str, model: keras.Model, arch: str, *, skip=()) -> None:
  """The keras-2 `save_weights("x.h5")` layout, written with h5py as keras 2 did.

  Root attributes `layer_names` (every layer, in `model.layers` order), `backend` and
  `keras_version`; per layer a group with attribute `weight_names` ("<layer>/<var>:0",
  trainable then non-trainable) and the datasets at those (nested) paths.
  """
  layers = [layer for layer in model.layers if layer.name not in skip]
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [_keras2_layer_name(arch, l.name).encode() for l in layers]
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.1.5"
    for layer in layers:
      name = _keras2_layer_name(arch, layer.name)
      group = f.create_group(name)
      weights = layer.trainable_weights + layer.non_trainable_weights
      names = [f"{name}/{w.path.split('/')[-1]}:0" for w in weights]
      group.attrs["weight_names"] = [n.encode() for n in names]
      for n, w in zip(names, weights):
        group.create_dataset(n, data=np.asarray(w.numpy()))


class _Case:
  """One architecture: the Keras reference, its outputs, and files of its weights."""

  def __init__(self, arch, tmp_path):
    make_keras, self.module_cls, shape = ARCHS[arch]
    self.arch = arch
    keras.utils.set_random_seed(0)
    base = make_keras(include_top=False, weights=None, input_shape=shape)
    self.keras_base = base
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(pooled)
    self.keras_model = keras.Model(base.input, [base.output, logits])
    _randomize(self.keras_model, seed=1)
    self.images = np.random.RandomState(2).randn(2, *shape).astype(np.float32)
    feats, logits = self.keras_model.predict(self.images, verbose=0)  # jitted: faster than eager
    self.keras_features, self.keras_logits = np.asarray(feats), np.asarray(logits)

    self.files = {
      "keras3": str(tmp_path / f"{arch}.weights.h5"),
      "keras3_legacy_h5": str(tmp_path / f"{arch}_model.h5"),
      "keras2_notop": str(tmp_path / f"{arch}_notop.h5"),
      "keras2_top": str(tmp_path / f"{arch}_top.h5"),
    }
    self.keras_model.save_weights(self.files["keras3"])
    self.keras_model.save(self.files["keras3_legacy_h5"])
    _write_keras2_weights(self.files["keras2_notop"], base, arch)
    _write_keras2_weights(self.files["keras2_top"], self.keras_model, arch)

    module = self.module_cls(num_classes=NUM_CLASSES)
    self.module = module
    self.shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))

    def features_and_logits(mdl, x):
      feats = mdl.features(x)
      return feats, mdl.head(feats)

    # One compilation per architecture, reused for every imported file.
    self.forward = jax.jit(lambda v, x: module.apply(v, x, method=features_and_logits))


@pytest.fixture(scope="module", params=list(ARCHS))
def case(request, tmp_path_factory):
  return _Case(request.param, tmp_path_factory.mktemp(request.param))


def _assert_close(ours, reference):
  """Agreement to 1e-4, relative to the size of the reference values."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  scale = max(1.0, float(np.max(np.abs(reference))))
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * scale)


def test_parameter_counts_equal_keras(case):
  params, stats = dict(case.shapes["params"]), case.shapes["batch_stats"]
  head = params.pop("logits")
  trainable, statistics, total_with_2_classes = KERAS_COUNTS[case.arch]
  assert _size(params) == trainable
  assert _size(stats) == statistics
  assert _size(params) + _size(stats) + (head["kernel"].shape[0] + 1) * 2 == total_with_2_classes
  # Independently of the figures: Keras' own count of the same model (with its head).
  keras_size = lambda weights: sum(int(np.prod(w.shape)) for w in weights)
  assert _size(case.shapes["params"]) == keras_size(case.keras_model.trainable_weights)
  assert _size(stats) == keras_size(case.keras_model.non_trainable_weights)


def test_block_names_are_the_top_level_collections(case):
  names = case.module.block_names
  assert names[0] == "logits" and names[-1] == "stem"
  assert sorted(case.shapes["params"]) == sorted(names)
  assert len(set(names)) == len(names)
  assert set(case.shapes["batch_stats"]) == set(names) - {"logits"}


def test_every_relu_goes_through_activation(case):
  """As many calls of `activation` as Keras has ReLU activation layers."""
  calls = []

  def counting_relu(x):
    calls.append(1)
    return nn.relu(x)

  x = jnp.zeros((1, *case.images.shape[1:]))
  counted = case.module.clone(activation=counting_relu)
  jax.eval_shape(lambda v: counted.apply(v, x), case.shapes)
  keras_relus = [
    layer
    for layer in case.keras_base.layers
    if isinstance(layer, keras.layers.Activation) and layer.get_config()["activation"] == "relu"
  ]
  assert len(calls) == len(keras_relus) > 90


@pytest.mark.parametrize("layout", ["keras3", "keras3_legacy_h5", "keras2_top"])
def test_imported_model_matches_keras(case, layout):
  variables = import_keras_weights(case.arch, case.files[layout], num_classes=NUM_CLASSES)
  feats, logits = case.forward(variables, case.images)
  assert feats.shape == case.keras_features.shape
  _assert_close(feats, case.keras_features)
  _assert_close(logits, case.keras_logits)


def test_nested_keras_model_imports_like_the_flat_one(case, tmp_path):
  """The application used as a layer of another model (the usual fine-tuning set-up)."""
  inputs = keras.Input(case.images.shape[1:])
  pooled = keras.layers.GlobalAveragePooling2D()(case.keras_base(inputs))
  outer = keras.Model(inputs, case.keras_model.get_layer("logits")(pooled))
  flat = import_keras_weights(case.arch, case.files["keras3"], num_classes=NUM_CLASSES)
  for name in ("nested.weights.h5", "nested_model.h5"):
    path = str(tmp_path / name)
    if name.endswith(".weights.h5"):
      outer.save_weights(path)
    else:
      outer.save(path)
    nested = import_keras_weights(case.arch, path, num_classes=NUM_CLASSES)
    jax.tree.map(np.testing.assert_array_equal, nested, flat)


def test_notop_file_gets_a_seeded_head(case):
  variables = import_keras_weights(
    case.arch, case.files["keras2_notop"], seed=5, num_classes=NUM_CLASSES
  )
  feats, logits = case.forward(variables, case.images)
  _assert_close(feats, case.keras_features)
  head = variables["params"]["logits"]
  # Logits of the fresh head, by hand: global average pooling and the affine map.
  expected = case.keras_features.mean(axis=(1, 2)) @ head["kernel"] + head["bias"]
  _assert_close(logits, expected)
  same = import_keras_weights(
    case.arch, case.files["keras2_notop"], seed=5, num_classes=NUM_CLASSES
  )["params"]["logits"]
  other = import_keras_weights(
    case.arch, case.files["keras2_notop"], seed=6, num_classes=NUM_CLASSES
  )["params"]["logits"]
  np.testing.assert_array_equal(same["kernel"], head["kernel"])
  assert not np.allclose(other["kernel"], head["kernel"])
  assert head["kernel"].shape == (case.keras_features.shape[-1], NUM_CLASSES)


def test_bad_files_are_refused(case, tmp_path):
  other = "densenet121" if case.arch == "inception_v3" else "inception_v3"
  with pytest.raises(ValueError):
    import_keras_weights(other, case.files["keras3"], num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match="classes"):
    import_keras_weights(case.arch, case.files["keras3"], num_classes=NUM_CLASSES + 1)
  empty = str(tmp_path / "empty.h5")
  with h5py.File(empty, "w"):
    pass
  with pytest.raises(ValueError):
    import_keras_weights(case.arch, empty)
  # Early Keras 3 files lack the layer names (their group keys are positional): refused.
  unnamed = str(tmp_path / "unnamed.weights.h5")
  shutil.copy(case.files["keras3"], unnamed)
  with h5py.File(unnamed, "r+") as f:
    named = []
    f.visititems(lambda name, obj: named.append(obj) if "name" in obj.attrs else None)
    for obj in named:
      del obj.attrs["name"]
  with pytest.raises(ValueError, match="name"):
    import_keras_weights(case.arch, unnamed, num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match="H, W >="):
    case.module.apply({}, jnp.zeros((1, 16, 16, 3)))
