"""Runs a jitted per-map function over a stack in fixed-size chunks, bounding memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np


def on_cpu() -> bool:
  """True when JAX's default backend is the CPU: rank metrics then sort with NumPy."""
  return jax.default_backend() == "cpu"


def per_map_in_chunks(
  fn: Callable[..., jax.Array], arrays: Sequence[np.ndarray], *, chunk: int
) -> np.ndarray:
  """Applies `fn` (jitted, leading axis N in and out) to `arrays` in chunks of `chunk` maps.

  A stack no larger than `chunk` goes in one call. Larger stacks go in chunks of exactly `chunk`
  maps (the last one padded with copies of the first map, then dropped), so one compiled
  executable serves every chunk.

  Returns:
    float64 NumPy array [N].
  """
  n = arrays[0].shape[0]
  if n <= chunk:
    return np.asarray(fn(*arrays), dtype=np.float64)
  # Dispatch every chunk before reading any result back, so the host slices the next chunk
  # while the device computes.
  out, sizes = [], []
  for start in range(0, n, chunk):
    parts = [a[start : start + chunk] for a in arrays]
    size = parts[0].shape[0]
    if size < chunk:
      parts = [
        np.concatenate([p, np.repeat(a[:1], chunk - size, axis=0)]) for p, a in zip(parts, arrays)
      ]
    out.append(fn(*parts))
    sizes.append(size)
  return np.concatenate([np.asarray(o, dtype=np.float64)[:size] for o, size in zip(out, sizes)])
