"""The dtype a method's model passes run in (private): the setting `compute_dtype`.

"float32" (the default) runs the model as given. "bfloat16" casts the model's floating-point
variables and its inputs to bfloat16 and its outputs back to float32: forward and backward
passes run in bfloat16, while noise, interpolation, sums over samples and the grayscale step
stay float32. bfloat16 keeps float32's exponent range, so gradients neither overflow nor vanish
for being small; it keeps 8 significant bits. How much that moves the study's metrics is
measured in tests/test_attributions_precision.py and stated in docs/benchmarks.md.

"float16" is refused: its range (normal numbers 6e-5 to 65504) flushes small gradients to zero
and overflows large activations, so whole maps can become constant or NaN.
"""

from typing import Any

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")
_WHY_NOT = {
  "float16": "float16's range (6e-5 to 65504) flushes small gradients to zero and overflows "
  "large activations; use bfloat16, which keeps float32's range",
}


def check(value: Any, method: str, supported: bool = True) -> str:
  """The setting's value, checked: a ValueError naming the setting and why otherwise.

  supported: whether the method follows the setting (Guided IG and methods of your own run
  only in float32: Guided IG's path selection and your method's passes are not measured at
  lower precision).
  """
  if value == "float32" or (supported and value in COMPUTE_DTYPES):
    return value
  if value in COMPUTE_DTYPES:
    why = "this method runs its model passes in float32 only"
  else:
    why = _WHY_NOT.get(str(value), f"must be one of {COMPUTE_DTYPES}")
  raise ValueError(f"{method}: setting compute_dtype={value!r} is refused: {why}.")


def _cast_floats(tree: Any, dtype) -> Any:
  return jax.tree.map(
    lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
  )


def in_dtype(model_fns: Any, dtype: str) -> Any:
  """model_fns whose passes run in `dtype` (variables, inputs) and return float32."""
  if dtype == "float32":
    return model_fns
  from saliency_jax.models.functions import ModelFunctions  # pylint: disable=g-import-not-at-top

  dt = jnp.dtype(dtype)
  fns = _cast_floats(model_fns, dt)  # a Flax model's variables are its leaves

  def lowered(name):
    try:
      fn = getattr(fns, name)
    except ValueError:  # a view this model does not provide
      return None
    return lambda x: fn(x.astype(dt)).astype(jnp.float32)

  return ModelFunctions(
    lowered("logits_fn"), lowered("features_fn"), lowered("head_fn"), lowered("guided_logits_fn")
  )


def with_compute_dtype(impl):
  """impl(fns, settings, ...) running the model passes in settings['compute_dtype']."""

  def run(fns, s, *args):
    return impl(in_dtype(fns, s["compute_dtype"]), s, *args)

  return run
