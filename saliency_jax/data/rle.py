"""The SIIM-ACR Pneumothorax run-length encoding (relative, column-major).

The competition's `train-rle.csv` stores each mask as pairs `start length`:

* pixels are numbered in **column-major** order (down the first column, then
  the next column: flat index = x * height + y), which is why the competition's
  `mask_functions.rle2mask(rle, width, height)` is followed by a transpose;
* starts are **relative**: the first start is the flat index of the first run,
  every later start counts the pixels between the end of the previous run and
  the beginning of this one;
* `"-1"` (or an empty string) is an empty mask.

`rle_decode` reproduces the competition's `rle2mask(...).T` exactly on valid
input and rejects what it would silently mangle (a run past the image, negative
numbers, an odd count). `rle_encode` is its inverse; unlike the competition's
`mask2rle` it also emits a run that reaches the last pixel of the image (the
original forgets to flush it).
"""

from collections.abc import Iterable

import numpy as np

EMPTY = "-1"


class RleError(ValueError):
  """A run-length string that does not describe a mask of the given size.

  Attributes:
    reason: "malformed" (not pairs of non-negative integers) or "past_image"
      (a run ends beyond the last pixel).
  """

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


def _parse(rle: str) -> np.ndarray:
  """Returns the integer tokens of `rle` ([] for an empty mask)."""
  text = rle.strip()
  if text in ("", EMPTY):
    return np.zeros((0,), np.int64)
  try:
    tokens = np.array([int(t) for t in text.split()], np.int64)
  except ValueError as e:
    raise RleError(f"RLE has a token that is not an integer: {e}", "malformed") from None
  if tokens.size % 2:
    raise RleError(
      f"RLE has an odd number of values ({tokens.size}); expected 'start length' pairs", "malformed"
    )
  if (tokens < 0).any():
    raise RleError("RLE has a negative start or length", "malformed")
  return tokens


def rle_runs(rle: str, height: int, width: int) -> np.ndarray:
  """Absolute runs [n, 2] of (first flat index, length) in column-major order.

  Raises:
    RleError: malformed string, or a run past the `height` x `width` image.
  """
  tokens = _parse(rle)
  starts, lengths = tokens[0::2], tokens[1::2]
  # Each start counts from the end of the previous run.
  ends = np.cumsum(starts + lengths)
  absolute_starts = ends - lengths
  size = height * width
  if ends.size and ends[-1] > size:
    raise RleError(
      f"RLE runs to pixel {int(ends[-1])} but a {height}x{width} image has {size} pixels",
      "past_image",
    )
  return np.stack([absolute_starts, lengths], axis=-1)


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
  """Decodes one SIIM RLE string to a bool mask [height, width].

  Args:
    rle: "start length start length ..." (relative starts) or "-1".
    height: image rows.
    width: image columns.

  Returns:
    bool array [height, width], True inside the runs.

  Raises:
    RleError: malformed string or a run past the image.
  """
  runs = rle_runs(rle, height, width)
  flat = np.zeros(height * width + 1, np.int32)
  # Mark run boundaries with +1/-1 and integrate: O(pixels + runs).
  np.add.at(flat, runs[:, 0], 1)
  np.add.at(flat, runs[:, 0] + runs[:, 1], -1)
  column_major = np.cumsum(flat[:-1]) > 0
  # Flat index x * height + y: reshape to [width, height] and transpose.
  return column_major.reshape(width, height).T


def rle_decode_union(rles: Iterable[str], height: int, width: int) -> np.ndarray:
  """The union of several RLE rows of one image (bool [height, width])."""
  mask = np.zeros((height, width), bool)
  for rle in rles:
    mask |= rle_decode(rle, height, width)
  return mask


def rle_encode(mask: np.ndarray) -> str:
  """Encodes a mask [height, width] (nonzero = inside) as a SIIM RLE string.

  Returns "-1" for an empty mask; otherwise relative "start length" pairs over
  the column-major pixels, so that `rle_decode(rle_encode(m), *m.shape)`
  equals `m != 0`.
  """
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"rle_encode expects a 2-D mask, got shape {mask.shape}")
  pixels = (mask != 0).T.ravel()
  if not pixels.any():
    return EMPTY
  padded = np.concatenate([[False], pixels, [False]])
  edges = np.flatnonzero(padded[1:] != padded[:-1])
  starts, ends = edges[0::2], edges[1::2]
  lengths = ends - starts
  previous_ends = np.concatenate([[0], ends[:-1]])
  relative_starts = starts - previous_ends
  pairs = np.stack([relative_starts, lengths], axis=-1).ravel()
  return " ".join(str(int(v)) for v in pairs)
