"""How attribution methods and map generation are planned and cached (private).

One home for the decisions about where and in what pieces a computation runs:

  cached(key, build, owner=None)  the one cache of compiled functions (least recently used
                                  entries dropped): the methods' jitted computations
                                  (`cached_jit`), the host loops' jitted gradients
                                  (`_engine.jitted_gradients`) and the map generator's sharded
                                  runners (`maps.generate`)
  chunk plans                     `chunk_size`, `plan_chunks` and `scan`: how many model
                                  gradients run at once inside one computation (at most
                                  max_grads_in_flight), and when a loop is unrolled on the CPU
  the CPU plan                    `make_compute`: on the CPU backend an eager `compute` splits
                                  the batch into calls of about CPU_GRADS_PER_CALL gradients
                                  (groups of images, or windows of (image, item) pairs for the
                                  methods that sum over samples or steps: `item_window`, read
                                  by the sums with `take_item_window`)
  memory                          `_memory`: max_grads_in_flight="auto" (the default) is
                                  chosen from the device's free memory
  settings                        `merge_settings` (defaults updated by a dict or ConfigDict),
                                  `frozen` (a hashable form), `default_key`

Maps do not depend on the plan (to float32 rounding where an image's items are split).
"""

import collections
from collections.abc import Callable, Mapping
import contextlib
import contextvars
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attributions import _memory
from saliency_jax.attributions import _precision
from saliency_jax.attributions.grayscale import visualize

Array = jax.Array
Settings = Mapping[str, Any]

# Default cap on model gradients evaluated at once (a chunk of the work of one call).
DEFAULT_MAX_GRADS_IN_FLIGHT = 64

# XLA:CPU runs the body of a while loop about 5x slower than the same ops outside a loop
# (measured here: a scan of one conv-net gradient chunk vs the chunk alone). On the CPU backend
# loops of up to this many iterations are therefore unrolled; longer ones stay loops (bounded
# compile time and memory; raise max_grads_in_flight to make them shorter).
CPU_MAX_UNROLL = 64


_CACHE: "collections.OrderedDict[Any, tuple[Any, Any]]" = collections.OrderedDict()
CACHE_SIZE = 128


def cached(key: Any, build: Callable[[], Any], owner: Any = None) -> Any:
  """build()'s result for `key`, built once while it stays among the CACHE_SIZE most recently
  used entries. `owner`: the object a key built from id(owner) belongs to; an entry of another
  object (a recycled id) is built again."""
  entry = _CACHE.get(key)
  if entry is None or (owner is not None and entry[0] is not owner):
    entry = (owner, build())
    _CACHE[key] = entry
  _CACHE.move_to_end(key)
  while len(_CACHE) > CACHE_SIZE:
    _CACHE.popitem(last=False)
  return entry[1]


# Settings every method accepts (on top of its own).
COMMON_SETTINGS = {
  # "auto": as many as fit in the device's free memory, at most 64 (`_memory`); a number: that.
  "max_grads_in_flight": "auto",
  # The model passes' dtype: "float32" or "bfloat16" (`_precision`; docs/benchmarks.md gives
  # how much bfloat16 moves the metrics).
  "compute_dtype": "float32",
  "grayscale_percentile": 99,
  "grayscale_nan_to": None,
  "visualization": "grayscale",
}


def merge_settings(defaults: Mapping[str, Any], settings: Settings | None) -> dict:
  """defaults updated by settings (dict or ConfigDict); unknown keys raise ValueError."""
  merged = dict(defaults)
  if settings is None:
    return merged
  if hasattr(settings, "to_dict"):
    settings = settings.to_dict()
  unknown = sorted(set(settings) - set(merged))
  if unknown:
    raise ValueError(f"unknown settings {unknown}; known: {sorted(merged)}")
  merged.update(settings)
  return merged


def frozen(settings: Mapping[str, Any]) -> tuple:
  def freeze(v):
    if isinstance(v, (list, tuple)):
      return tuple(freeze(x) for x in v)
    if isinstance(v, np.ndarray):
      return (v.shape, v.tobytes())
    return v

  return tuple(sorted((k, freeze(v)) for k, v in settings.items()))


def _is_array_pytree(tree: Any) -> bool:
  return all(isinstance(x, (jax.Array, np.ndarray)) for x in jax.tree.leaves(tree))


def cached_jit(
  impl: Callable, name: str, model_fns: Any, settings: dict, donate: tuple[int, ...] = ()
) -> Callable:
  """jit(impl) for this model_fns/settings; returns run(images, targets, indices, key, prepared).

  impl(model_fns, settings, images, targets, indices, key, prepared, *extra) -> maps.
  donate: positions in run's arguments whose buffers the call may reuse.
  """
  frozen_settings = frozen(settings)
  if _is_array_pytree(model_fns):
    fn = cached(
      ("method", name, frozen_settings, "pytree"),
      lambda: jax.jit(
        lambda fns, *args: impl(fns, settings, *args), donate_argnums=tuple(i + 1 for i in donate)
      ),
    )
    return functools.partial(fn, model_fns)
  return cached(
    ("method", name, frozen_settings, id(model_fns)),
    lambda: jax.jit(lambda *args: impl(model_fns, settings, *args), donate_argnums=donate),
    owner=model_fns,
  )


def default_key(key):
  return _key_zero() if key is None else key


@functools.cache
def _key_zero():
  """jax.random.key(0), made once: making a key is a dispatch (0.7 ms on the CPU)."""
  return jax.random.key(0)


def scan(body, carry, xs=None, length=None):
  """lax.scan; on the CPU backend a short one is a Python loop (straight-line code).

  (`lax.scan(unroll=True)` still emits a while loop, with one trip, which keeps the slow path.)
  """
  n = length if xs is None else jax.tree.leaves(xs)[0].shape[0]
  if not (jax.default_backend() == "cpu" and n <= CPU_MAX_UNROLL):
    return jax.lax.scan(body, carry, xs, length=length)
  ys = []
  for i in range(n):
    carry, y = body(carry, i if xs is None else jax.tree.map(lambda a: a[i], xs))
    ys.append(y)
  if not ys or ys[0] is None:
    return carry, None
  return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)


def chunk_size(total: int, max_grads_in_flight: int | None) -> int:
  cap = DEFAULT_MAX_GRADS_IN_FLIGHT if max_grads_in_flight is None else int(max_grads_in_flight)
  if cap < 1:
    raise ValueError(f"max_grads_in_flight must be >= 1, got {cap}")
  return max(1, min(cap, total))


# On the CPU backend chunks are at most this large (unless that would need more than
# CPU_MAX_UNROLL of them). Per-gradient cost varies little between batches of 8 and 64 there,
# while every chunk is a copy of the gradient in the unrolled program: larger chunks compile
# faster (measured: 25-sample SmoothGrad of 8 64x64 images, 4 s with chunks of 64 vs 8 s of 16).
CPU_CHUNK = 64


def plan_chunks(total: int, max_grads_in_flight: int | None) -> tuple[int, int]:
  """(number of chunks, chunk size) for `total` items: equal chunks within the cap."""
  c = chunk_size(total, max_grads_in_flight)
  if jax.default_backend() == "cpu":
    c = min(c, max(CPU_CHUNK, math.ceil(total / CPU_MAX_UNROLL)))
  n_chunks = math.ceil(total / c)
  return n_chunks, math.ceil(total / n_chunks)


# The CPU plan: XLA:CPU computes gradients fastest in mid-sized batches, one batch per call
# (small_vgg at 64x64: 0.52 ms per gradient in batches of 32, 0.60 of 16 or 25, 0.76 of 64, 0.96
# of 1; two batches in one program 1.1-1.2x slower than in two calls), so on the CPU backend an
# eager `compute` splits the work into calls of about this many gradients, each one call of the
# same cached compilation with one chunk of at most this many gradients.
CPU_GRADS_PER_CALL = 32


def make_compute(
  name: str,
  impl: Callable,
  defaults: Mapping[str, Any],
  grads_per_map: Callable[[dict], int] | None = None,
  item_split: tuple[Callable, Callable[[dict], int], Callable[[dict], int]] | None = None,
  grayscale: bool = True,
) -> Callable:
  """A `compute` that merges settings, validates inputs and runs impl jitted.

  impl(model_fns, settings, images, targets, indices, key, prepared) -> float32 [B,H,W].
  grads_per_map(settings): model gradients per map, for the CPU plan (None: no split).
  item_split: (attr, items_per_map, grads_per_item) of a method whose attributions are a sum
    over (image, item) pairs (SmoothGrad's samples, IG's steps, SIG's noisy copies). Its CPU
    plan runs windows of max_grads_in_flight // grads_per_item consecutive items (image-major,
    so a window may span images; max_grads_in_flight is capped at CPU_GRADS_PER_CALL there),
    each one call adding its part to the running sums, then
    the grayscale step: every call then evaluates one full chunk of gradients (XLA:CPU runs
    several chunks in one program 1.1-1.2x slower than in separate calls, and a batch of 25
    7% slower than one of 32). attr(model_fns, settings, images, targets, indices, key) ->
    float32 [B,H,W,C], all items, or only the window's when traced inside `item_window`.
  grayscale: whether the item split's sums are turned into maps (False: impl returns the
    attributions themselves, and so does compute).
  Maps do not depend on the split (to float32 rounding where items are split): noise keys
  come from each image's `indices` entry and sample number.
  A `compute_dtype` setting (in defaults) runs impl's and attr's model passes in that dtype.
  """
  if "compute_dtype" in defaults:
    impl = _precision.with_compute_dtype(impl)
    if item_split is not None:
      item_split = (_precision.with_compute_dtype(item_split[0]),) + tuple(item_split[1:])

  def compute(model_fns, images, targets, *, indices=None, key=None, settings=None, prepared=None):
    s = merge_settings(defaults, settings)
    if "compute_dtype" in s:
      _precision.check(s["compute_dtype"], name)
    traced = any(isinstance(a, jax.core.Tracer) for a in (images, targets, indices))
    cpu_plan = not traced and grads_per_map is not None and jax.default_backend() == "cpu"
    # The CPU plan slices its groups on the host: each slice of a device array is a dispatch.
    xp = np if cpu_plan else jnp
    images = xp.asarray(images, xp.float32)
    if images.ndim != 4:
      raise ValueError(f"images must be [B,H,W,C], got shape {images.shape}")
    targets = xp.asarray(targets, xp.int32)
    b = images.shape[0]
    indices = xp.arange(b, dtype=xp.int32) if indices is None else xp.asarray(indices, xp.int32)
    if indices.shape != (b,) or targets.shape != (b,):
      raise ValueError(f"targets and indices must have shape ({b},)")
    key = default_key(key)
    s = _memory.fitted(s, model_fns, images.shape)
    if not cpu_plan:
      return cached_jit(impl, name, model_fns, s)(images, targets, indices, key, prepared)
    # CPU plan: groups of images, each one call of one compilation (the last group padded).
    s = {**s, "max_grads_in_flight": min(int(s["max_grads_in_flight"]), CPU_GRADS_PER_CALL)}
    arrays = (images, targets, indices)
    if item_split is not None:
      return _split_items(name, *item_split, model_fns, s, arrays, key, prepared, grayscale)
    per_call = min(b, max(1, CPU_GRADS_PER_CALL // max(1, int(grads_per_map(s)))))
    run = cached_jit(impl, name, model_fns, s)
    pad = -b % per_call
    if pad:
      arrays = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
    outs = [
      run(*(a[i : i + per_call] for a in arrays), key, prepared)
      for i in range(0, b + pad, per_call)
    ]
    out = jnp.concatenate(outs) if len(outs) > 1 else outs[0]
    return out[:b] if pad else out

  compute.__name__ = f"compute_{name.lower()}"
  compute.__doc__ = f"The study's {name} map, float32 [B,H,W] in [0,1]; see `MapMethod`."
  return compute


def _split_items(
  name, attr, items_per_map, grads_per_item, model_fns, s, arrays, key, prepared, grayscale=True
):
  """The CPU plan of `make_compute(item_split=...)`: windows of items, one call each."""
  b = arrays[0].shape[0]
  items = int(items_per_map(s))
  # One chunk per call: at most max_grads_in_flight (itself at most CPU_GRADS_PER_CALL).
  window = max(1, int(s["max_grads_in_flight"]) // max(1, int(grads_per_item(s))))
  span = min(b, -(-(window - 1) // items) + 1)  # images a window can touch
  if span > 1:  # pad so that every window's images are rows first .. first + span - 1
    arrays = [np.concatenate([a, np.repeat(a[-1:], span - 1, axis=0)]) for a in arrays]
  s = {**s, "window_items": window}
  run = cached_jit(_add_window(attr), f"{name}/window", model_fns, s, donate=(7,))
  totals = jnp.zeros(arrays[0].shape, jnp.float32)
  for start in range(0, b * items, window):
    first = start // items
    totals = run(
      *(a[first : first + span] for a in arrays),
      key,
      prepared,
      start - first * items,
      first,
      totals,
    )
  maps = _jitted_visualize(frozen(s))(totals) if grayscale else totals
  return maps[:b] if span > 1 else maps


def _add_window(attr):
  """impl(..., prepared, offset, first, totals): totals with the window's part added to rows
  first, first + 1, ... (the window's images)."""

  def impl(fns, s, images, targets, indices, key, prepared, offset, first, totals):
    del prepared
    with item_window(offset, s["window_items"]):
      part = attr(fns, s, images, targets, indices, key)
    start = (first,) + (0,) * (totals.ndim - 1)
    current = jax.lax.dynamic_slice(totals, start, part.shape)
    return jax.lax.dynamic_update_slice(totals, current + part, start)

  return impl


_ITEM_WINDOW = contextvars.ContextVar("item_window", default=None)


@contextlib.contextmanager
def item_window(offset, count: int):
  """While tracing inside: the method's sum over (image, item) pairs, enumerated image-major,
  takes only items offset .. offset + count - 1 (offset may be traced; items past the end count
  as zero), so that disjoint windows add up to the whole sum (the CPU plan's windows)."""
  token = _ITEM_WINDOW.set((offset, count))
  try:
    yield
  finally:
    _ITEM_WINDOW.reset(token)


def take_item_window(total: int) -> tuple[Any, int]:
  """(offset, count) of the current `item_window`, else (0, total): every item. The window is
  taken by the outermost sum: sums nested in it (SIG's IG of one noisy copy) take every item."""
  window = _ITEM_WINDOW.get()
  if window is None:
    return 0, total
  _ITEM_WINDOW.set(None)  # restored when the `item_window` block ends
  return window


def _jitted_visualize(frozen_settings):
  settings = dict(frozen_settings)
  return cached(
    ("visualize", frozen_settings), lambda: jax.jit(lambda maps: visualize(maps, settings))
  )
