"""A (small) split held in memory as stacked NumPy arrays, e.g. an evaluation set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def load_arrays(source: Sequence[dict[str, Any]], indices=None) -> dict[str, Any]:
  """Reads examples `indices` (default: all) of a random-access source into arrays.

  Args:
    source: anything with `__len__` and `__getitem__` returning contract examples, e.g.
      `tfds.data_source(name, data_dir=...)["test"]`.
    indices: positions in the source (any integer sequence, in the order wanted).

  Returns:
    {"id": str array [N], "image": [N,S,S,1] as stored (uint8/uint16), "label": int64 [N],
     "mask": bool [N,S,S], "boxes": list of N float32 [n_i,4], "index": int64 [N]}.
  """
  n = len(source)
  indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices)
  if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(f"indices must be a 1-D integer sequence, got {indices!r}.")
  indices = indices.astype(np.int64)
  if indices.size == 0:
    raise ValueError("No examples selected.")
  if indices.min() < 0 or indices.max() >= n:
    raise IndexError(f"indices must lie in [0, {n}), got range [{indices.min()}, {indices.max()}].")
  if hasattr(source, "__getitems__"):
    examples = source.__getitems__(indices.tolist())  # one batched read for array_record
  else:
    examples = [source[int(i)] for i in indices]
  masks = np.stack([np.asarray(e["mask"]) for e in examples])
  if masks.ndim == 4:
    masks = masks[..., 0]
  if masks.size and masks.max() > 1:
    raise ValueError(f"Masks must hold values in {{0, 1}}, found {masks.max()}.")
  return {
    "id": np.array(
      [e["id"].decode() if isinstance(e["id"], bytes) else str(e["id"]) for e in examples]
    ),
    "image": np.stack([np.asarray(e["image"]) for e in examples]),
    "label": np.array([int(e["label"]) for e in examples], np.int64),
    "mask": masks.astype(bool),
    "boxes": [np.asarray(e["boxes"], np.float32).reshape(-1, 4) for e in examples],
    "index": indices,
  }
