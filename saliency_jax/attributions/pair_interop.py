"""Drive PAIR `saliency.core` with our ModelFunctions: the reference the tests compare with,
the baseline the benchmark times, and a way for users to compute PAIR maps of our models
(e.g. to score them with `config.study.external_maps`). Needs `pip install saliency`.
"""

import jax
import jax.numpy as jnp
import numpy as np


def pair_call_model_function(fns):
  """A PAIR `call_model_function` over `fns`: jitted JAX gradients of the target per batch.

  `call_model_args` holds "target" (the class index) and optionally "guided" (True: input
  gradients of `fns.guided_logits_fn`, for guided backprop).
  """
  from saliency import core as pair  # pylint: disable=g-import-not-at-top

  @jax.jit
  def input_grads(x, target):
    return jax.grad(lambda x: fns.logits_fn(x)[:, target].sum())(x)

  @jax.jit
  def guided_grads(x, target):
    return jax.grad(lambda x: fns.guided_logits_fn(x)[:, target].sum())(x)

  @jax.jit
  def conv_and_grads(x, target):
    feats = fns.features_fn(x)
    return feats, jax.grad(lambda f: fns.head_fn(f)[:, target].sum())(feats)

  @jax.jit
  def outputs(x, target):
    return fns.logits_fn(x)[:, target]

  def call_model_function(x_value_batch, call_model_args=None, expected_keys=None):
    target, guided = call_model_args["target"], call_model_args.get("guided", False)
    x = jnp.asarray(np.asarray(x_value_batch, np.float32))
    out = {}
    if pair.INPUT_OUTPUT_GRADIENTS in expected_keys:
      out[pair.INPUT_OUTPUT_GRADIENTS] = np.asarray(
        (guided_grads if guided else input_grads)(x, target)
      )
    if pair.CONVOLUTION_LAYER_VALUES in expected_keys:
      feats, grads = conv_and_grads(x, target)
      out[pair.CONVOLUTION_LAYER_VALUES] = np.asarray(feats)
      out[pair.CONVOLUTION_OUTPUT_GRADIENTS] = np.asarray(grads)
    if pair.OUTPUT_LAYER_VALUES in expected_keys:
      out[pair.OUTPUT_LAYER_VALUES] = np.asarray(outputs(x, target))
    return out

  return call_model_function
