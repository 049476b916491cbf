"""How many model gradients fit on the device at once (private): `max_grads_in_flight="auto"`.

  grads_in_flight(setting, model_fns, images_shape) -> int

A positive integer setting is used as given (the user's choice wins). "auto" (the default; 0
in the config, an integer field) is the
largest power of two, at most DEFAULT_MAX_GRADS_IN_FLIGHT, whose estimated memory fits in
MEMORY_MARGIN of the device's free memory (`bytes_limit - bytes_in_use` of every local device's
`memory_stats()`, the smallest). The estimate is XLA's own: the compiled memory of one target
gradient of `model_fns.logits_fn` at a batch of 1 and of 2 images (`memory_analysis()`), whose
difference is the memory of one more gradient in flight and whose rest (parameters, workspace)
is paid once; plus CHUNK_COPIES copies of the call's images (images, noise, sums, maps).
A backend that reports no memory statistics (the CPU) keeps DEFAULT_MAX_GRADS_IN_FLIGHT, and
its own plan (`_execution.make_compute`).

Powers of two keep the number of compilations small (every value is one compiled program).
"""

import logging
import math
from typing import Any

import jax
import jax.numpy as jnp

from saliency_jax.attributions import _execution

AUTO = "auto"
# Fraction of the free memory the estimate may use: XLA's buffers of the whole method (noise,
# interpolated inputs, the one-hot sums) and the allocator's fragmentation take the rest.
MEMORY_MARGIN = 0.7
# Copies of the call's images [B,H,W,C] float32 held beside the gradients in flight.
CHUNK_COPIES = 4


def free_bytes() -> int | None:
  """The smallest free memory (bytes_limit - bytes_in_use) over this host's devices; None when
  the backend reports no statistics (the CPU)."""
  free = []
  for device in jax.local_devices():
    stats = device.memory_stats()
    if not stats or "bytes_limit" not in stats:
      return None
    free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
  return min(free)


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def _compiled_bytes(model_fns: Any, image_shape: tuple[int, ...], batch: int) -> int:
  """XLA's memory of one target gradient of a batch: arguments, outputs and temporaries."""
  from saliency_jax.attributions import _engine  # pylint: disable=g-import-not-at-top

  def gradient(fns, images, targets):
    return _engine.target_gradients(fns.logits_fn)(images, targets)

  images = jax.ShapeDtypeStruct((batch,) + tuple(image_shape), jnp.float32)
  targets = jax.ShapeDtypeStruct((batch,), jnp.int32)
  stats = jax.jit(gradient).lower(_abstract(model_fns), images, targets).compile()
  stats = stats.memory_analysis()
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def gradient_memory(model_fns: Any, image_shape: tuple[int, ...]) -> tuple[int, int]:
  """(bytes per gradient in flight, bytes paid once) of model_fns' gradient on images of
  `image_shape` (H, W, C); compiled once per architecture, variables' shapes and image shape."""
  image_shape = tuple(int(v) for v in image_shape)
  leaves = jax.tree.leaves(model_fns)
  key = (
    "gradient_memory",
    jax.tree.structure(model_fns),
    tuple((jnp.shape(a), str(jnp.result_type(a))) for a in leaves),
    image_shape,
  )

  def build():
    one = _compiled_bytes(model_fns, image_shape, 1)
    two = _compiled_bytes(model_fns, image_shape, 2)
    per_gradient = max(two - one, 1)
    return per_gradient, max(one - per_gradient, 0)

  return _execution.cached(key, build)


def grads_in_flight(setting: Any, model_fns: Any, images_shape: tuple[int, ...]) -> int:
  """The gradients a call on images of `images_shape` [B,H,W,C] evaluates at once."""
  if setting is None:
    return _execution.DEFAULT_MAX_GRADS_IN_FLIGHT
  if setting != AUTO and int(setting) != 0:
    return int(setting)
  free = free_bytes()
  if free is None:
    return _execution.DEFAULT_MAX_GRADS_IN_FLIGHT
  try:
    per_gradient, once = gradient_memory(model_fns, images_shape[1:])
  except AttributeError as e:  # model functions without a logits_fn to measure
    logging.warning("max_grads_in_flight='auto': no estimate (%s); using the default.", e)
    return _execution.DEFAULT_MAX_GRADS_IN_FLIGHT
  chunk = CHUNK_COPIES * 4 * math.prod(int(v) for v in images_shape)
  room = MEMORY_MARGIN * free - once - chunk
  fits = int(room // per_gradient)
  if fits < 1:
    raise MemoryError(
      f"max_grads_in_flight='auto': not even one model gradient fits in the device's free "
      f"memory ({free / 2**20:.0f} MiB free; one gradient about {per_gradient / 2**20:.0f} MiB, "
      f"parameters and workspace {once / 2**20:.0f} MiB, a chunk of {images_shape[0]} images "
      f"{chunk / 2**20:.0f} MiB). Use smaller chunks (study.chunk_size) or smaller images."
    )
  return min(_execution.DEFAULT_MAX_GRADS_IN_FLIGHT, 2 ** int(math.log2(fits)))


def fitted(settings: dict, model_fns: Any, images_shape: tuple[int, ...]) -> dict:
  """settings with max_grads_in_flight resolved to a number (see `grads_in_flight`)."""
  if "max_grads_in_flight" not in settings:
    return settings
  value = grads_in_flight(settings["max_grads_in_flight"], model_fns, images_shape)
  return {**settings, "max_grads_in_flight": value}
