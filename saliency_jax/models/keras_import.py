"""Flax variables for our InceptionV3 / DenseNet121 / ResNet50 from Keras weight files (h5py).

Two file layouts are read; nothing is downloaded:
  * the legacy HDF5 layout of Keras 2 (`model.save_weights("x.h5")`, and the ImageNet
    `*_tf_kernels[_notop].h5` files of keras.applications): attribute `layer_names` on the root
    (or on the `model_weights` group of a whole-model `.h5`), one group per layer with a
    `weight_names` attribute naming its datasets (`conv2d_1/kernel:0`, ...);
  * the Keras 3 `.weights.h5` layout: `layers/<key>/vars/<0, 1, ...>`, nested models as
    `layers/<model>/layers/...`, where <key> is the layer's class and rank in `model.layers`
    ("conv2d_7"), not its name; the name is the `name` attribute of the `vars` group (files
    without it are refused: their mapping would rest on Keras' topological layer order);
    a `.keras` file holds it as `model.weights.h5` in its zip.
Both store a layer's variables as trainable then non-trainable (kernel, bias; gamma, beta,
moving_mean, moving_variance), which is the order used where the file gives no names.

Mapping to our parameter tree:
  * DenseNet121: by Keras layer name (`densenet.keras_layer_name`); Keras 2 names with "/"
    ("conv1/conv") are read as "_" ("conv1_conv").
  * ResNet50 (the RetinaNet backbone, `resnet.ResNet`): by Keras layer name
    (`resnet.keras_layer_name`); it has no head, and any Dense layer in the file is an error.
  * InceptionV3: Keras names its layers automatically (`conv2d_N`, `batch_normalization_N`, N
    growing in creation order, with an offset when other models were built first; keras 2 counts
    from 1, keras 3 from 0). Convolutions (one 4-D kernel) and batch norms (three vectors) are
    each sorted by N and matched to `inception_v3.keras_conv_paths()`; every shape is checked.
    The file's own layer order is not used: it is Keras' topological order, not creation order.
  * The head: a Dense layer (2-D kernel + bias) is imported as "logits" when the file has one
    (it must have `num_classes` outputs); the `*_notop` files have none, and the head is then
    freshly initialized from `seed` (the model's own initializers).
Anything left over or missing is an error, never a silent partial import.
"""

import functools
import io
import re
from typing import Any
import zipfile

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.models import densenet
from saliency_jax.models import inception_v3
from saliency_jax.models import plugin

# Variable order within a layer, as Keras saves it (trainable first).
_VAR_ORDER = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")
_ARCHS = ("inception_v3", "densenet121", "resnet50")


def import_keras_weights(
  arch: str, path: str, *, seed: int = 0, num_classes: int = 2
) -> dict[str, Any]:
  """Reads a Keras weight file into {"params", "batch_stats"} for `create(arch, num_classes)`.

  Args:
    arch: "inception_v3", "densenet121" or "resnet50" (the backbone alone: variables of
      `resnet.ResNet()`, the "backbone" of `retinanet.RetinaNet`; seed and num_classes unused).
    path: a legacy `.h5` weight (or whole-model) file, a Keras 3 `.weights.h5` or `.keras` file.
    seed: PRNG seed of the head when the file has none (`*_notop` files).
    num_classes: outputs of the head.

  Returns:
    Float32 numpy variables with the structure of `module.init(...)` for the module, its input
    channels taken from the file's first convolution.
  """
  if arch not in _ARCHS:
    raise ValueError(f"Unknown architecture {arch!r}; expected one of {_ARCHS}.")
  layers = read_keras_layers(path)
  if arch == "resnet50":
    return _resnet50(layers, path)
  if arch == "inception_v3":
    module = inception_v3.InceptionV3(num_classes=num_classes)
    params, stats, used = _inception_body(layers)
    in_channels = params["stem"]["conv2d_1a_3x3"]["conv"]["kernel"].shape[2]
    feats = inception_v3.FEATURES
  else:
    module = densenet.DenseNet121(num_classes=num_classes)
    in_channels = _densenet_in_channels(layers)
    params, stats, used = _densenet_body(layers, _template(arch, num_classes, in_channels))
    feats = densenet.FEATURES
  params["logits"] = _head(layers, used, module, feats, seed=seed, num_classes=num_classes)
  leftover = sorted(set(layers) - used)
  if leftover:
    raise ValueError(
      f"{path}: {len(leftover)} layers with weights are not part of {arch} "
      f"(e.g. {leftover[:5]}); is this a weight file of another model?"
    )
  variables = {"params": params, "batch_stats": stats}
  plugin.check_structure(variables, _template(arch, num_classes, in_channels), path)
  return variables


def read_keras_layers(path: str) -> dict[str, list[tuple[str | None, np.ndarray]]]:
  """{layer name: [(variable name or None, value), ...]} of every layer with weights.

  Layer names have "/" replaced by "_"; variables are in Keras' saved order (sorted into it
  by name when the file names them).
  """
  with open_weights(path) as f:
    if "layer_names" in f.attrs or "layer_names0" in f.attrs:
      return _read_legacy(f)
    if "model_weights" in f:
      return _read_legacy(f["model_weights"])
    if "layers" in f:
      layers = {}
      _read_keras3(f["layers"], layers)
      return layers
  raise ValueError(
    f"{path} is neither a legacy Keras HDF5 weight file (no `layer_names`) nor "
    "a Keras 3 `.weights.h5` file (no `layers` group)."
  )


def open_weights(path: str) -> h5py.File:
  """The HDF5 weights of `path`: the file itself, or `model.weights.h5` inside a `.keras` zip."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      if "model.weights.h5" not in archive.namelist():
        raise ValueError(f"{path} is a zip file without model.weights.h5: not a .keras model.")
      return h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
  return h5py.File(path, "r")


def _attr_strings(group: h5py.Group, name: str) -> list[str]:
  """A string-list attribute, possibly chunked into name0, name1, ... (as Keras writes it)."""
  if name in group.attrs:
    values = list(group.attrs[name])
  else:
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
      values.extend(group.attrs[f"{name}{chunk}"])
      chunk += 1
  return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_legacy(group: h5py.Group) -> dict[str, list[tuple[str | None, np.ndarray]]]:
  layers = {}
  for layer_name in _attr_strings(group, "layer_names"):
    layer_group = group[layer_name]
    for weight_name in _attr_strings(layer_group, "weight_names"):
      # "conv2d_1/kernel:0" (keras 2), "conv1/conv/kernel:0" (keras 2 DenseNet), "conv2d/kernel"
      # (keras 3). A nested model's group holds its layers' weights under their own names.
      owner, _, var = weight_name.rpartition("/")
      owner = owner or layer_name
      if owner != layer_name and owner.startswith(layer_name + "/"):
        owner = owner[len(layer_name) + 1 :]
      var = var.split(":")[0]
      value = np.asarray(layer_group[weight_name])
      layers.setdefault(owner.replace("/", "_"), []).append((var, value))
  for name, weights in layers.items():
    names = [var for var, _ in weights]
    if all(var in _VAR_ORDER for var in names):
      weights.sort(key=lambda w: _VAR_ORDER.index(w[0]))
  return layers


def _read_keras3(group: h5py.Group, layers: dict) -> None:
  for key, layer_group in group.items():
    if "vars" in layer_group and len(layer_group["vars"]):
      variables = layer_group["vars"]
      # The group keys are positional ("conv2d_7" is the 8th Conv2D of `model.layers`), not
      # layer names; Keras records the layer's name in the group's attributes.
      if "name" not in variables.attrs:
        raise ValueError(
          f"{variables.name} does not record its layer name (an early Keras 3 "
          "file); load it in Keras and save it again with a recent version."
        )
      name = variables.attrs["name"]
      name = name.decode("utf8") if isinstance(name, bytes) else str(name)
      keys = sorted(variables, key=int)
      layers[name.replace("/", "_")] = [(None, np.asarray(variables[k])) for k in keys]
    if "layers" in layer_group:  # a nested model
      _read_keras3(layer_group["layers"], layers)


def _values(weights, names: tuple[str, ...], layer: str) -> dict[str, np.ndarray]:
  """The layer's variables as {name: float32 array}, checking their number and names."""
  if len(weights) != len(names) or any(v not in (None, n) for (v, _), n in zip(weights, names)):
    raise ValueError(
      f"Layer {layer!r} holds {[v for v, _ in weights]} "
      f"({len(weights)} variables); expected {list(names)}."
    )
  return {n: np.asarray(value, np.float32) for n, (_, value) in zip(names, weights)}


def _creation_index(name: str) -> int:
  """Keras' automatic name suffix: "conv2d" -> 0, "conv2d_17" -> 17."""
  match = re.search(r"_(\d+)$", name)
  return int(match.group(1)) if match else 0


def _inception_body(layers):
  """InceptionV3 params/batch_stats (without head) from its 94 conv2d and batch norms."""
  kinds = {name: [value.ndim for _, value in weights] for name, weights in layers.items()}
  convs = sorted((n for n, k in kinds.items() if k == [4]), key=_creation_index)
  bns = sorted((n for n, k in kinds.items() if k == [1, 1, 1]), key=_creation_index)
  paths = inception_v3.keras_conv_paths()
  if len(convs) != len(paths) or len(bns) != len(paths):
    raise ValueError(
      f"An InceptionV3 weight file has {len(paths)} bias-free convolutions and "
      f"{len(paths)} scale-free batch norms; this one has {len(convs)} and "
      f"{len(bns)}."
    )
  for found in (convs, bns):
    indices = [_creation_index(n) for n in found]
    if len(set(indices)) != len(indices):
      raise ValueError(
        "InceptionV3 layers are matched by Keras' automatic name suffixes "
        f"(conv2d_N, batch_normalization_N); these are ambiguous: {found[:5]}..."
      )
  params, stats = {}, {}
  for (block, unit), conv, bn in zip(paths, convs, bns):
    kernel = _values(layers[conv], ("kernel",), conv)["kernel"]
    norm = _values(layers[bn], ("beta", "moving_mean", "moving_variance"), bn)
    if norm["beta"].shape != kernel.shape[-1:]:
      raise ValueError(
        f"Batch norm {bn!r} has {norm['beta'].shape[0]} channels but "
        f"convolution {conv!r} has {kernel.shape[-1]}."
      )
    params.setdefault(block, {})[unit] = {"conv": {"kernel": kernel}, "bn": {"bias": norm["beta"]}}
    stats.setdefault(block, {})[unit] = {
      "bn": {"mean": norm["moving_mean"], "var": norm["moving_variance"]}
    }
  return params, stats, set(convs) | set(bns)


def _densenet_in_channels(layers) -> int:
  if "conv1_conv" not in layers:
    raise ValueError("No layer `conv1_conv` (or `conv1/conv`): not a DenseNet weight file.")
  return layers["conv1_conv"][0][1].shape[2]


def _densenet_body(layers, template):
  """DenseNet121 params/batch_stats (without head), every conv/BN looked up by Keras name."""
  params, stats, used = {}, {}, set()
  for block in densenet.DenseNet121.block_names:
    if block != "logits":
      _by_name(
        layers, template["params"][block], (block,), densenet.keras_layer_name, params, stats, used
      )
  return params, stats, used


def _resnet50(layers, path):
  """ResNet50 (no head) variables, every conv/BN looked up by Keras name."""
  from saliency_jax.models import resnet  # pylint: disable=g-import-not-at-top

  if "conv1_conv" not in layers:
    raise ValueError(f"{path}: no layer `conv1_conv`: not a ResNet50 weight file.")
  in_channels = layers["conv1_conv"][0][1].shape[2]
  template = jax.eval_shape(
    resnet.ResNet().init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, in_channels), jnp.float32)
  )
  params, stats, used = {}, {}, set()
  _by_name(layers, template["params"], (), resnet.keras_layer_name, params, stats, used)
  leftover = sorted(set(layers) - used)
  if leftover:
    raise ValueError(
      f"{path}: {len(leftover)} layers with weights are not part of ResNet50 "
      f"without top (e.g. {leftover[:5]}); is this a weight file of another "
      "model, or one with a head?"
    )
  variables = {"params": params, "batch_stats": stats}
  plugin.check_structure(variables, template, path)
  return variables


def _by_name(layers, template, path, keras_name, params, stats, used) -> None:
  """Fills params/stats for every conv and BN under `template`, named by `keras_name(path)`."""
  if "kernel" not in template and "scale" not in template:  # a module holding convs and BNs
    for key, child in template.items():
      _by_name(layers, child, path + (key,), keras_name, params, stats, used)
    return
  name = keras_name(path)
  used.add(name)
  if "kernel" in template:  # a convolution, with or without bias
    names = ("kernel", "bias") if "bias" in template else ("kernel",)
    _set(params, path, _values(_layer(layers, name), names, name))
  else:  # a batch norm
    norm = _values(_layer(layers, name), ("gamma", "beta", "moving_mean", "moving_variance"), name)
    _set(params, path, {"scale": norm["gamma"], "bias": norm["beta"]})
    _set(stats, path, {"mean": norm["moving_mean"], "var": norm["moving_variance"]})


def _layer(layers, name):
  if name not in layers:
    raise ValueError(f"The weight file has no layer {name!r}.")
  return layers[name]


def _set(tree: dict, path: tuple[str, ...], value: dict) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _head(layers, used: set, module, feats: int, *, seed: int, num_classes: int):
  """The file's Dense layer as "logits", or a fresh head from `seed` when it has none."""
  dense = [n for n, w in layers.items() if [v.ndim for _, v in w] == [2, 1]]
  if len(dense) > 1:
    raise ValueError(f"Several Dense layers in the weight file: {dense}.")
  if dense:
    values = _values(layers[dense[0]], ("kernel", "bias"), dense[0])
    if values["kernel"].shape != (feats, num_classes):
      raise ValueError(
        f"The file's head {dense[0]!r} maps {values['kernel'].shape[0]} features "
        f"to {values['kernel'].shape[1]} classes; expected {feats} -> "
        f"{num_classes} (pass num_classes={values['kernel'].shape[1]}, or use "
        "a file without head)."
      )
    used.add(dense[0])
    return values
  # Only the head is run, so only the "logits" collection is initialized.
  fresh = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1, 1, feats)), method="head")
  return jax.tree.map(lambda a: np.asarray(a, np.float32), fresh["params"]["logits"])


@functools.lru_cache(maxsize=8)
def _template(arch: str, num_classes: int, in_channels: int):
  """Shapes of `create(arch).init(...)` (traced once per signature: tracing is not free)."""
  if arch == "inception_v3":
    module, size = inception_v3.InceptionV3(num_classes=num_classes), inception_v3.MIN_SIZE
  else:
    module, size = densenet.DenseNet121(num_classes=num_classes), densenet.MIN_SIZE
  return jax.eval_shape(
    module.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, in_channels), jnp.float32)
  )
