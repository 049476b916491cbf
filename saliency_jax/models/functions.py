"""Plain functions over a classifier: the model contract every attribution method uses.

A classifier module in this package has
  * a field `activation` (default `nn.relu`) used for every ReLU, so that cloning it with
    `activation=guided_relu` gives the guided-backprop model with the same parameters;
  * `__call__(x, train=False) -> logits[B, K]`;
  * `features(x) -> feats[B, h, w, c]`, the output of its Grad-CAM layer, and
    `head(feats) -> logits[B, K]`, so that `head(features(x)) == __call__(x)`;
  * `block_names`: the top-level parameter collections it is made of, ordered from the logits
    layer down to the stem (what cascading randomization walks).

`ModelFunctions` is a pytree. For a Flax module bound by `model_functions(module, variables)`
the variables are its leaves and the module is static, so a jitted attribution method that takes
it as an argument compiles once per architecture and reuses the executable for every model
state (replicates, randomization steps). Functions of any other JAX model can be wrapped with
`ModelFunctions(logits_fn, ...)`; they are static and compile once per function object.
"""

from collections.abc import Callable
from typing import Any

import jax

from saliency_jax.attributions.guided_relu import guided_relu

Array = jax.Array
Fn = Callable[[Array], Array]


@jax.tree_util.register_pytree_node_class
class ModelFunctions:
  """The views of a classifier that attribution methods need.

  Attributes:
    logits_fn: images [B,H,W,C] -> logits [B,K].
    features_fn: images -> output of the Grad-CAM layer [B,h,w,c].
    head_fn: that output -> logits [B,K].
    guided_logits_fn: logits_fn with the guided ReLU.
  """

  def __init__(
    self,
    logits_fn: Fn,
    features_fn: Fn | None = None,
    head_fn: Fn | None = None,
    guided_logits_fn: Fn | None = None,
  ):
    self._fns = (logits_fn, features_fn, head_fn, guided_logits_fn)

  @property
  def logits_fn(self) -> Fn:
    return self._fns[0]

  @property
  def features_fn(self) -> Fn:
    return _required(self._fns[1], "features_fn")

  @property
  def head_fn(self) -> Fn:
    return _required(self._fns[2], "head_fn")

  @property
  def guided_logits_fn(self) -> Fn:
    return _required(self._fns[3], "guided_logits_fn")

  def tree_flatten(self):
    return (), self._fns

  @classmethod
  def tree_unflatten(cls, fns, leaves):
    del leaves
    return cls(*fns)


def _required(fn, name):
  if fn is None:
    raise ValueError(f"this model provides no {name}; pass it to ModelFunctions(...)")
  return fn


@jax.tree_util.register_pytree_node_class
class FlaxModelFunctions(ModelFunctions):
  """ModelFunctions of a Flax module with its variables as pytree leaves."""

  def __init__(self, module: Any, variables: Any):
    self.module = module
    self.variables = variables
    guided = module.clone(activation=guided_relu)
    super().__init__(
      logits_fn=lambda x: module.apply(variables, x),
      features_fn=lambda x: module.apply(variables, x, method="features"),
      head_fn=lambda f: module.apply(variables, f, method="head"),
      guided_logits_fn=lambda x: guided.apply(variables, x),
    )

  def tree_flatten(self):
    return (self.variables,), self.module

  @classmethod
  def tree_unflatten(cls, module, leaves):
    return cls(module, leaves[0])


def model_functions(module: Any, variables: Any) -> ModelFunctions:
  """Binds `variables` to `module` (inference mode) and returns its ModelFunctions."""
  return FlaxModelFunctions(module, variables)
