"""Your own classifier in the study: a Flax module by import path, or only a `logits_fn`.

The protocol a Flax module may implement (each part is optional; what is missing disables only
the methods and criteria that need it, and the report says which and why):

  * `__call__(x) -> logits [B, K]` (required), x: images [B, H, W, C];
  * Grad-CAM (GCAM, GGCAM): methods `features(x) -> [B, h, w, c]` and `head(feats) -> logits`,
    or the name of the layer (submodule path, "/" between levels: "backbone/layer4") given as
    `gradcam_layer`; the logits must depend on the input only through that layer's output
    (checked when the model is bound: a skip connection around it is an error);
  * guided backpropagation (GBP, GGCAM): a field `activation` used for every ReLU (the module is
    cloned with `activation=guided_relu`);
  * cascading / independent randomization and the untrained-model baseline: `block_names`,
    the top-level parameter collections from the logits layer down to the stem, or the same
    list given as `blocks`.

`resolve(spec, image_shape)` turns a `config.models` entry into a `PluginModel`:

  dict(name="M1", module="my_pkg.nets:ResNet18", kwargs=dict(num_classes=2),
       weights="ckpt/", gradcam_layer="layer4", blocks=("head", "layer4", ...))
  dict(name="A1", keras_model="replicate1.h5")   # whole Keras InceptionV3 / DenseNet121
  dict(name="A1", arch="inception_v3", weights="replicate1.weights.h5")

Weights: an orbax checkpoint directory (`ocp.StandardCheckpointer().save(path, variables)`), a
Flax msgpack file (`flax.serialization.to_bytes(variables)`), or a Keras file (for the
package's InceptionV3 / DenseNet121). Their structure is checked against the module's.
"""

from collections.abc import Callable, Mapping
import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attributions.guided_relu import guided_relu
from saliency_jax.import_path import load_object
from saliency_jax.models.functions import model_functions
from saliency_jax.models.functions import ModelFunctions

# What the protocol provides, and the methods/criteria that need it.
GRADCAM = "gradcam"
GUIDED = "guided"
BLOCKS = "blocks"
NEEDS = {
  GRADCAM: ("GCAM", "GGCAM"),
  GUIDED: ("GBP", "GGCAM"),
  BLOCKS: (
    "cascading randomization",
    "independent randomization",
    "untrained-model utility baseline",
  ),
}
# The built-in methods that need more than logits_fn.
METHOD_NEEDS = {"GCAM": (GRADCAM,), "GBP": (GUIDED,), "GGCAM": (GRADCAM, GUIDED)}
_SPEC_KEYS = {
  "name",
  "arch",
  "module",
  "kwargs",
  "weights",
  "keras_model",
  "gradcam_layer",
  "blocks",
  "seed",
  "style",
}


@dataclasses.dataclass
class PluginModel:
  """A classifier as the study uses it.

  Attributes:
    name: its name in the study (A1, M1, ...).
    arch: what replicates share (repeatability) and differ in (reproducibility).
    module: the Flax module, or None for a prediction-only model.
    variables: its variables (None for a prediction-only model).
    block_names: the cascading order, () when unknown.
    bind: variables -> ModelFunctions (the study binds every randomized state).
    lacks: {GRADCAM | GUIDED | BLOCKS: why it is missing}.
  """

  name: str
  arch: str
  module: Any
  variables: Any
  block_names: tuple[str, ...]
  bind: Callable[[Any], ModelFunctions]
  lacks: dict[str, str] = dataclasses.field(default_factory=dict)

  def functions(self) -> ModelFunctions:
    return self.bind(self.variables)

  def skipped(self) -> list[tuple[str, str]]:
    """[(method or criterion, why)] of what this model cannot give."""
    return [
      (what, f"{self.name}: {why}") for part, why in self.lacks.items() for what in NEEDS[part]
    ]


def prediction_only(
  name: str,
  logits_fn: Callable,
  *,
  features_fn: Callable | None = None,
  head_fn: Callable | None = None,
  guided_logits_fn: Callable | None = None,
  arch: str | None = None,
) -> PluginModel:
  """A model known only by its functions (any JAX classifier): no randomization criteria."""
  if (features_fn is None) != (head_fn is None):
    raise ValueError("Grad-CAM needs both features_fn and head_fn (or neither).")
  fns = ModelFunctions(logits_fn, features_fn, head_fn, guided_logits_fn)
  lacks = {BLOCKS: "only its functions are known (no named blocks to re-initialize)"}
  if features_fn is None:
    lacks[GRADCAM] = "no features_fn/head_fn (the Grad-CAM split) was given"
  if guided_logits_fn is None:
    lacks[GUIDED] = "no guided_logits_fn was given"
  return PluginModel(
    name=name,
    arch=arch or name,
    module=None,
    variables=None,
    block_names=(),
    bind=lambda variables: fns,
    lacks=lacks,
  )


def from_flax(
  name: str,
  module: nn.Module,
  variables: Any,
  image_shape: tuple[int, ...],
  *,
  gradcam_layer: str | None = None,
  blocks: tuple[str, ...] | None = None,
  arch: str | None = None,
) -> PluginModel:
  """A Flax module and its variables; see the module docstring for the protocol."""
  image_shape = tuple(int(s) for s in image_shape)
  has_split = callable(getattr(module, "features", None)) and callable(
    getattr(module, "head", None)
  )
  lacks = {}
  if gradcam_layer:
    _check_split(module, variables, gradcam_layer, image_shape)
  elif not has_split:
    lacks[GRADCAM] = (
      f"{type(module).__name__} has no `features`/`head` methods and no gradcam_layer was named"
    )
  guided = "activation" in {f.name for f in dataclasses.fields(module)}
  if not guided:
    lacks[GUIDED] = f"{type(module).__name__} has no `activation` field for the guided ReLU"
  block_names = (
    tuple(blocks) if blocks is not None else tuple(getattr(module, "block_names", ()) or ())
  )
  if not block_names:
    lacks[BLOCKS] = f"{type(module).__name__} has no `block_names` and no blocks were given"
  else:
    top = set(variables.get("params", {}))
    unknown = [b for b in block_names if b not in top]
    if unknown:
      raise ValueError(
        f"blocks {unknown} of {name} are not top-level parameter collections "
        f"of {type(module).__name__}; those are {sorted(top)}."
      )

  if has_split and not gradcam_layer and guided:
    bind = functools.partial(model_functions, module)
  else:
    bind = functools.partial(
      _FlaxPluginFunctions,
      module,
      layer=gradcam_layer or None,
      image_shape=image_shape,
      has_split=has_split,
      guided=guided,
    )
  return PluginModel(
    name=name,
    arch=arch or type(module).__name__,
    module=module,
    variables=variables,
    block_names=block_names,
    bind=bind,
    lacks=lacks,
  )


@jax.tree_util.register_pytree_node_class
class _FlaxPluginFunctions(ModelFunctions):
  """ModelFunctions of a Flax module that implements part of the protocol; the variables are
  its pytree leaves, so one compilation serves every model state (randomization steps)."""

  def __init__(self, module, variables, *, layer, image_shape, has_split, guided):
    self.static = (module, layer, image_shape, has_split, guided)
    self.variables = variables
    features_fn = head_fn = guided_fn = None
    if layer:
      features_fn, head_fn = _layer_functions(module, variables, layer, image_shape)
    elif has_split:
      features_fn = lambda x: module.apply(variables, x, method="features")
      head_fn = lambda f: module.apply(variables, f, method="head")
    if guided:
      guided_module = module.clone(activation=guided_relu)
      guided_fn = lambda x: guided_module.apply(variables, x)
    super().__init__(lambda x: module.apply(variables, x), features_fn, head_fn, guided_fn)

  def tree_flatten(self):
    return (self.variables,), self.static

  @classmethod
  def tree_unflatten(cls, static, leaves):
    module, layer, image_shape, has_split, guided = static
    return cls(
      module, leaves[0], layer=layer, image_shape=image_shape, has_split=has_split, guided=guided
    )


def _is_layer(layer: str):
  return lambda mdl, method_name: method_name == "__call__" and "/".join(mdl.scope.path) == layer


def _layer_functions(module, variables, layer: str, image_shape):
  """(features_fn, head_fn) split at the submodule `layer`: the features are its output, and
  the head runs the model with that output put in its place."""
  is_layer = _is_layer(layer)

  def features_fn(x):
    _, state = module.apply(variables, x, capture_intermediates=is_layer, mutable=["intermediates"])
    found = _find_capture(state.get("intermediates", {}), layer.split("/"))
    if found is None:
      raise ValueError(
        f"gradcam_layer {layer!r} is not a submodule called by {type(module).__name__}."
      )
    return found

  def head_fn(feats, x=None):
    def intercept(next_fun, args, kwargs, context):
      if is_layer(context.module, context.method_name):
        return feats
      return next_fun(*args, **kwargs)

    if x is None:  # the rest of the model does not need the input (checked by _check_split)
      x = jnp.zeros((feats.shape[0], *image_shape), jnp.float32)
    with nn.intercept_methods(intercept):
      return module.apply(variables, x)

  return features_fn, head_fn


def _check_split(module, variables, layer: str, image_shape) -> None:
  """The logits must depend on the input only through `layer` (checked on random inputs)."""
  features_fn, head_fn = _layer_functions(module, variables, layer, image_shape)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, *image_shape)), jnp.float32)
  feats = features_fn(x)
  if feats.ndim != 4:
    raise ValueError(
      f"gradcam_layer {layer!r} outputs shape {feats.shape}; Grad-CAM needs [B, h, w, c]."
    )
  logits = module.apply(variables, x)
  if not (
    np.allclose(head_fn(feats), logits, rtol=1e-4, atol=1e-5)
    and np.allclose(head_fn(feats, x), logits, rtol=1e-4, atol=1e-5)
  ):
    raise ValueError(
      f"The logits of {type(module).__name__} depend on the input other than "
      f"through gradcam_layer {layer!r} (a skip connection around it?); name "
      "a layer every path to the logits goes through."
    )


def _find_capture(tree, path):
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree.get("__call__", (None,))[0] if isinstance(tree, Mapping) else None


# ---------------------------------------------------------------------------------------------
# Import paths and weights.


def load_variables(path: str, template: Any) -> Any:
  """Variables from an orbax checkpoint directory or a Flax msgpack file, shaped as `template`
  (the module's `init` variables or their `jax.eval_shape`)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"weights {path!r} do not exist.")
  if os.path.isdir(path):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
  else:
    from flax import serialization  # pylint: disable=g-import-not-at-top

    with open(path, "rb") as f:
      try:
        restored = serialization.msgpack_restore(f.read())
      except Exception as e:  # msgpack raises its own error types
        raise ValueError(
          f"weights {path!r} are neither an orbax checkpoint directory nor a "
          f"Flax msgpack file ({e})."
        ) from None
  restored = jax.tree.map(np.asarray, restored)
  check_structure(restored, template, path)
  return restored


def check_structure(variables: Any, template: Any, what: str) -> None:
  """A clear error where loaded `variables` differ from the module's `template` in structure
  or shapes (`what`: the file they came from)."""

  def shapes(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in flat}

  got, want = shapes(variables), shapes(template)
  if got != want:
    wrong = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
    raise ValueError(
      f"{what}: the variables do not fit the module at {wrong[:5]} "
      f"({len(wrong)} mismatches; e.g. file {got.get(wrong[0])} vs module "
      f"{want.get(wrong[0])})."
    )


def _is_keras_file(path: str) -> bool:
  return str(path).endswith((".h5", ".keras"))


def resolve(
  spec: Mapping[str, Any], image_shape: tuple[int, int, int], num_classes: int = 2
) -> tuple[Any, Any | None, dict]:
  """A `config.models` entry -> (module, variables or None: train it, extras for `from_flax`).

  Entries name a registered `arch`, a `module` import path, or a whole `keras_model` file;
  `weights` loads trained variables (no training).
  """
  from saliency_jax import models  # pylint: disable=g-import-not-at-top

  spec = dict(spec)
  unknown = sorted(set(spec) - _SPEC_KEYS)
  if unknown:
    raise ValueError(
      f"config.models entry {spec.get('name')!r}: unknown fields {unknown}; "
      f"known: {sorted(_SPEC_KEYS)}."
    )
  given = [k for k in ("arch", "module", "keras_model") if spec.get(k)]
  if len(given) != 1:
    raise ValueError(
      f"config.models entry {spec.get('name')!r} needs exactly one of arch, "
      f"module, keras_model; got {given or 'none'}."
    )
  extras = {
    "gradcam_layer": spec.get("gradcam_layer") or None,
    "blocks": tuple(spec["blocks"]) if spec.get("blocks") else None,
  }
  kwargs = dict(spec.get("kwargs") or {})
  if spec.get("keras_model"):
    keras = models.import_keras_model(spec["keras_model"])
    return keras.module, keras.variables, dict(extras, arch=keras.arch)
  if spec.get("arch"):
    module = models.create(spec["arch"], num_classes=num_classes, **kwargs)
    extras["arch"] = spec["arch"]
  else:
    cls = load_object(spec["module"], f"config.models[{spec.get('name')!r}].module")
    module = cls(**kwargs)
    extras["arch"] = spec["module"]
  weights = spec.get("weights")
  if not weights:
    return module, None, extras
  if _is_keras_file(weights):
    if spec.get("arch") not in ("inception_v3", "densenet121"):
      raise ValueError(
        f"config.models entry {spec.get('name')!r}: Keras weights fit only "
        "arch inception_v3 or densenet121."
      )
    return (
      module,
      models.import_keras_weights(spec["arch"], weights, num_classes=num_classes),
      extras,
    )
  template = jax.eval_shape(
    module.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32)
  )
  return module, load_variables(weights, template), extras
