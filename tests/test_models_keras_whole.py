"""Whole Keras classifiers (the authors' InceptionV3 + GAP + Dense(2, softmax)) imported and
checked against Keras itself (JAX backend): logits, and GRAD / GCAM maps against PAIR
`saliency.core` driven by Keras' own gradients.

The input is small so that Keras and our port run in seconds: 107x139 gives mixed10 (the Grad-CAM
layer) a 2x3 grid (75x75, the smallest input InceptionV3 accepts, gives 1x1 and a constant map).
"""

import os

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported; no TensorFlow

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from saliency import core as pair  # noqa: E402

from saliency_jax import attributions  # noqa: E402
from saliency_jax import models  # noqa: E402
from saliency_jax.models.keras_model import import_keras_model  # noqa: E402

SHAPE = (107, 139, 3)


def _randomize(model, seed):
  """Random values for every variable, batch-norm statistics included."""
  rng = np.random.RandomState(seed)
  for w in model.weights:
    name, shape = w.path.split("/")[-1], tuple(w.shape)
    if name == "kernel":
      value = rng.randn(*shape) * np.sqrt(2.0 / int(np.prod(shape[:-1])))
    elif name in ("gamma", "moving_variance"):
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.randn(*shape) * 0.2
    w.assign(value.astype(np.float32))


class _KerasReference:
  """The authors' model in Keras, and Keras' own logits, features and gradients."""

  def __init__(self, tmp_path, head_activation="softmax"):
    keras.utils.set_random_seed(0)
    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=SHAPE)
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    dense = keras.layers.Dense(2, activation=head_activation)
    self.model = keras.Model(base.input, dense(pooled))
    _randomize(self.model, seed=1)
    # The pre-softmax output, computed by Keras: a linear copy of the Dense layer.
    linear = keras.layers.Dense(2)
    feats_in = keras.Input(base.output.shape[1:])
    self.head = keras.Model(feats_in, linear(keras.layers.GlobalAveragePooling2D()(feats_in)))
    linear.set_weights(dense.get_weights())
    self.body = keras.Model(base.input, base.output)
    self.files = {
      "h5": str(tmp_path / "model.h5"),
      "keras": str(tmp_path / "model.keras"),
      "weights": str(tmp_path / "model.weights.h5"),
    }
    self.model.save(self.files["h5"])
    self.model.save(self.files["keras"])
    self.model.save_weights(self.files["weights"])

  def _call(self, model, x):
    out, _ = model.stateless_call(
      [v.value for v in model.trainable_variables],
      [v.value for v in model.non_trainable_variables],
      x,
    )
    return out

  def logits(self, x):
    return self._call(self.head, self._call(self.body, x))

  def call_model_function(self):
    """A PAIR call_model_function whose gradients are Keras' (jax.grad through Keras)."""
    input_grads = jax.jit(
      lambda x, t: jax.grad(lambda x: self.logits(x)[:, t].sum())(x), static_argnums=1
    )

    @jax.jit
    def conv_and_grads(x, t):
      feats = self._call(self.body, x)
      return feats, jax.grad(lambda f: self._call(self.head, f)[:, t].sum())(feats)

    def cmf(x, call_model_args=None, expected_keys=None):
      t = call_model_args["target"]
      x = jnp.asarray(np.asarray(x, np.float32))
      out = {}
      if pair.INPUT_OUTPUT_GRADIENTS in expected_keys:
        out[pair.INPUT_OUTPUT_GRADIENTS] = np.asarray(input_grads(x, t))
      if pair.CONVOLUTION_LAYER_VALUES in expected_keys:
        feats, grads = conv_and_grads(x, t)
        out[pair.CONVOLUTION_LAYER_VALUES] = np.asarray(feats)
        out[pair.CONVOLUTION_OUTPUT_GRADIENTS] = np.asarray(grads)
      return out

    return cmf


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return _KerasReference(tmp_path_factory.mktemp("keras_whole"))


@pytest.fixture(scope="module")
def images():
  return np.random.RandomState(2).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)


def _close(ours, ref, tol=1e-4):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("layout", ["h5", "keras"])
def test_whole_model_logits_equal_keras(reference, images, layout):
  model = import_keras_model(reference.files[layout])
  assert (model.arch, model.num_classes, model.output_activation) == ("inception_v3", 2, "softmax")
  assert model.input_shape == SHAPE
  logits = jax.jit(model.module.apply)(model.variables, images)
  _close(logits, reference.logits(images))
  # The saved model's own output is the softmax of those logits.
  _close(jax.nn.softmax(logits), reference.model.predict(images, verbose=0))


def test_weights_only_file_needs_the_architecture(reference, images):
  with pytest.raises(ValueError, match="arch="):
    import_keras_model(reference.files["weights"])
  model = import_keras_model(reference.files["weights"], arch="inception_v3")
  assert model.output_activation == "unknown"
  _close(jax.jit(model.module.apply)(model.variables, images), reference.logits(images))
  with pytest.raises(ValueError, match="densenet121"):
    import_keras_model(reference.files["h5"], arch="densenet121")


def test_grad_and_gcam_maps_equal_pair_on_keras_gradients(reference, images):
  model = import_keras_model(reference.files["h5"])
  fns = models.model_functions(model.module, model.variables)
  # The predicted class (the study's target); for the other class Grad-CAM's ReLU can leave
  # a random-weight model's map all zero (undefined after the grayscale step).
  targets = np.asarray(jnp.argmax(reference.logits(images), -1), np.int32)
  grad = np.asarray(attributions.METHODS["GRAD"].compute(fns, images, targets))
  gcam = np.asarray(
    attributions.METHODS["GCAM"].compute(
      fns, images, targets, settings={"resize": "skimage_bilinear"}
    )
  )
  cmf = reference.call_model_function()
  for i, t in enumerate(targets):
    args = {"target": int(t)}
    ref_grad = pair.VisualizeImageGrayscale(pair.GradientSaliency().GetMask(images[i], cmf, args))
    ref_gcam = pair.VisualizeImageGrayscale(pair.GradCam().GetMask(images[i], cmf, args))
    np.testing.assert_allclose(grad[i], ref_grad, atol=2e-4)
    np.testing.assert_allclose(gcam[i], ref_gcam, atol=2e-4)
    assert np.isfinite(grad[i]).all() and np.isfinite(gcam[i]).all()
    assert ref_grad.std() > 0.05 and ref_gcam.std() > 0.05  # not constant maps


def test_other_heads_are_refused(tmp_path):
  keras.utils.set_random_seed(0)
  base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=SHAPE)
  x = keras.layers.GlobalMaxPooling2D()(base.output)
  path = str(tmp_path / "maxpool.keras")
  keras.Model(base.input, keras.layers.Dense(2)(x)).save(path)
  with pytest.raises(ValueError, match="GlobalMaxPooling2D"):
    import_keras_model(path)


def test_densenet_whole_model_with_dropout_head(tmp_path):
  """DenseNet121 (its body ends with a batch norm and ReLU after the last block) + GAP +
  Dropout + Dense(2, softmax), saved as .keras. 64x96 gives the last block a 2x3 grid, so the
  Grad-CAM map is not constant."""
  keras.utils.set_random_seed(0)
  shape = (64, 96, 3)
  base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=shape)
  x = keras.layers.Dropout(0.5)(keras.layers.GlobalAveragePooling2D()(base.output))
  model = keras.Model(base.input, keras.layers.Dense(2, activation="softmax")(x))
  _randomize(model, seed=3)
  path = str(tmp_path / "densenet.keras")
  model.save(path)
  imported = import_keras_model(path)
  assert (imported.arch, imported.output_activation, imported.input_shape) == (
    "densenet121",
    "softmax",
    shape,
  )
  images = np.random.RandomState(4).uniform(-1, 1, (2, *shape)).astype(np.float32)
  logits = jax.jit(imported.module.apply)(imported.variables, images)
  # Keras' features, the head by hand (dropout is off at inference): the pre-softmax logits.
  feats = keras.Model(base.input, base.output).predict(images, verbose=0)
  kernel, bias = model.layers[-1].get_weights()
  _close(logits, feats.mean(axis=(1, 2)) @ kernel + bias)
  _close(jax.nn.softmax(logits), model.predict(images, verbose=0))

  # Grad-CAM's layer is the body's output: our features equal Keras', and our GCAM map equals
  # PAIR's GradCam on Keras' features with the head's gradient (GAP + Dense: kernel / cells).
  fns = models.model_functions(imported.module, imported.variables)
  _close(fns.features_fn(images), feats)
  targets = np.asarray(np.argmax(logits, -1), np.int32)
  gcam = np.asarray(
    attributions.METHODS["GCAM"].compute(
      fns, images, targets, settings={"resize": "skimage_bilinear"}
    )
  )
  cells = feats.shape[1] * feats.shape[2]
  for i, t in enumerate(targets):

    def cmf(x, call_model_args=None, expected_keys=None, i=i, t=t):
      grads = np.broadcast_to(kernel[:, t] / cells, feats[i : i + 1].shape)
      return {
        pair.CONVOLUTION_LAYER_VALUES: feats[i : i + 1],
        pair.CONVOLUTION_OUTPUT_GRADIENTS: grads,
      }

    ref = pair.VisualizeImageGrayscale(pair.GradCam().GetMask(images[i], cmf, {}))
    assert ref.std() > 0.05  # not a constant map
    np.testing.assert_allclose(gcam[i], ref, atol=2e-4)
