"""Maps for a whole dataset: chunked, sharded over devices and hosts, resumable.

  generate_maps(path, method, model_fns, MapInputs(images, targets, indices, ids), key=key,
                settings=settings, plan=MapPlan(chunk_size=64))

fills a `MapStore` chunk by chunk with `method.compute` (the MapMethod contract of
saliency_jax.attributions). Each chunk runs sharded over this host's devices (`runner`). Hosts
split the chunks: host p computes and writes chunks i with i % process_count == p. The
method folds its noise key with each image's dataset index, so a map does not depend on the
chunk size, the number of devices or the number of hosts.

Pipelining: the devices compute chunk i while the host writes chunk i-1 to disk.

Memory, whatever the dataset size: on the host one chunk of images being loaded and at most two
chunks of maps (the one being written, the one in flight); on the devices one chunk of images
and maps plus what the method holds in flight (its in-flight-gradients setting).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from saliency_jax.maps.prepared import PreparedCache
from saliency_jax.maps.runner import ChunkRunner
from saliency_jax.maps.runner import map_mesh
from saliency_jax.maps.runner import method_name
from saliency_jax.maps.store import MapStore

# Settings that change how maps are computed (memory, parallelism) but not the maps: a job may
# resume with other values, e.g. a smaller gradient cap on a smaller device.
_SETTINGS_NOT_CHANGING_MAPS = ("max_grads_in_flight", "workers")

# A prepared-data provider: (start, stop, images[start:stop]) -> method.prepare's output.
PreparedFn = Callable[[int, int, np.ndarray], Any]


def _num_images(images) -> int:
  return int(images.shape[0]) if hasattr(images, "shape") else len(images)


def _load_images(images, start: int, stop: int) -> np.ndarray:
  """Images [start, stop) as float32 NumPy: a slice of an array, or stacked sequence items."""
  if hasattr(images, "shape"):
    batch = images[start:stop]
  else:
    batch = np.stack([np.asarray(images[i]) for i in range(start, stop)])
  batch = np.asarray(batch, np.float32)
  if batch.ndim != 4 or batch.shape[0] != stop - start:
    raise ValueError(
      f"images[{start}:{stop}] must be [B,H,W,C] with B={stop - start}, got shape {batch.shape}"
    )
  return batch


def _first_image_shape(images) -> tuple[int, ...]:
  return tuple(images.shape[1:]) if hasattr(images, "shape") else np.shape(images[0])


def _key_data(key) -> list:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key).tolist()


@dataclasses.dataclass(frozen=True)
class MapInputs:
  """What to explain.

  images: float32 [N,H,W,C], as a NumPy/JAX array or any random-access source: an object with
    `shape` sliced as `images[start:stop]`, or a sequence of [H,W,C] items (`len` and
    `images[i]`). Only one chunk of images is loaded at a time.
  targets: int [N], the class each map explains.
  indices: int [N], the images' dataset indices (noise keys are folded with them); default
    0..N-1.
  ids: str [N], image ids stored with the maps; default the indices.
  """

  images: Any
  targets: Any
  indices: Any = None
  ids: Any = None


@dataclasses.dataclass(frozen=True)
class MapPlan:
  """How to compute and store the maps.

  chunk_size: maps per chunk (the unit of writing, resuming and sharding). On several devices,
    a multiple of the device count wastes no padding.
  dtype: stored dtype, "float32" or "float16" (readers return float32 either way).
  mesh: a 1-D mesh over this host's devices; default `map_mesh()`.
  prepared: for methods with `prepare` (XRAI): a callable (start, stop, images) returning the
    prepared data of images [start, stop); default: `method.prepare(images, settings)`.
  prepared_dir: if given (and `prepared` is not), `method.prepare`'s results are cached there
    per chunk and reused by later calls with the same images, chunk size and settings, e.g.
    for the other model states of a study.
  metadata: extra JSON-serializable description kept in the store; a reopened store must
    match it (method name, settings and key are always recorded).
  progress: show a progress bar (host 0 only).
  process_index, process_count: this host's share of the chunks; default from JAX.
  on_chunk: called as on_chunk(chunk_index, seconds) after each chunk is written.
  replace: an existing store at `path` of other maps (another description, other images) is
    deleted and computed anew, instead of being an error (with several JAX processes, host 0
    replaces it and the others wait).
  """

  chunk_size: int
  dtype: str = "float32"
  mesh: Mesh | None = None
  prepared: PreparedFn | None = None
  prepared_dir: str | None = None
  metadata: dict | None = None
  progress: bool = True
  process_index: int | None = None
  process_count: int | None = None
  on_chunk: Callable[[int, float], None] | None = None
  replace: bool = False


def generate_maps(
  path: str,
  method,
  model_fns,
  inputs: MapInputs,
  *,
  key,
  settings: dict | None = None,
  plan: MapPlan,
) -> MapStore:
  """Computes the maps of `inputs` into the store at `path`, only the chunks not there yet.

  Args:
    path: the store's directory (one per model state and method).
    method: a MapMethod (`compute`, `prepare` or None, `default_settings`, optional `name`
      and `wrap_in_jit`).
    model_fns: the model's ModelFunctions.
    inputs: the images, their targets, dataset indices and ids (`MapInputs`).
    key: the method's noise key (the same for every chunk; per-image keys come from `indices`).
    settings: the method's settings; default `method.default_settings`.
    plan: chunking, stored dtype, devices, hosts, prepared data, progress (`MapPlan`).

  Returns:
    The store. It is complete once every host has finished; with several JAX processes, this
    function waits for all of them before returning.
  """
  if settings is None:
    settings = method.default_settings
  settings = settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)
  targets, indices, image_shape = _checked_inputs(inputs)
  process_index, process_count = _host_share(plan)
  jax_hosts = plan.process_index is None and plan.process_count is None and process_count > 1
  if plan.replace and jax_hosts:
    # One host deletes a store of other maps; the others open the new one after it.
    from saliency_jax import multihost  # pylint: disable=g-import-not-at-top

    if process_index == 0:
      _open_store(path, method, settings, key, inputs, indices, image_shape, plan)
    multihost.barrier(f"generate_maps store:{path}")
    plan = dataclasses.replace(plan, replace=False)
  store = _open_store(path, method, settings, key, inputs, indices, image_shape, plan)
  # Verified: a chunk truncated, corrupted or replaced since it was written is recomputed.
  todo = store.missing_chunks(process_index, process_count, verify=True)
  if todo:
    runner = ChunkRunner(method, model_fns, settings, plan.mesh or map_mesh(), key)
    _compute_chunks(
      store,
      todo,
      runner,
      inputs.images,
      targets,
      indices,
      _prepared_source(method, settings, plan),
      progress=plan.progress and process_index == 0,
      on_chunk=plan.on_chunk,
    )
  if jax_hosts:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(f"generate_maps:{path}")
  return store


def _checked_inputs(inputs: MapInputs) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
  """(targets int32 [N], indices int32 [N], image shape (H, W, C)), checked."""
  num_maps = _num_images(inputs.images)
  targets = np.asarray(inputs.targets).astype(np.int32)
  indices = (np.arange(num_maps) if inputs.indices is None else np.asarray(inputs.indices)).astype(
    np.int32
  )
  if targets.shape != (num_maps,) or indices.shape != (num_maps,):
    raise ValueError(
      f"targets {targets.shape} and indices {indices.shape} must have shape ({num_maps},)"
    )
  if inputs.ids is not None and len(inputs.ids) != num_maps:
    raise ValueError(f"ids has length {len(inputs.ids)}, expected {num_maps}")
  image_shape = _first_image_shape(inputs.images)
  if len(image_shape) != 3:
    raise ValueError(f"images must be [N,H,W,C], got an image of shape {image_shape}")
  return targets, indices, image_shape


def _host_share(plan: MapPlan) -> tuple[int, int]:
  """(this host's index, the number of hosts) splitting the chunks."""
  process_index = jax.process_index() if plan.process_index is None else int(plan.process_index)
  process_count = jax.process_count() if plan.process_count is None else int(plan.process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def _recorded_settings(settings: dict) -> dict:
  recorded = {k: v for k, v in settings.items() if k not in _SETTINGS_NOT_CHANGING_MAPS}
  # float32 is recorded by omission, so stores written before the setting existed match.
  if recorded.get("compute_dtype") == "float32":
    del recorded["compute_dtype"]
  return recorded


def _open_store(
  path: str,
  method,
  settings: dict,
  key,
  inputs: MapInputs,
  indices: np.ndarray,
  image_shape: tuple[int, ...],
  plan: MapPlan,
) -> MapStore:
  """Creates the store, or reopens it checking that it describes the same maps."""
  full_metadata = {
    "method": method_name(method),
    "settings": _recorded_settings(settings),
    "key": _key_data(key),
  }
  full_metadata.update(plan.metadata or {})
  full_metadata = json.loads(json.dumps(full_metadata, sort_keys=True, default=repr))
  return MapStore.create_or_open(
    path,
    num_maps=len(indices),
    map_shape=image_shape[:2],
    chunk_size=plan.chunk_size,
    dtype=plan.dtype,
    ids=inputs.ids,
    indices=indices,
    metadata=full_metadata,
    replace=plan.replace,
  )


def _prepared_source(method, settings: dict, plan: MapPlan) -> Callable | None:
  """(start, stop, ids, images) -> the method's prepared data of one chunk; None for a method
  without `prepare`."""
  prepare = getattr(method, "prepare", None)
  if plan.prepared is not None:
    return lambda start, stop, ids, images: plan.prepared(start, stop, images)
  if prepare is None:
    return None
  if plan.prepared_dir is None:
    return lambda start, stop, ids, images: prepare(images, settings)
  cache = PreparedCache(plan.prepared_dir, method_name(method), _recorded_settings(settings))
  return lambda start, stop, ids, images: cache.get(
    start, stop, ids, images, lambda x: prepare(x, settings)
  )


def _compute_chunks(
  store: MapStore,
  todo: list[int],
  runner: ChunkRunner,
  images,
  targets: np.ndarray,
  indices: np.ndarray,
  prepared: Callable | None,
  *,
  progress: bool,
  on_chunk: Callable[[int, float], None] | None,
) -> None:
  """Computes and writes the chunks `todo`, one in flight on the devices while the previous one
  is written: at most two chunks of maps and one of images on the host."""
  name = method_name(runner.method)
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm.tqdm(total=len(todo), desc=f"{name} maps", unit="chunk")

  def finish(i, wait, began):
    chunk_maps = wait()
    start, stop = store.chunk_bounds(i)
    if chunk_maps.shape != (stop - start,) + store.map_shape:
      raise ValueError(
        f"{name}.compute returned maps of shape {chunk_maps.shape} for "
        f"{stop - start} images of size {store.map_shape}; the MapMethod "
        "contract is float32 [B,H,W]."
      )
    if store.chunk_is_valid(i):  # Another job on the same store got there first: same maps.
      logging.warning("chunk %d of %s was written by another job; keeping it.", i, store.path)
    else:
      store.write_chunk(i, chunk_maps)
    if on_chunk is not None:
      on_chunk(i, time.perf_counter() - began)
    if bar is not None:
      bar.update(1)

  pending = None
  for i in todo:
    began = time.perf_counter()
    start, stop = store.chunk_bounds(i)
    chunk_images = _load_images(images, start, stop)
    chunk_prepared = None
    if prepared is not None:
      chunk_prepared = prepared(start, stop, store.ids[start:stop], chunk_images)
    wait = runner.dispatch(
      chunk_images,
      targets[start:stop],
      indices[start:stop],
      chunk_prepared,
      pad_to=store.chunk_size,
    )
    del chunk_images, chunk_prepared
    if pending is not None:
      finish(*pending)
    pending = (i, wait, began)
  if pending is not None:
    finish(*pending)
  if bar is not None:
    bar.close()
