"""An on-disk cache of a method's model-independent data (XRAI's segments), one file per chunk.

`MapMethod.prepare(images, settings)` depends only on the images and the settings, not on the
model, so a study computes it once per chunk of images and reuses it for every model state
(replicates, randomization steps). Files are named by a fingerprint of the method and settings,
the chunk's range and a digest of the chunk's image bytes (so the same images preprocessed for
two architectures get two entries), and hold the chunk's image ids; a file that does not match
is recomputed, so a stale cache never gives wrong data. Boolean arrays (segment masks) are
bit-packed and the file is zlib-compressed, since dilated segment masks are mostly zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import hashlib
import json
import os
import pickle
from typing import Any
import zlib

import numpy as np

from saliency_jax.maps.files import atomic_write

_PACKED_BOOL = "__saliency_jax_packed_bool__"


def _pack(tree: Any) -> Any:
  """Replaces every boolean NumPy array in nested lists/tuples/dicts by its packed bits."""
  if isinstance(tree, np.ndarray) and tree.dtype == np.bool_:
    return (_PACKED_BOOL, tree.shape, np.packbits(tree, axis=None))
  if isinstance(tree, dict):
    return {k: _pack(v) for k, v in tree.items()}
  if hasattr(tree, "_fields"):  # a NamedTuple (XRAI's Regions)
    return type(tree)(*(_pack(v) for v in tree))
  if isinstance(tree, (list, tuple)):
    return type(tree)(_pack(v) for v in tree)
  if hasattr(tree, "__array__") and not isinstance(tree, np.ndarray):
    return _pack(np.asarray(tree))  # A jax.Array: store it as NumPy.
  return tree


def _unpack(tree: Any) -> Any:
  if (
    isinstance(tree, tuple)
    and len(tree) == 3
    and isinstance(tree[0], str)
    and (tree[0] == _PACKED_BOOL)
  ):
    _, shape, bits = tree
    count = int(np.prod(shape))
    return np.unpackbits(bits, count=count).astype(bool).reshape(shape)
  if isinstance(tree, dict):
    return {k: _unpack(v) for k, v in tree.items()}
  if hasattr(tree, "_fields"):
    return type(tree)(*(_unpack(v) for v in tree))
  if isinstance(tree, (list, tuple)):
    return type(tree)(_unpack(v) for v in tree)
  return tree


def fingerprint(method_name: str, settings: dict) -> str:
  """A short digest of a method's name and settings (what its prepared data depends on)."""
  text = json.dumps({"method": method_name, "settings": settings}, sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class PreparedCache:
  """Per-chunk prepared data under `directory`, computed on a miss by `prepare_fn(images)`."""

  def __init__(self, directory: str, method_name: str, settings: dict):
    self.directory = directory
    self.fingerprint = fingerprint(method_name, settings)
    self.hits = 0
    self.misses = 0
    os.makedirs(directory, exist_ok=True)

  def _path(self, start: int, stop: int, images: np.ndarray) -> str:
    digest = hashlib.blake2b(np.ascontiguousarray(images).view(np.uint8), digest_size=8)
    digest.update(repr((images.shape, images.dtype.str)).encode())
    return os.path.join(
      self.directory, f"prepared_{self.fingerprint}_{start:08d}_{stop:08d}_{digest.hexdigest()}.pkl"
    )

  def get(
    self,
    start: int,
    stop: int,
    ids: Sequence[str],
    images: np.ndarray,
    prepare_fn: Callable[[np.ndarray], Any],
  ) -> Any:
    """The prepared data of images [start, stop) with these ids, from disk or computed."""
    path = self._path(start, stop, images)
    ids = [str(i) for i in ids]
    if os.path.exists(path):
      with open(path, "rb") as f:
        record = pickle.loads(zlib.decompress(f.read()))
      if record.get("ids") == ids and record.get("fingerprint") == self.fingerprint:
        self.hits += 1
        return _unpack(record["data"])
    self.misses += 1
    data = prepare_fn(images)
    blob = zlib.compress(
      pickle.dumps(
        {"ids": ids, "fingerprint": self.fingerprint, "data": _pack(data)},
        protocol=pickle.HIGHEST_PROTOCOL,
      ),
      1,
    )
    atomic_write(path, lambda f: f.write(blob))
    return data
