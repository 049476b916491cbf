"""Whole Keras classifiers (InceptionV3 or DenseNet121 + GAP + Dense head) as our Flax modules.

  model = import_keras_model("replicate1.h5")      # Keras 2 full model, .keras, .weights.h5
  fns = models.model_functions(model.module, model.variables)

Files read (nothing is downloaded, TensorFlow is not needed):
  * `.h5` full models (Keras 2, or Keras 3's legacy `model.save("x.h5")`): the architecture is
    the `model_config` attribute, the weights the `model_weights` group;
  * `.keras` (Keras 3): a zip of `config.json` and `model.weights.h5`;
  * `.weights.h5` (Keras 3) and weight-only `.h5` files: no architecture is stored, so `arch`
    must be given.

The head must be what the authors (and most fine-tuning scripts) put on the application:
global average pooling, optional dropout, one Dense layer with any activation (softmax or
none), optionally an `Activation` layer. The study explains the pre-activation output (the
logits), so the Flax module ends at the Dense layer; `output_activation` records what the Keras
model applied on top. Any other head (a second Dense, max pooling, Flatten) is refused, naming
the layer, rather than imported into a different network.
"""

import dataclasses
import json
from typing import Any
import zipfile

import h5py
import numpy as np

from saliency_jax.models import keras_import

ARCHS = keras_import._ARCHS  # pylint: disable=protected-access
# A layer name only the architecture has (Keras' own names for them).
_MARKERS = {"inception_v3": "mixed10", "densenet121": "conv5_block16_concat"}
# Layers a supported head may hold besides the pooling and the Dense layer.
_HEAD_PASSTHROUGH = ("Dropout", "InputLayer", "Activation")
_MODEL_CLASSES = ("Functional", "Model", "Sequential")


@dataclasses.dataclass
class KerasModel:
  """A Keras classifier imported as our Flax module.

  Attributes:
    arch: "inception_v3" or "densenet121".
    module: the Flax module (`models.create(arch, num_classes)`), returning the logits.
    variables: its {"params", "batch_stats"}.
    num_classes: outputs of the Dense head.
    output_activation: what the Keras model applies to the logits ("softmax", "linear", ...),
      "unknown" for weight-only files.
    input_shape: (H, W, C) the Keras model was built for; None where the file does not say.
  """

  arch: str
  module: Any
  variables: dict
  num_classes: int
  output_activation: str
  input_shape: tuple[int, int, int] | None


def import_keras_model(path: str, *, arch: str | None = None) -> KerasModel:
  """Reads a whole Keras classifier (see the module docstring) into a `KerasModel`."""
  from saliency_jax import models  # pylint: disable=g-import-not-at-top

  config = read_model_config(path)
  activation, input_shape = "unknown", None
  if config is not None:
    layers = _layers(config)
    found = _detect_arch(layers, path)
    if arch is not None and arch != found:
      raise ValueError(f"{path} holds a {found} model, not {arch}.")
    arch = found
    activation = _head_activation(layers, path)
    input_shape = _input_shape(layers)
  elif arch is None:
    raise ValueError(
      f"{path} stores weights only, not the architecture: pass arch= one of {ARCHS}."
    )
  if arch not in ARCHS:
    raise ValueError(f"Unknown architecture {arch!r}; expected one of {ARCHS}.")
  num_classes = _dense_units(keras_import.read_keras_layers(path), path)
  variables = keras_import.import_keras_weights(arch, path, num_classes=num_classes)
  return KerasModel(
    arch=arch,
    module=models.create(arch, num_classes=num_classes),
    variables=variables,
    num_classes=num_classes,
    output_activation=activation,
    input_shape=input_shape,
  )


def read_model_config(path: str) -> dict | None:
  """The Keras model config (architecture) stored in `path`; None for weight-only files."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      if "config.json" not in archive.namelist():
        raise ValueError(f"{path} is a zip file without config.json: not a .keras model.")
      return json.loads(archive.read("config.json"))
  with h5py.File(path, "r") as f:
    if "model_config" not in f.attrs:
      return None
    value = f.attrs["model_config"]
  return json.loads(value.decode("utf8") if isinstance(value, bytes) else value)


def _layers(config: dict) -> list[dict]:
  """Every layer config of the model, nested models flattened (in file order)."""
  out = []
  for layer in config.get("config", {}).get("layers", []):
    if layer.get("class_name") in _MODEL_CLASSES:
      out.extend(_layers(layer))
    else:
      out.append(layer)
  return out


def _name(layer: dict) -> str:
  return layer.get("config", {}).get("name", layer.get("name", ""))


def _detect_arch(layers: list[dict], path: str) -> str:
  names = {_name(layer) for layer in layers}
  found = [arch for arch, marker in _MARKERS.items() if marker in names]
  if len(found) != 1:
    raise ValueError(
      f"{path}: not a Keras InceptionV3 or DenseNet121 classifier (no layer "
      f"named {' or '.join(_MARKERS.values())})."
    )
  return found[0]


def _head_activation(layers: list[dict], path: str) -> str:
  """The output activation of the head after the architecture's last layer."""
  marker = max(i for i, layer in enumerate(layers) if _name(layer) in _MARKERS.values())
  # DenseNet's body ends with a batch norm and ReLU after its marker.
  head = [
    layer
    for layer in layers[marker + 1 :]
    if not (
      layer["class_name"] in ("BatchNormalization", "Activation") and _name(layer) in ("bn", "relu")
    )
  ]
  kinds = [layer["class_name"] for layer in head]
  if (
    kinds.count("GlobalAveragePooling2D") != 1
    or kinds.count("Dense") != 1
    or any(k not in _HEAD_PASSTHROUGH + ("GlobalAveragePooling2D", "Dense") for k in kinds)
  ):
    raise ValueError(
      f"{path}: the head after the {layers[marker]['class_name']} body is "
      f"{[f'{k} {_name(h)!r}' for k, h in zip(kinds, head)]}; supported: "
      "GlobalAveragePooling2D, Dropout, one Dense layer (any activation)."
    )
  dense_at = kinds.index("Dense")
  if kinds.index("GlobalAveragePooling2D") > dense_at:
    raise ValueError(f"{path}: the Dense head comes before the pooling.")
  after = [
    h["config"].get("activation") for h in head[dense_at + 1 :] if h["class_name"] == "Activation"
  ]
  activation = head[dense_at]["config"].get("activation", "linear")
  if after and activation != "linear":
    raise ValueError(f"{path}: two activations after the Dense head: {activation}, {after}.")
  if len(after) > 1:
    raise ValueError(f"{path}: several Activation layers after the Dense head: {after}.")
  return str(after[0] if after else activation)


def _input_shape(layers: list[dict]) -> tuple[int, int, int] | None:
  for layer in layers:
    if layer["class_name"] == "InputLayer":
      config = layer["config"]
      shape = config.get("batch_shape") or config.get("batch_input_shape")
      if shape and len(shape) == 4 and all(s is not None for s in shape[1:]):
        return tuple(int(s) for s in shape[1:])
  return None


def _dense_units(layers: dict, path: str) -> int:
  dense = [w for w in layers.values() if [v.ndim for _, v in w] == [2, 1]]
  if len(dense) != 1:
    raise ValueError(f"{path}: a classifier has one Dense layer; this file has {len(dense)}.")
  return int(np.shape(dense[0][0][1])[1])
