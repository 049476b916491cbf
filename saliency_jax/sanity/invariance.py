"""Input invariance (Kindermans et al. 2019): a constant input shift the model cannot see.

`shifted_model_functions(module, variables, shift)` is the model whose first convolution's
bias is adjusted so that on the shifted input x + shift it computes exactly what the original
model computes on x: the first Conv's output on x + shift, minus its response to the constant
shift (W * shift, computed with the layer's own padding, so the adjusted bias is b - W * shift
inside the image and differs only where the zero padding meets the border). Every later layer
is untouched, so logits, features and gradients w.r.t. the input match the original model's.
A method that is input invariant gives the same map of x + shift from this model as of x from
the original one; methods with a fixed reference point (IG's black baseline) do not.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from saliency_jax.attributions.guided_relu import guided_relu
from saliency_jax.models.functions import ModelFunctions


def _corrected_first_conv(shift: float):
  """A Flax interceptor that removes the shift's response from the first nn.Conv call."""
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    if not seen and isinstance(context.module, nn.Conv) and context.method_name == "__call__":
      seen.append(True)
      x = args[0]
      # One call on [x; shift; 0] (a compact Conv may be called once per apply).
      constants = jnp.stack(
        [jnp.full(x.shape[1:], shift, x.dtype), jnp.zeros(x.shape[1:], x.dtype)]
      )
      out = next_fun(jnp.concatenate([x, constants]), *args[1:], **kwargs)
      return out[:-2] - (out[-2] - out[-1])[None]
    return next_fun(*args, **kwargs)

  return interceptor


def _apply(module, variables, shift, x, **kwargs):
  with nn.intercept_methods(_corrected_first_conv(shift)):
    return module.apply(variables, x, **kwargs)


@jax.tree_util.register_pytree_node_class
class ShiftedModelFunctions(ModelFunctions):
  """ModelFunctions of a Flax classifier with its first layer adjusted for `shift`."""

  def __init__(self, module: Any, variables: Any, shift: float):
    self.module, self.variables, self.shift = module, variables, float(shift)
    guided = module.clone(activation=guided_relu)
    super().__init__(
      logits_fn=lambda x: _apply(module, variables, self.shift, x),
      features_fn=lambda x: _apply(module, variables, self.shift, x, method="features"),
      head_fn=lambda f: module.apply(variables, f, method="head"),
      guided_logits_fn=lambda x: _apply(guided, variables, self.shift, x),
    )

  def tree_flatten(self):
    return (self.variables,), (self.module, self.shift)

  @classmethod
  def tree_unflatten(cls, aux, leaves):
    return cls(aux[0], leaves[0], aux[1])


def shifted_model_functions(module: Any, variables: Any, shift: float) -> ShiftedModelFunctions:
  return ShiftedModelFunctions(module, variables, shift)
