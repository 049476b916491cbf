"""A chunked on-disk store of 2-D saliency maps, written chunk by chunk and read as a stream.

One store holds the maps of one (model state, method) pair: float32 or float16 [N, H, W], in
chunks of `chunk_size` consecutive maps (the last one may be shorter). Layout of a store:

  <path>/manifest.json       shape, chunk size, stored dtype (written once, never changed)
  <path>/ids.npy             str [N]: the image ids, in map order
  <path>/indices.npy         int64 [N]: the images' indices in their dataset (the noise keys)
  <path>/chunk_00000.npy     maps [chunk_size, H, W] in the stored dtype
  <path>/chunk_00000.sha256  {"chunk": 0, "sha256": ...} of the chunk file's bytes
  ...

Every file is written to a temporary name in the same directory and renamed over its final name
(`os.replace`, atomic on POSIX filesystems), so a chunk is either completely present or absent,
whatever happens to the writer. A chunk is finished once its checksum file is written after it;
reads verify the bytes against it and name the file when they differ (truncated, corrupted, or
replaced by another chunk), and a writer asked for the chunks still to do
(`missing_chunks(verify=True)`) gets such a chunk back to recompute. The checksums sit next to
their chunks, not in manifest.json, because several hosts write chunks of one store at once and
the manifest is written once. Finished chunks are never written again, so a killed job restarts
where it stopped, and several hosts can write disjoint chunks of the same store at once.

Why plain `.npy` files and not zarr: a zarr array reads a missing chunk as its fill value, so a
resumable writer would still need its own record of finished chunks; one atomic file per chunk is
that record, needs no extra dependency, and every chunk can be read back with NumPy alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil

import numpy as np

from saliency_jax.maps.files import atomic_write
from saliency_jax.maps.files import npy_bytes
from saliency_jax.maps.files import save_npy

_FORMAT = "saliency_jax.maps/v1"
_DTYPES = ("float32", "float16")


@dataclasses.dataclass(frozen=True)
class MapChunk:
  """One chunk of maps as read back: maps [stop - start, H, W] float32, with their images."""

  chunk_index: int
  start: int
  stop: int
  maps: np.ndarray  # float32 [n, H, W], whatever the stored dtype
  ids: np.ndarray  # str [n]
  indices: np.ndarray  # int64 [n]


_REPAIR_HINT = (
  "rerun the job that wrote the store to recompute it (a study: `launch.run_all --redo=maps`)"
)


class MapStore:
  """A chunked, resumable store of maps [N, H, W]; see the module docstring for its layout.

  Create (or reopen, checking that nothing changed) with `MapStore.create_or_open`; open an
  existing store for reading with `MapStore.open`.
  """

  def __init__(self, path: str, manifest: dict, ids: np.ndarray, indices: np.ndarray):
    self.path = path
    self.num_maps = int(manifest["num_maps"])
    self.map_shape = tuple(int(s) for s in manifest["map_shape"])
    self.chunk_size = int(manifest["chunk_size"])
    self.dtype = str(manifest["dtype"])  # The stored dtype; readers always return float32.
    self.metadata = dict(manifest.get("metadata", {}))
    self.ids = ids
    self.indices = indices
    self.chunks_read = 0  # How many chunk files this object has loaded (see `iter_chunks`).

  # ---- creation -------------------------------------------------------------------------------

  @classmethod
  def create_or_open(
    cls,
    path: str,
    *,
    num_maps: int,
    map_shape: Sequence[int],
    chunk_size: int,
    dtype: str = "float32",
    ids: Sequence[str] | np.ndarray | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    metadata: dict | None = None,
    replace: bool = False,
  ) -> MapStore:
    """Creates the store at `path`, or reopens it if it exists with the same description.

    Args:
      path: a directory (created if needed).
      num_maps: N, the number of maps.
      map_shape: (H, W).
      chunk_size: maps per chunk (the unit of writing, resuming and streaming).
      dtype: "float32" or "float16" (half the disk; maps in [0, 1] keep ~3 significant digits).
      ids: str [N], the image ids (default: the indices as strings).
      indices: int [N], the dataset indices of the images (default: 0..N-1).
      metadata: JSON-serializable description (method, settings, model state...); checked
        equal on reopening, so maps of a different job are never mixed into this store.
      replace: delete an existing store at `path` that describes other maps or images and
        start an empty one (instead of the error).

    Raises:
      ValueError: bad arguments, or an existing store at `path` that describes other maps.
    """
    if dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    num_maps, chunk_size = int(num_maps), int(chunk_size)
    if num_maps < 1:
      raise ValueError(f"num_maps must be >= 1, got {num_maps}")
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    map_shape = tuple(int(s) for s in map_shape)
    if len(map_shape) != 2 or min(map_shape) < 1:
      raise ValueError(f"map_shape must be (H, W) with positive sizes, got {map_shape}")
    indices = (
      np.arange(num_maps, dtype=np.int64)
      if indices is None
      else np.asarray(indices).astype(np.int64)
    )
    ids = indices.astype(str) if ids is None else np.asarray(ids).astype(str)
    if indices.shape != (num_maps,) or ids.shape != (num_maps,):
      raise ValueError(f"ids {ids.shape} and indices {indices.shape} must have shape ({num_maps},)")
    manifest = {
      "format": _FORMAT,
      "num_maps": num_maps,
      "map_shape": list(map_shape),
      "chunk_size": chunk_size,
      "dtype": dtype,
      "metadata": json.loads(json.dumps(metadata or {}, sort_keys=True)),
    }

    manifest_path = os.path.join(path, "manifest.json")
    if os.path.exists(manifest_path):
      store = cls.open(path)
      found = {
        "num_maps": store.num_maps,
        "map_shape": list(store.map_shape),
        "chunk_size": store.chunk_size,
        "dtype": store.dtype,
        "metadata": store.metadata,
      }
      wanted = {k: manifest[k] for k in found}
      same_images = np.array_equal(store.ids, ids) and np.array_equal(store.indices, indices)
      if replace and (found != wanted or not same_images):
        logging.warning(
          "%s holds other maps (%s): replacing them",
          path,
          "another description" if same_images else "other images",
        )
        shutil.rmtree(path)
        return cls.create_or_open(
          path,
          num_maps=num_maps,
          map_shape=map_shape,
          chunk_size=chunk_size,
          dtype=dtype,
          ids=ids,
          indices=indices,
          metadata=metadata,
        )
      if found != wanted:
        raise ValueError(
          f"The map store at {path} holds other maps: it has {found}, this job "
          f"asks for {wanted}. Use another path or delete it."
        )
      if not same_images:
        raise ValueError(
          f"The map store at {path} holds maps of other images (ids or "
          "dataset indices differ). Use another path or delete it."
        )
      return store

    os.makedirs(path, exist_ok=True)
    # Several hosts may create the same store at once: each writes identical files atomically.
    save_npy(os.path.join(path, "ids.npy"), ids)
    save_npy(os.path.join(path, "indices.npy"), indices)
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write(manifest_path, lambda f: f.write(text))  # Last: it marks the store as valid.
    return cls(path, manifest, ids, indices)

  @classmethod
  def open(cls, path: str) -> MapStore:
    """Opens an existing store (complete or not) for reading or for resuming."""
    manifest_path = os.path.join(path, "manifest.json")
    if not os.path.exists(manifest_path):
      raise FileNotFoundError(f"No map store at {path} (no manifest.json).")
    with open(manifest_path) as f:
      manifest = json.load(f)
    if manifest.get("format") != _FORMAT:
      raise ValueError(f"{manifest_path} is not a {_FORMAT} manifest.")
    ids = np.load(os.path.join(path, "ids.npy"), allow_pickle=False)
    indices = np.load(os.path.join(path, "indices.npy"), allow_pickle=False)
    return cls(path, manifest, ids, indices)

  # ---- chunks ---------------------------------------------------------------------------------

  @property
  def num_chunks(self) -> int:
    return -(-self.num_maps // self.chunk_size)

  def chunk_bounds(self, chunk_index: int) -> tuple[int, int]:
    """The [start, stop) range of map positions in chunk `chunk_index`."""
    if not 0 <= chunk_index < self.num_chunks:
      raise IndexError(f"chunk {chunk_index} out of range [0, {self.num_chunks})")
    start = chunk_index * self.chunk_size
    return start, min(start + self.chunk_size, self.num_maps)

  def chunk_path(self, chunk_index: int) -> str:
    return os.path.join(self.path, f"chunk_{chunk_index:05d}.npy")

  def checksum_path(self, chunk_index: int) -> str:
    return os.path.join(self.path, f"chunk_{chunk_index:05d}.sha256")

  def has_chunk(self, chunk_index: int) -> bool:
    """Whether the chunk and its checksum are on disk (not whether its bytes match it)."""
    return os.path.exists(self.chunk_path(chunk_index)) and os.path.exists(
      self.checksum_path(chunk_index)
    )

  def _recorded_digest(self, chunk_index: int) -> str | None:
    try:
      with open(self.checksum_path(chunk_index)) as f:
        record = json.load(f)
    except (OSError, ValueError):
      return None
    if not isinstance(record, dict) or record.get("chunk") != chunk_index:
      return None  # A checksum file copied from another chunk proves nothing.
    return record.get("sha256")

  def chunk_is_valid(self, chunk_index: int) -> bool:
    """Whether the chunk is on disk with exactly the bytes its checksum records."""
    recorded = self._recorded_digest(chunk_index)
    if recorded is None:
      return False
    try:
      with open(self.chunk_path(chunk_index), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest() == recorded
    except OSError:
      return False

  def missing_chunks(
    self, process_index: int = 0, process_count: int = 1, *, verify: bool = False
  ) -> list[int]:
    """Chunks not finished yet, among those of host `process_index` (i % process_count).

    With `verify`, also the finished chunks whose bytes fail their checksum (each is logged
    with its path), so that a writer recomputes them; this reads every chunk of the share.
    """
    todo = []
    for i in range(process_index, self.num_chunks, process_count):
      if not self.has_chunk(i):
        todo.append(i)
      elif verify and not self.chunk_is_valid(i):
        logging.warning(
          "%s fails its checksum (truncated, corrupted or replaced); it will be recomputed.",
          self.chunk_path(i),
        )
        todo.append(i)
    return todo

  @property
  def complete(self) -> bool:
    return not self.missing_chunks()

  def write_chunk(self, chunk_index: int, maps) -> None:
    """Writes chunk `chunk_index` ([n, H, W], n its length) atomically, cast to the stored dtype.

    A chunk on disk whose bytes fail its checksum (or that has none) is replaced.

    Raises:
      FileExistsError: the chunk is already on disk and valid (finished chunks are never
        rewritten).
      ValueError: wrong shape, or infinite values. NaN is stored: it is how the methods mark
        an undefined map (a constant one), which the metrics then handle by their policy.
    """
    start, stop = self.chunk_bounds(chunk_index)
    maps = np.asarray(maps)
    expected = (stop - start,) + self.map_shape
    if maps.shape != expected:
      raise ValueError(f"chunk {chunk_index} must have shape {expected}, got {maps.shape}")
    if np.any(np.isinf(maps)):
      raise ValueError(f"chunk {chunk_index} has infinite values; refusing to store them.")
    path = self.chunk_path(chunk_index)
    if self.has_chunk(chunk_index) and self.chunk_is_valid(chunk_index):
      raise FileExistsError(f"chunk {chunk_index} of {self.path} is already written.")
    data = npy_bytes(maps.astype(self.dtype))
    record = json.dumps({"chunk": chunk_index, "sha256": hashlib.sha256(data).hexdigest()}).encode()
    atomic_write(path, lambda f: f.write(data))
    # Written last: a chunk without its checksum is unfinished and gets recomputed.
    atomic_write(self.checksum_path(chunk_index), lambda f: f.write(record))

  def read_chunk(self, chunk_index: int) -> MapChunk:
    """Reads one finished chunk; its maps come back as float32."""
    start, stop = self.chunk_bounds(chunk_index)
    path = self.chunk_path(chunk_index)
    if not self.has_chunk(chunk_index):
      raise FileNotFoundError(f"chunk {chunk_index} of {self.path} is not written yet.")
    with open(path, "rb") as f:
      data = f.read()
    self.chunks_read += 1
    if hashlib.sha256(data).hexdigest() != self._recorded_digest(chunk_index):
      raise ValueError(
        f"{path} fails its checksum (truncated, corrupted or replaced by "
        f"another file); {_REPAIR_HINT}."
      )
    try:
      stored = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
      raise ValueError(f"{path} cannot be read ({e}); {_REPAIR_HINT}.") from e
    if stored.shape != (stop - start,) + self.map_shape or stored.dtype != self.dtype:
      raise ValueError(
        f"{path} has shape {stored.shape} and dtype {stored.dtype}, expected "
        f"{(stop - start,) + self.map_shape} and {self.dtype}."
      )
    return MapChunk(
      chunk_index,
      start,
      stop,
      stored.astype(np.float32),
      self.ids[start:stop],
      self.indices[start:stop],
    )

  def iter_chunks(self) -> Iterator[MapChunk]:
    """Streams the chunks in order, loading each only when asked for and keeping none.

    Memory stays at one chunk (plus whatever the caller keeps).

    Raises:
      ValueError: the store is not complete (checked before the first chunk is read).
    """
    missing = self.missing_chunks()
    if missing:
      raise ValueError(
        f"The map store at {self.path} is incomplete: {len(missing)} of "
        f"{self.num_chunks} chunks missing (first: {missing[0]}); "
        f"{_REPAIR_HINT}."
      )
    for i in range(self.num_chunks):
      yield self.read_chunk(i)

  def read_all(self) -> np.ndarray:
    """All maps, float32 [N, H, W] (for small sets; stream with `iter_chunks` otherwise)."""
    out = np.empty((self.num_maps,) + self.map_shape, np.float32)
    for chunk in self.iter_chunks():
      out[chunk.start : chunk.stop] = chunk.maps
    return out

  def __repr__(self) -> str:
    done = self.num_chunks - len(self.missing_chunks())
    return (
      f"MapStore({self.path!r}, num_maps={self.num_maps}, map_shape={self.map_shape}, "
      f"dtype={self.dtype}, chunks {done}/{self.num_chunks})"
    )


def iter_aligned(*stores: MapStore) -> Iterator[tuple[MapChunk, ...]]:
  """Streams several stores of the same images chunk by chunk, e.g. to compare model states.

  Yields one tuple of MapChunks (one per store, covering the same images) at a time.

  Raises:
    ValueError: the stores hold other images, map sizes or chunkings.
  """
  if not stores:
    raise ValueError("iter_aligned needs at least one store")
  first = stores[0]
  for other in stores[1:]:
    if (other.num_maps, other.map_shape, other.chunk_size) != (
      first.num_maps,
      first.map_shape,
      first.chunk_size,
    ) or not (
      np.array_equal(other.ids, first.ids) and np.array_equal(other.indices, first.indices)
    ):
      raise ValueError(
        f"{other.path} and {first.path} do not hold maps of the same images in the same chunks."
      )
  yield from zip(*(store.iter_chunks() for store in stores))
