"""XRAI's region selection (PAIR's `XRAI._xrai` "full" and `XRAI._xrai_fast`), same output, fast.

PAIR loops in Python over full-image boolean masks: every greedy step recomputes, for every
remaining mask, its count of new pixels and their mean attribution (O(masks x pixels) per step).
Here pixels are first grouped into "atoms", the classes of pixels that belong to exactly the same
masks (a few thousand instead of ~10^5 pixels). A masks x atoms matrix gives every mask's new-pixel
count and attribution sum as matrix products, updated incrementally as atoms get covered, so a
step costs O(masks x newly covered atoms).

Identical output. PAIR's gains are NumPy float32 means (pairwise summation) of the new pixels; the
float64 atom sums decide the selection wherever they are unambiguous, and every near-tie (gains
within a rigorous bound of float32 summation error, e.g. duplicated masks across scales) is
resolved by computing PAIR's float32 mean of exactly PAIR's pixel sequence. The values written to
the map are those exact float32 means, so the output equals PAIR's bit for bit.
"""

import numpy as np

# Bound on |float32 NumPy mean - exact mean| relative to mean(|attr|) of the same pixels:
# pairwise summation error is below ~(16 + log2 n) eps32 ~ 3e-6 for n < 10^9.
_REL_TOL = 1e-5


def _pixel_classes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Groups pixels by mask membership: (atom of each pixel [P], first pixel of each atom)."""
  m, p = masks.shape
  words = np.zeros((-(-m // 64), p), np.uint64)
  for j in range(m):  # membership bits, 64 masks per word (one pass per mask)
    np.bitwise_or(words[j // 64], np.uint64(1 << (j % 64)), out=words[j // 64], where=masks[j])
  digest = np.zeros(p, np.uint64)
  with np.errstate(over="ignore"):
    for row in words:
      digest = (digest ^ row) * np.uint64(0x100000001B3) + np.uint64(0x9E3779B97F4A7C15)
  _, first, inverse = np.unique(digest, return_index=True, return_inverse=True)
  inverse = inverse.reshape(-1)
  if not np.array_equal(words[:, first[inverse]], words):  # a 64-bit collision: be exact
    rows = np.ascontiguousarray(words.T).view(np.dtype((np.void, 8 * words.shape[0])))[:, 0]
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
  return inverse, first


class _Atoms:
  """Pixels grouped by mask membership, with every mask's new-pixel statistics.

  stats[:, 0] = number of not-yet-covered pixels of each mask, [:, 1] their attribution sum,
  [:, 2] their absolute attribution sum (float64; counts are exact integers).
  """

  def __init__(self, attr: np.ndarray, masks: np.ndarray):
    atom_of_pixel, first = _pixel_classes(masks)
    n = len(first)
    self.members = np.ascontiguousarray(masks[:, first])  # bool [M, A]
    a64 = attr.astype(np.float64)
    self.atom_stats = np.stack(
      [
        np.bincount(atom_of_pixel, minlength=n).astype(np.float64),
        np.bincount(atom_of_pixel, weights=a64, minlength=n),
        np.bincount(atom_of_pixel, weights=np.abs(a64), minlength=n),
      ],
      axis=1,
    )  # [A, 3]
    self.members_t = np.ascontiguousarray(self.members.T, dtype=np.float64)  # [A, M]
    self.stats = self.members_t.T @ self.atom_stats  # [M, 3]
    self.covered = np.zeros(n, bool)

  @property
  def count(self):
    return self.stats[:, 0]

  def cover(self, mask_index: int):
    """Marks the atoms of a mask covered and updates every mask's new-pixel statistics."""
    new = self.members[mask_index] & ~self.covered
    if new.any():
      self.covered |= new
      self.stats -= self.members_t[new].T @ self.atom_stats[new]

  def new_count(self, mask_index: int) -> float:
    return float(self.atom_stats[self.members[mask_index] & ~self.covered, 0].sum())


def _first_of_duplicates(masks: np.ndarray) -> np.ndarray:
  """Indices of the masks that are not a copy of an earlier mask (ascending).

  A later copy of a mask can never be chosen (PAIR picks the first of equal gains) and is
  dropped as soon as the first is added (it then adds 0 < min_pixel_diff pixels), so removing
  copies changes nothing (for min_pixel_diff >= 1) and saves work: Felzenszwalb at neighbouring
  scales often returns the same segment.
  """
  packed = np.packbits(masks, axis=1)
  rows = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1])))[:, 0]
  _, first = np.unique(rows, return_index=True)
  return np.sort(first)


def _as_inputs(attr: np.ndarray, masks, min_pixel_diff) -> tuple[np.ndarray, np.ndarray]:
  if min_pixel_diff < 1:
    raise ValueError(f"min_pixel_diff must be >= 1, got {min_pixel_diff}")
  attr = np.asarray(attr)
  if attr.ndim == 3:  # [H,W,C]: PAIR merges channels by max
    attr = attr.max(axis=-1)
  if attr.ndim != 2:
    raise ValueError(f"attr must be [H,W] or [H,W,C], got shape {attr.shape}")
  masks = np.asarray(masks, bool)
  if masks.ndim != 3 or masks.shape[1:] != attr.shape:
    raise ValueError(f"masks must be [M,{attr.shape[0]},{attr.shape[1]}], got {masks.shape}")
  return attr, np.ascontiguousarray(masks.reshape(len(masks), -1))


def _finish(output: np.ndarray, flat_attr: np.ndarray, shape) -> np.ndarray:
  uncomputed = output == -np.inf
  if uncomputed.any():  # PAIR: the rest gets its mean attribution
    output[uncomputed] = flat_attr[uncomputed].mean()
  return output.reshape(shape)


def _start(attr, masks, min_pixel_diff):
  """What both algorithms start from: (attr, flat attr, output filled with -inf, the masks
  without duplicates)."""
  attr, masks = _as_inputs(attr, masks, min_pixel_diff)
  flat = np.ascontiguousarray(attr.reshape(-1))
  output = np.full(flat.size, -np.inf)
  if len(masks):
    masks = masks[_first_of_duplicates(masks)]
  return attr, flat, output, masks


def select_full(
  attr: np.ndarray, masks: np.ndarray, *, area_threshold: float = 1.0, min_pixel_diff: int = 50
) -> np.ndarray:
  """PAIR's greedy "full" XRAI: the attribution map (float32 values in a float64 [H,W] array).

  Args:
    attr: attributions [H,W] (or [H,W,C], merged by max over channels as PAIR).
    masks: bool [M,H,W] segments in PAIR's order (order breaks ties).
    area_threshold: stop once this fraction of the image is covered (PAIR's area_threshold).
    min_pixel_diff: masks adding fewer new pixels are dropped (PAIR: 50).
  """
  attr, flat, output, masks = _start(attr, masks, min_pixel_diff)
  if len(masks) == 0:
    return _finish(output, flat, attr.shape)
  num_pixels = flat.size
  atoms = _Atoms(flat, masks)
  # Float64 drift of the incremental updates, far below the float32 bound.
  floor = 1e-12 * atoms.stats[:, 2] / np.maximum(atoms.count, 1)
  remaining = np.ones(len(masks), bool)
  current = np.zeros(num_pixels, bool)
  area = 0.0
  while area <= area_threshold:
    remaining &= ~(atoms.count < min_pixel_diff)
    idx = np.flatnonzero(remaining)
    if not len(idx):
      break
    count, total, abs_total = atoms.stats[idx].T
    gain = total / count
    tol = _REL_TOL * np.abs(abs_total) / count + floor[idx]
    j = int(np.argmax(gain))
    near = gain >= gain[j] - tol - tol[j]
    candidates = idx[near]
    # PAIR's exact float32 gains; a region of zero attributions has mean exactly 0.
    exact = [
      np.float32(0.0) if a == 0 else flat[masks[c] & ~current].mean()
      for c, a in zip(candidates, abs_total[near])
    ]
    k = int(np.argmax(exact))  # first maximum, as PAIR's strict ">" scan
    best, best_gain = int(candidates[k]), exact[k]
    diff = masks[best] & ~current
    output[diff] = best_gain
    current |= masks[best]
    area = np.count_nonzero(current) / num_pixels
    atoms.cover(best)
    remaining[best] = False
  return _finish(output, flat, attr.shape)


def select_fast(attr: np.ndarray, masks: np.ndarray, *, min_pixel_diff: int = 50) -> np.ndarray:
  """PAIR's "fast" XRAI: masks ranked once by their own mean attribution, then added in order
  (skipping those adding fewer than min_pixel_diff new pixels), each new region valued by its
  own mean attribution. Returns the attribution map as `select_full`."""
  attr, flat, output, masks = _start(attr, masks, min_pixel_diff)
  if len(masks) == 0:
    return _finish(output, flat, attr.shape)
  num_pixels = flat.size
  atoms = _Atoms(flat, masks)
  count, total, abs_total = atoms.stats.T
  with np.errstate(divide="ignore", invalid="ignore"):
    gain = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
    tol = np.where(count > 0, _REL_TOL * abs_total / np.maximum(count, 1), 0.0)
  order = np.argsort(-gain, kind="stable")
  # Near-ties (within twice the largest error bound) are ordered by PAIR's exact float32 means.
  sorted_gain = gain[order]
  width = 2 * tol.max()
  finite = np.isfinite(sorted_gain)
  gaps = np.diff(sorted_gain)
  breaks = np.flatnonzero(~((-gaps <= width) & finite[:-1] & finite[1:])) + 1
  pieces = []
  for group in np.split(order, breaks):
    if len(group) > 1 and np.isfinite(gain[group[0]]):
      exact = np.array(
        [np.float32(0.0) if abs_total[g] == 0 else flat[masks[g]].mean() for g in group]
      )
      group = group[np.lexsort((group, -exact))]
    pieces.append(group)
  order = np.concatenate(pieces)
  current = np.zeros(num_pixels, bool)
  for m in order:
    if atoms.new_count(m) < min_pixel_diff:
      continue
    diff = masks[m] & ~current
    output[diff] = flat[diff].mean()
    current |= masks[m]
    atoms.covered |= atoms.members[m]
  return _finish(output, flat, attr.shape)


def select(
  attr: np.ndarray,
  masks: np.ndarray,
  *,
  algorithm: str = "full",
  area_threshold: float = 1.0,
  min_pixel_diff: int = 50,
) -> np.ndarray:
  """XRAI region selection by `algorithm` ("full" or "fast"), as PAIR."""
  if algorithm == "full":
    return select_full(attr, masks, area_threshold=area_threshold, min_pixel_diff=min_pixel_diff)
  if algorithm == "fast":
    return select_fast(attr, masks, min_pixel_diff=min_pixel_diff)
  raise ValueError(f"Unknown algorithm type: {algorithm!r} (expected 'full' or 'fast')")


def pair_xrai_reference(
  attr, masks, *, algorithm="full", area_threshold=1.0, min_pixel_diff=50
) -> np.ndarray | None:
  """PAIR's own selection on the same inputs (for tests and the benchmark); None without PAIR."""
  try:
    from saliency.core import xrai as pair_xrai  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  attr = np.asarray(attr)
  if attr.ndim == 3:
    attr = attr.max(axis=-1)
  segs = list(np.asarray(masks, bool))
  if algorithm == "full":
    out, _ = pair_xrai.XRAI._xrai(
      attr=attr, segs=segs, area_perc_th=area_threshold, min_pixel_diff=min_pixel_diff
    )
  else:
    out, _ = pair_xrai.XRAI._xrai_fast(attr=attr, segs=segs, min_pixel_diff=min_pixel_diff)
  return out
