"""Flax classifiers and the U-Net of the study, behind a name registry.

  module = models.create("small_vgg", num_classes=2)
  variables = models.init_variables(module, jax.random.key(0), (64, 64, 1))
  fns = models.model_functions(module, variables)   # logits_fn, features_fn, head_fn, guided

The paper's models ("inception_v3", "densenet121") and the Keras weight import are imported
only when asked for, so the small models work without them.
"""

import functools
import importlib
from typing import Any

import jax
import jax.numpy as jnp

from saliency_jax.models.functions import model_functions
from saliency_jax.models.functions import ModelFunctions

__all__ = [
  "MODEL_NAMES",
  "ModelFunctions",
  "create",
  "import_keras_model",
  "import_keras_weights",
  "init_variables",
  "model_functions",
]

# name -> (module path, class name); imported on first use.
_REGISTRY: dict[str, tuple[str, str]] = {
  "small_vgg": ("saliency_jax.models.small_cnn", "SmallVGG"),
  "small_densenet": ("saliency_jax.models.small_cnn", "SmallDenseNet"),
  "unet": ("saliency_jax.models.unet", "UNet"),
  "inception_v3": ("saliency_jax.models.inception_v3", "InceptionV3"),
  "densenet121": ("saliency_jax.models.densenet", "DenseNet121"),
  "retinanet": ("saliency_jax.models.retinanet", "RetinaNet"),
}
MODEL_NAMES = tuple(_REGISTRY)


def create(name: str, num_classes: int = 2, **kwargs: Any):
  """Returns the Flax module registered as `name`, built with `num_classes` and `kwargs`.

  The U-Net predicts a single foreground logit per pixel and the RetinaNet detects one
  foreground class; they take no `num_classes` other than 1 (any other value is an error,
  rather than silently ignored).
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}.")
  module_path, class_name = _REGISTRY[name]
  cls = getattr(importlib.import_module(module_path), class_name)
  if name in ("unet", "retinanet"):
    if num_classes not in (1, 2):
      # 2 is accepted because it is the registry-wide default; these have one foreground class.
      raise ValueError(f"The {name} predicts one foreground logit; got num_classes={num_classes}.")
    return cls(**kwargs)
  return cls(num_classes=num_classes, **kwargs)


def init_variables(module: Any, key: jax.Array, image_shape: tuple[int, int, int]) -> dict:
  """Initializes `module` for images of shape (H, W, C): {"params", "batch_stats"?}.

  The variables are built with a batch of one zero image in inference mode, so they do not
  depend on any data.
  """
  if len(image_shape) != 3:
    raise ValueError(f"image_shape must be (H, W, C); got {image_shape}.")
  return dict(_init(module, key, tuple(image_shape)))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(module: Any, key: jax.Array, image_shape: tuple[int, int, int]) -> dict:
  # Modules are hashable by their fields: one compilation per model and image shape.
  return module.init(key, jnp.zeros((1, *image_shape), jnp.float32))


def import_keras_weights(arch: str, path: str, *, seed: int = 0, num_classes: int = 2):
  """Reads Keras-application weights (legacy *_notop.h5 or Keras 3 .weights.h5) for `arch`
  ("inception_v3", "densenet121", or "resnet50": the RetinaNet backbone).

  See `saliency_jax.models.keras_import.import_keras_weights`; imported on first use so that
  Keras and h5py are only needed by those who import weights.
  """
  keras_import = importlib.import_module("saliency_jax.models.keras_import")
  return keras_import.import_keras_weights(arch, path, seed=seed, num_classes=num_classes)


def import_keras_model(path: str, *, arch: str | None = None):
  """A whole Keras InceptionV3/DenseNet121 classifier (.h5, .keras, .weights.h5) as our module
  and variables; see `saliency_jax.models.keras_model.import_keras_model`."""
  keras_model = importlib.import_module("saliency_jax.models.keras_model")
  return keras_model.import_keras_model(path, arch=arch)
