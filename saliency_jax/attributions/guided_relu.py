"""The guided ReLU of guided backpropagation (Springenberg et al., 2015)."""

import jax
import jax.numpy as jnp


@jax.custom_vjp
def guided_relu(x):
  """ReLU whose gradient passes only where the input and the incoming gradient are positive."""
  return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
  return jnp.maximum(x, 0), x


def _guided_relu_bwd(x, g):
  return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)
