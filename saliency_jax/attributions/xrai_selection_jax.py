"""XRAI's greedy "full" region selection (PAIR's `XRAI._xrai`) as one batched JAX program.

The output equals `xrai_selection.select_full` and PAIR's bit for bit.

The host prepares each image's masks once (`prepare`; they do not depend on the attributions, so
one preparation serves every model state): duplicates dropped, pixels grouped into atoms (the
classes of pixels in exactly the same masks, `xrai_selection`), and two index tables, the atoms
of each mask and the masks of each atom. The device then runs the greedy loop for a batch of
images at once. Every mask's count (int32), sum and absolute sum (float64) of not-yet-covered
attributions are updated from the atoms newly covered at each step, in chunks of atoms, so a
step costs O(masks + chunk x masks per atom) rather than O(masks x pixels).

Ties. PAIR compares float32 means of the new pixels (NumPy pairwise sums). The float64 gains
decide wherever the best leads every other mask by more than the bound on float32 summation
error (`xrai_selection._REL_TOL`). A near-tie is decided on the device when PAIR's answer is
known without its float32 values: the near-tied masks add exactly the same pixels (equal means,
the first mask wins; the common case, masks of different scales that differ only in covered
pixels), or they all have zero attributions. Any other near-tie stops that image: the host
computes PAIR's float32 means of the near-tied masks, picks the first maximum as PAIR does, and
the device continues. The map's values, PAIR's float32 means of each step's new pixels, are
computed on the host from the step at which each pixel was covered.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attributions import xrai_selection

# Atoms processed at once when a mask is added.
DEFAULT_CHUNK = 64

_ACTIVE, _DONE, _STALLED = 0, 1, 2


class Regions(NamedTuple):
  """One image's masks prepared for the device (model-independent)."""

  shape: tuple[int, int]
  masks: np.ndarray  # bool [M0, P], PAIR's order (duplicates included)
  kept: np.ndarray  # int [M]: the masks that are not a copy of an earlier one
  atom_of_pixel: np.ndarray  # int [P]
  pairs: tuple[np.ndarray, np.ndarray]  # int32 (mask, atom) of every membership, by mask
  atom_masks: np.ndarray  # int32 [A, D]: each atom's masks (ascending), padded with -1

  @property
  def num_atoms(self) -> int:
    return self.atom_masks.shape[0]


def _padded_rows(rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
  """Row r of the result lists cols[rows == r] (in order), padded with -1: int32 [n, max]."""
  counts = np.bincount(rows, minlength=n)
  width = max(1, int(counts.max(initial=0)))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  table = np.full((n, width), -1, np.int32)
  table[rows, np.arange(len(rows)) - starts[rows]] = cols
  return table


def prepare(masks: np.ndarray, shape: tuple[int, int] | None = None) -> Regions:
  """An image's masks (bool [M,H,W], PAIR's order) prepared for `select_full_batch`."""
  masks = np.asarray(masks, bool)
  if masks.ndim != 3 or (shape is not None and masks.shape[1:] != tuple(shape)):
    raise ValueError(
      f"masks must be bool [M,H,W] of the image's size {shape}, got shape {masks.shape}"
    )
  shape = masks.shape[1:]
  flat = np.ascontiguousarray(masks.reshape(len(masks), -1))
  if len(flat):  # copies do not change the atoms; they are found on the (few) atoms
    atom_of_pixel, first = xrai_selection._pixel_classes(flat)
    members = np.take(flat, first, axis=1)  # bool [M0, A]
    kept = xrai_selection._first_of_duplicates(members)
    members = members[kept]
  else:
    atom_of_pixel, first = np.zeros(flat.shape[1], np.int64), np.zeros(1, np.int64)
    kept, members = np.zeros(0, np.int64), np.zeros((0, 1), bool)
  rows, cols = np.nonzero(members)
  cols_t, rows_t = np.nonzero(members.T)
  return Regions(
    shape=tuple(shape),
    masks=flat,
    kept=kept,
    atom_of_pixel=atom_of_pixel,
    pairs=(rows.astype(np.int32), cols.astype(np.int32)),
    atom_masks=_padded_rows(cols_t, rows_t, len(first)),
  )


def _bucket(n: int, least: int) -> int:
  """Padded size: the next power of two, at least `least` (few shapes, few compilations)."""
  return max(least, 1 << (int(n) - 1).bit_length())


class _State(NamedTuple):
  cnt: jax.Array  # int32 [B, M]   new pixels of each mask
  nonzero: jax.Array  # int32 [B, M]   those with a nonzero attribution
  tot: jax.Array  # f64 [B, M]     their attribution sum
  ab: jax.Array  # f64 [B, M]     their absolute attribution sum
  uncovered: jax.Array  # bool [B, A]
  remaining: jax.Array  # bool [B, M]
  atom_step: jax.Array  # int32 [B, A]   the step that covered each atom (-1: none)
  n: jax.Array  # int32 [B]      steps taken
  covered: jax.Array  # int32 [B]      pixels covered
  status: jax.Array  # int32 [B]      _ACTIVE, _DONE or _STALLED
  near: jax.Array  # bool [B, M]    a stalled image's near-tied masks
  forced: jax.Array  # int32 [B]      the host's pick for a stalled image (-1: none)


def _rows(table, index):
  """table[b, index[b]] for every b: [B, ...]."""
  return jnp.take_along_axis(table, index.reshape((-1,) + (1,) * (table.ndim - 1)), axis=1)[:, 0]


def _step(s: _State, consts, *, min_pixel_diff, area_threshold, num_pixels, chunk):
  pair_atoms, mask_start, mask_len, atom_masks, atom_cnt, atom_vals, floor = consts
  # atom_cnt: int32 [B, A, 2] pixels, nonzero pixels; atom_vals: f64 [B, A, 2] sum, |sum|
  b, m = s.cnt.shape
  bi = jnp.arange(b)[:, None]
  active = s.status == _ACTIVE
  remaining = s.remaining & (s.cnt >= min_pixel_diff)
  has = remaining.any(axis=1)
  count = jnp.maximum(s.cnt, 1).astype(jnp.float64)
  gain = jnp.where(remaining, s.tot / count, -jnp.inf)
  tol = jnp.where(remaining, xrai_selection._REL_TOL * s.ab / count + floor / count, 0.0)
  j = jnp.argmax(gain, axis=1)
  gj, tj = _rows(gain, j), _rows(tol, j)
  near = remaining & (gain >= (gj - tj)[:, None] - tol)
  multiple = near.sum(axis=1) > 1
  zero = ~jnp.any(near & (s.nonzero > 0), axis=1)  # all near-tied means exactly 0
  first = jnp.argmax(near, axis=1)
  forced = s.forced >= 0
  pick = jnp.where(forced, s.forced, jnp.where(multiple & zero, first, j)).astype(jnp.int32)
  want = active & has

  # The change of every mask's statistics if `pick` is added: its uncovered atoms, a chunk at a
  # time, each subtracted from the masks that hold it.
  start, length = _rows(mask_start, pick), _rows(mask_len, pick)
  trips = jnp.max(jnp.where(want, (length + chunk - 1) // chunk, 0))
  dummy = s.uncovered.shape[1] - 1

  def body(k, carry):
    dcnt, dnz, dtot, dab, newly = carry
    offset = k * chunk + jnp.arange(chunk)  # [C]
    inside = offset[None, :] < length[:, None]
    ids = jnp.take_along_axis(pair_atoms, start[:, None] + jnp.where(inside, offset, 0), axis=1)
    ids = jnp.where(inside, ids, dummy)  # [B, C]
    live = jnp.take_along_axis(s.uncovered, ids, axis=1) & want[:, None]
    c = jnp.where(live[..., None], atom_cnt[bi, ids], 0)  # [B, C, 2]
    v = jnp.where(live[..., None], atom_vals[bi, ids], 0.0)  # [B, C, 2]
    holders = atom_masks[bi, ids]  # [B, C, D]
    d = holders.shape[-1]
    rows = jnp.broadcast_to(bi[..., None], holders.shape)
    dcnt = dcnt.at[rows, holders].add(jnp.repeat(c[..., 0:1], d, axis=2))
    dnz = dnz.at[rows, holders].add(jnp.repeat(c[..., 1:2], d, axis=2))
    dtot = dtot.at[rows, holders].add(jnp.repeat(v[..., 0:1], d, axis=2))
    dab = dab.at[rows, holders].add(jnp.repeat(v[..., 1:2], d, axis=2))
    newly = newly.at[bi, ids].max(live)
    return dcnt, dnz, dtot, dab, newly

  zeros_i, zeros_f = jnp.zeros((b, m), jnp.int32), jnp.zeros((b, m), jnp.float64)
  dcnt, dnz, dtot, dab, newly = jax.lax.fori_loop(
    0, trips, body, (zeros_i, zeros_i, zeros_f, zeros_f, jnp.zeros(s.uncovered.shape, bool))
  )

  pick_cnt = _rows(s.cnt, pick)
  same = (dcnt == s.cnt) & (s.cnt == pick_cnt[:, None])  # the same new pixels as `pick`
  identical = ~jnp.any(near & ~same, axis=1)
  simple = forced | ~multiple | zero
  choice = jnp.where(simple, pick, first)  # identical: `first` adds pick's pixels
  go = want & (simple | identical)
  stall = want & ~go
  g = go[:, None]
  covered = s.covered + jnp.where(go, pick_cnt, 0)
  area = covered.astype(jnp.float64) / num_pixels  # as PAIR: np.mean(current_mask)
  status = jnp.where(
    active & ~has,
    _DONE,
    jnp.where(stall, _STALLED, jnp.where(go & ~(area <= area_threshold), _DONE, s.status)),
  )
  chosen = jax.nn.one_hot(choice, m, dtype=bool) & g
  return _State(
    cnt=jnp.where(g, s.cnt - dcnt, s.cnt),
    nonzero=jnp.where(g, s.nonzero - dnz, s.nonzero),
    tot=jnp.where(g, s.tot - dtot, s.tot),
    ab=jnp.where(g, s.ab - dab, s.ab),
    uncovered=s.uncovered & ~(newly & g),
    remaining=jnp.where(active[:, None], remaining & ~chosen, s.remaining),
    atom_step=jnp.where(newly & g, s.n[:, None], s.atom_step),
    n=s.n + go,
    covered=covered,
    status=status.astype(jnp.int32),
    near=jnp.where(stall[:, None], near, s.near),
    forced=jnp.full_like(s.forced, -1),
  )


def _run_impl(state, consts, *, min_pixel_diff, area_threshold, num_pixels, chunk):
  def step(s):
    return _step(
      s,
      consts,
      min_pixel_diff=min_pixel_diff,
      area_threshold=area_threshold,
      num_pixels=num_pixels,
      chunk=chunk,
    )

  return jax.lax.while_loop(lambda s: jnp.any(s.status == _ACTIVE), step, state)


_run = jax.jit(_run_impl, static_argnames=("chunk",))


def _pad_to(a: np.ndarray, shape, value) -> np.ndarray:
  out = np.full(shape, value, a.dtype)
  out[tuple(slice(0, n) for n in a.shape)] = a
  return out


def _device_inputs(regions: Sequence[Regions], attrs: Sequence[np.ndarray], chunk: int):
  """Padded batch arrays. Padding atom A-1 and mask M-1 are dummies: never uncovered, never
  remaining; -1 entries of the tables point at them."""
  b = _bucket(len(regions), 4)
  m = _bucket(max(len(r.kept) for r in regions) + 1, 64)
  a = _bucket(max(r.num_atoms for r in regions) + 1, 512)
  n = _bucket(max(len(r.pairs[0]) for r in regions), max(2048, chunk))
  depth = -(-max(r.atom_masks.shape[1] for r in regions) // 8) * 8  # masks per atom: few
  pair_atoms = np.full((b, n), a - 1, np.int32)
  mask_start = np.zeros((b, m), np.int32)
  mask_len = np.zeros((b, m), np.int32)
  atom_masks = np.full((b, a, depth), m - 1, np.int32)
  atom_cnt = np.zeros((b, a, 2), np.int32)
  atom_vals = np.zeros((b, a, 2))
  cnt, nonzero = np.zeros((b, m), np.int32), np.zeros((b, m), np.int32)
  tot, ab = np.zeros((b, m)), np.zeros((b, m))
  uncovered = np.zeros((b, a), bool)
  remaining = np.zeros((b, m), bool)
  status = np.full(b, _DONE, np.int32)
  for i, (r, flat) in enumerate(zip(regions, attrs)):
    nm, na = len(r.kept), r.num_atoms
    rows, cols = r.pairs
    pair_atoms[i, : len(cols)] = cols
    mask_len[i, :nm] = np.bincount(rows, minlength=nm)
    mask_start[i, :nm] = np.cumsum(mask_len[i, :nm]) - mask_len[i, :nm]
    atom_masks[i, :na, : r.atom_masks.shape[1]] = np.where(r.atom_masks < 0, m - 1, r.atom_masks)
    f64 = flat.astype(np.float64)
    atom_cnt[i, :na, 0] = np.bincount(r.atom_of_pixel, minlength=na)
    atom_cnt[i, :na, 1] = np.bincount(r.atom_of_pixel, weights=f64 != 0, minlength=na)
    atom_vals[i, :na, 0] = np.bincount(r.atom_of_pixel, weights=f64, minlength=na)
    atom_vals[i, :na, 1] = np.bincount(r.atom_of_pixel, weights=np.abs(f64), minlength=na)
    cnt[i, :nm] = np.bincount(rows, weights=atom_cnt[i, cols, 0], minlength=nm)
    nonzero[i, :nm] = np.bincount(rows, weights=atom_cnt[i, cols, 1], minlength=nm)
    tot[i, :nm] = np.bincount(rows, weights=atom_vals[i, cols, 0], minlength=nm)
    ab[i, :nm] = np.bincount(rows, weights=atom_vals[i, cols, 1], minlength=nm)
    uncovered[i, :na] = True
    remaining[i, :nm] = True
    status[i] = _ACTIVE
  # Float64 drift of the incremental updates (far below the float32 bound).
  floor = 1e-12 * ab
  state = _State(
    cnt=cnt,
    nonzero=nonzero,
    tot=tot,
    ab=ab,
    uncovered=uncovered,
    remaining=remaining,
    atom_step=np.full((b, a), -1, np.int32),
    n=np.zeros(b, np.int32),
    covered=np.zeros(b, np.int32),
    status=status,
    near=np.zeros((b, m), bool),
    forced=np.full(b, -1, np.int32),
  )
  return state, (pair_atoms, mask_start, mask_len, atom_masks, atom_cnt, atom_vals, floor)


def _values(flat: np.ndarray, pixel_step: np.ndarray, steps: int) -> np.ndarray:
  """PAIR's map: each step's new pixels get their float32 mean (NumPy's, of the pixels in
  row-major order, as PAIR's attr[mask_diff].mean()); uncovered pixels the mean of theirs."""
  order = np.argsort(pixel_step, kind="stable")
  values = flat[order]
  bounds = np.searchsorted(pixel_step[order], np.arange(-1, steps + 1))
  out = np.empty(flat.size)
  for k in range(-1, steps):
    lo, hi = bounds[k + 1], bounds[k + 2]
    if hi > lo:
      out[order[lo:hi]] = values[lo:hi].mean()
  return out


class Selection(NamedTuple):
  maps: np.ndarray  # float64 [B,H,W] (float32 values)
  host_decisions: int  # near-ties decided on the host
  on_device: int  # images selected on the device (not those without masks)


def select_full_batch(
  attrs: Sequence[np.ndarray],
  segments: Sequence[np.ndarray | Regions],
  *,
  area_threshold: float = 1.0,
  min_pixel_diff: int = 50,
  chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
  """PAIR's greedy "full" XRAI of every image on the device: float64 [B,H,W] (float32 values).

  Args:
    attrs: per image, attributions [H,W] (or [H,W,C], merged by max over channels as PAIR).
    segments: per image, bool masks [M,H,W] in PAIR's order, or their `prepare`d `Regions`.
    area_threshold, min_pixel_diff: as `xrai_selection.select_full`.
    chunk: atoms processed at once when a mask is added.

  Raises ValueError for NaN or infinite attributions (PAIR's selection has no answer for them).
  """
  return select_full_batch_details(
    attrs, segments, area_threshold=area_threshold, min_pixel_diff=min_pixel_diff, chunk=chunk
  ).maps


def select_full_batch_details(
  attrs, segments, *, area_threshold=1.0, min_pixel_diff=50, chunk=DEFAULT_CHUNK
) -> Selection:
  """`select_full_batch` with how the work went (for tests and the benchmark)."""
  if len(attrs) != len(segments):
    raise ValueError(f"{len(attrs)} attributions but {len(segments)} segment lists")
  if min_pixel_diff < 1:
    raise ValueError(f"min_pixel_diff must be >= 1, got {min_pixel_diff}")
  if not len(attrs):
    return Selection(np.zeros((0, 0, 0)), 0, 0)
  flats, regions, shape = [], [], None
  for attr, seg in zip(attrs, segments):
    attr = np.asarray(attr)
    if attr.ndim == 3:
      attr = attr.max(axis=-1)
    if attr.ndim != 2 or (shape is not None and attr.shape != shape):
      raise ValueError(
        f"attributions must be [H,W] or [H,W,C] of one size, got shape {np.shape(attr)}"
      )
    shape = attr.shape
    regions.append(seg if isinstance(seg, Regions) else prepare(seg, shape))
    if regions[-1].shape != shape:
      raise ValueError(f"segments of shape {regions[-1].shape} for attributions {shape}")
    if not np.isfinite(attr).all():
      raise ValueError(f"XRAI attributions of image {len(flats)} contain NaN or infinite values")
    flats.append(np.ascontiguousarray(attr.reshape(-1)))
  out = np.empty((len(flats),) + shape)
  # Images without masks: no selection, the mean everywhere (as PAIR).
  device = [i for i, r in enumerate(regions) if len(r.kept)]
  for i in sorted(set(range(len(flats))) - set(device)):
    out[i] = xrai_selection.select_full(
      flats[i].reshape(shape),
      regions[i].masks.reshape((-1,) + shape),
      area_threshold=area_threshold,
      min_pixel_diff=min_pixel_diff,
    )
  if not device:
    return Selection(out, 0, 0)
  decisions = 0
  num_pixels = int(np.prod(shape))
  with jax.enable_x64(True):
    state, consts = _device_inputs([regions[i] for i in device], [flats[i] for i in device], chunk)
    consts = jax.device_put(consts)
    state = jax.device_put(state)
    # Traced scalars: one compilation per padded shape.
    scalars = dict(
      min_pixel_diff=jnp.asarray(min_pixel_diff, jnp.float64),
      area_threshold=jnp.asarray(area_threshold, jnp.float64),
      num_pixels=jnp.asarray(num_pixels, jnp.float64),
    )

    def run(s):
      return _run(s, consts, **scalars, chunk=int(chunk))

    state = run(state)
    while True:
      status = np.array(state.status)
      stalled = np.flatnonzero(status == _STALLED)
      if not len(stalled):
        break
      forced = np.full(len(status), -1, np.int32)
      uncovered, near = np.asarray(state.uncovered), np.asarray(state.near)
      for k in stalled:
        r, flat = regions[device[k]], flats[device[k]]
        fresh = uncovered[k, : r.num_atoms][r.atom_of_pixel]  # pixels not yet covered
        candidates = np.flatnonzero(near[k])
        exact = [flat[r.masks[r.kept[c]] & fresh].mean() for c in candidates]
        forced[k] = candidates[int(np.argmax(exact))]  # the first maximum, as PAIR's ">" scan
      decisions += len(stalled)
      status[stalled] = _ACTIVE
      state = run(state._replace(forced=jnp.asarray(forced), status=jnp.asarray(status)))
    atom_step, steps = np.asarray(state.atom_step), np.asarray(state.n)
  for k, i in enumerate(device):
    r = regions[i]
    pixel_step = atom_step[k, : r.num_atoms][r.atom_of_pixel]
    out[i] = _values(flats[i], pixel_step, int(steps[k])).reshape(shape)
  return Selection(out, decisions, len(device))
