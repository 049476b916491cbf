"""The devices' side of map generation: meshes, the sharded jitted method, one chunk's run.

`ChunkRunner.dispatch` starts one chunk's maps: padded to a multiple of the device count, split
over a 1-D device mesh on the batch axis (`jax.jit` of a `shard_map`, so every device runs the
method on its own images and nothing is reduced across images), the padding dropped on the
way back. Methods with host-side steps (XRAI) are called eagerly on sharded inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import json
import logging
from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from saliency_jax.attributions import _execution


def batch_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = "batch") -> Mesh:
  """A 1-D mesh over `devices` (default: this host's devices) for sharding the batch axis."""
  devices = jax.local_devices() if devices is None else list(devices)
  return Mesh(np.array(devices), (axis_name,))


def map_mesh() -> Mesh:
  """All local devices on an accelerator; one device on the CPU.

  On the CPU, simulated devices share the same cores, and XLA already uses them all inside one
  computation, so splitting a batch over them buys nothing.
  """
  if jax.default_backend() == "cpu":
    return batch_mesh(jax.local_devices()[:1])
  return batch_mesh()


def method_name(method) -> str:
  return str(getattr(method, "name", type(method).__name__))


def _pad_to(array: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to `size` by repeating the last row (a valid input, dropped later)."""
  pad = size - array.shape[0]
  if pad == 0:
    return array
  return np.concatenate([array, np.repeat(array[-1:], pad, axis=0)], axis=0)


def _jitted_compute(method, settings: dict, mesh: Mesh) -> Callable:
  """jit(method.compute), sharded over `mesh` on the batch axis; cached by (method, settings,
  mesh). The model functions are an argument (a pytree whose leaves are a Flax model's
  variables), so every model state of an architecture reuses one compilation."""
  cache_key = ("generate", id(method), json.dumps(settings, sort_keys=True, default=repr), mesh)
  return _execution.cached(
    cache_key, lambda: _sharded_compute(method, settings, mesh), owner=method
  )


def _sharded_compute(method, settings: dict, mesh: Mesh) -> Callable:
  def local(model_fns, images, targets, indices, key):
    return method.compute(
      model_fns, images, targets, indices=indices, key=key, settings=settings, prepared=None
    )

  if mesh.size == 1:
    fn = jax.jit(local)
  else:
    axis = mesh.axis_names[0]
    batch, replicated = NamedSharding(mesh, P(axis)), NamedSharding(mesh, P())
    # shard_map: each device runs the method on its own images; nothing crosses images.
    fn = jax.jit(
      jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(axis), P(axis), P(axis), P()),
        out_specs=P(axis),
        check_vma=False,
      ),
      in_shardings=(replicated,) + (batch,) * 3 + (replicated,),
      out_shardings=batch,
    )
  return fn


class ChunkRunner:
  """Runs `method.compute` on one chunk, sharded over `mesh` when the method traces."""

  def __init__(self, method, model_fns, settings: dict, mesh: Mesh, key):
    if len(mesh.axis_names) != 1:
      raise ValueError(f"mesh must be 1-D (the batch axis), got axes {mesh.axis_names}")
    if any(d.process_index != jax.process_index() for d in mesh.devices.flat):
      raise ValueError(
        "mesh must hold only this host's devices: hosts split the chunks, each "
        "host's devices split a chunk's images."
      )
    self.method, self.model_fns, self.settings, self.mesh = method, model_fns, settings, mesh
    self.key = key
    self.num_devices = mesh.size
    self._batch = NamedSharding(mesh, P(mesh.axis_names[0]))
    self._replicated = NamedSharding(mesh, P())
    # Methods with host-side steps (XRAI's segmentation and region selection) cannot be traced:
    # they are called eagerly on sharded inputs, and their jitted parts follow the sharding.
    self.jitted = getattr(method, "wrap_in_jit", True)
    self._fn = _jitted_compute(method, settings, mesh) if self.jitted else None
    self._placed = None  # (model_fns, key) replicated on the mesh, once for all chunks.

  def padded_size(self, n: int) -> int:
    return -(-n // self.num_devices) * self.num_devices

  def dispatch(
    self, images: np.ndarray, targets: np.ndarray, indices: np.ndarray, prepared: Any, pad_to: int
  ) -> Callable[[], np.ndarray]:
    """Starts the maps of one chunk; returns a function that waits for them (NumPy [n,H,W]).

    A jitted method runs asynchronously on the devices, so the caller can write the previous
    chunk meanwhile.
    """
    n = images.shape[0]
    if self.jitted and prepared is None:
      size = self.padded_size(max(n, pad_to))
      args = (_pad_to(images, size), _pad_to(targets, size), _pad_to(indices, size))
      args = jax.device_put(args, self._batch)
      if self._placed is None:
        self._placed = jax.device_put((self.model_fns, self.key), self._replicated)
      fns, key = self._placed
      try:
        result = self._fn(fns, *args, key)
        return lambda: np.asarray(result)[:n]
      except jax.errors.JAXTypeError as e:  # A host-side step: fall back to eager calls.
        logging.warning(
          "%s does not trace under jit (%s); calling it eagerly. Set "
          "`wrap_in_jit = False` on the method to skip this attempt.",
          method_name(self.method),
          type(e).__name__,
        )
        self.jitted = False
    if n % self.num_devices == 0:
      images, targets, indices = jax.device_put((images, targets, indices), self._batch)
    else:  # Cannot split evenly without padding `prepared`, whose layout is the method's.
      device = self.mesh.devices.flat[0]
      images, targets, indices = jax.device_put((images, targets, indices), device)
    result = self.method.compute(
      self.model_fns,
      images,
      targets,
      indices=indices,
      key=self.key,
      settings=self.settings,
      prepared=prepared,
    )
    return lambda: np.asarray(result)
