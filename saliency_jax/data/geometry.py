"""Boxes and masks at a dataset's image size S (the real builders and the API).

Conventions (the same as `saliency_jax.data.synthetic_images`): pixel (r, c)
covers [r, r+1) x [c, c+1); boxes are (ymin, xmin, ymax, xmax) in these
continuous coordinates with exclusive ends. Images are stretched to S x S, so
boxes scale by S / rows in y and S / columns in x.

* Boxes are rasterized at S by pixel centers: pixel r is inside when
  ymin <= r + 0.5 < ymax (so an integer box [y0, y1) gives rows y0..y1-1). A
  box thinner than one pixel still marks the row/column holding its center.
* Masks given at the original size are resized by nearest neighbour at pixel
  centers (target pixel i samples source floor((i + 0.5) * H / S)). When that
  loses a whole non-empty mask (a region smaller than the sampling step), the
  mask is redrawn as the target pixels containing the centers of its source
  pixels, and the report notes it.
"""

import numpy as np


def scale_boxes(boxes: np.ndarray, original_shape: tuple[int, int], size: int) -> np.ndarray:
  """Boxes (ymin, xmin, ymax, xmax) at `original_shape` -> at size x size."""
  rows, cols = original_shape
  factors = np.array([size / rows, size / cols, size / rows, size / cols])
  return (np.asarray(boxes, np.float64).reshape(-1, 4) * factors).astype(np.float32)


def _center_range(lo: float, hi: float, size: int) -> tuple[int, int]:
  """Indices i with lo <= i + 0.5 < hi, or the index holding the center."""
  start = int(np.ceil(lo - 0.5))
  stop = int(np.ceil(hi - 0.5))
  start, stop = max(start, 0), min(stop, size)
  if stop <= start:
    center = int(np.floor((lo + hi) / 2))
    start = min(max(center, 0), size - 1)
    stop = start + 1
  return start, stop


def rasterize_boxes(boxes: np.ndarray, shape: int | tuple[int, int]) -> np.ndarray:
  """The union of boxes as a uint8 {0, 1} mask [rows, cols] (pixel centers); an int shape is
  a square."""
  rows, cols = (shape, shape) if isinstance(shape, int) else shape
  mask = np.zeros((rows, cols), np.uint8)
  for ymin, xmin, ymax, xmax in np.asarray(boxes, np.float64).reshape(-1, 4):
    r0, r1 = _center_range(ymin, ymax, rows)
    c0, c1 = _center_range(xmin, xmax, cols)
    mask[r0:r1, c0:c1] = 1
  return mask


def resize_mask(mask: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
  """Nearest-neighbour resize of a bool/{0,1} mask [H, W] to [size, size].

  Returns:
    (uint8 {0, 1} mask, whether the fallback redrew a mask that vanished).
  """
  mask = np.asarray(mask) != 0
  rows, cols = mask.shape
  src_r = np.minimum(((np.arange(size) + 0.5) * rows / size).astype(int), rows - 1)
  src_c = np.minimum(((np.arange(size) + 0.5) * cols / size).astype(int), cols - 1)
  out = mask[np.ix_(src_r, src_c)].astype(np.uint8)
  if out.any() or not mask.any():
    return out, False
  rr, cc = np.nonzero(mask)
  tr = np.minimum(((rr + 0.5) * size / rows).astype(int), size - 1)
  tc = np.minimum(((cc + 0.5) * size / cols).astype(int), size - 1)
  out[tr, tc] = 1
  return out, True
