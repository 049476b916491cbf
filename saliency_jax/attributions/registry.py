"""The study's saliency methods by name: `METHODS[name].compute(model_fns, images, targets, ...)`.

Every `compute` returns the study's 2-D map, float32 [B,H,W] in [0,1] (PAIR's
VisualizeImageGrayscale applied to the method's raw output; NaN where a map is constant, as in
the study's pipeline unless the setting `grayscale_nan_to` is a number). The setting
`visualization="diverging"` keeps the sign instead: PAIR's VisualizeImageDiverging of the
channel sum (0.5 where it is 0; GGCAM is then the signed guided backprop times the Grad-CAM
grayscale, Selvaraju et al.'s product). Settings are a plain dict
or ConfigDict overriding `default_settings` (the paper's values); unknown keys are an error.

Compilation. Each (method, settings, image shape) runs as one jitted computation, and `compute`
also traces inside a caller's jit (except XRAI and Guided IG: `traceable=False`). If `model_fns`
is a pytree whose leaves are arrays (our `ModelFunctions`: a Flax model's variables are its
leaves), it is an argument of the jitted computation, so one compilation serves every model state
of an architecture (replicates, randomization steps); otherwise its functions are closed over and
the computation is compiled once per `model_fns` object (cached).

CPU plan. On the CPU backend an eager `compute` splits the batch into calls of about
`CPU_GRADS_PER_CALL` gradients, each one call of the same compilation: groups of images, or for
methods summing over samples or steps windows of (image, sample) items that may span images
(`make_compute`'s item_split); `MapMethod.jittable` is False there, telling callers to call
`compute` eagerly. Maps do not depend on the grouping (to float32 rounding where an image's
samples are split).

Noise. `key` (default `jax.random.key(0)`) is folded with each image's `indices` entry (default
0..B-1), so a map depends only on the key, the image and its dataset index.
"""
import collections
import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import numpy as np
import jax
import jax.numpy as jnp

from saliency_jax.attributions.blur_ig import blur_ig
from saliency_jax.attributions.gradcam import gradcam
from saliency_jax.attributions.gradient import gradient
from saliency_jax.attributions.grayscale import to_diverging
from saliency_jax.attributions.grayscale import to_grayscale
from saliency_jax.attributions.guided_backprop import guided_backprop
from saliency_jax.attributions.guided_ig import guided_ig
from saliency_jax.attributions.occlusion import occlusion
from saliency_jax.attributions.integrated_gradients import integrated_gradients
from saliency_jax.attributions.smooth_integrated_gradients import smooth_integrated_gradients
from saliency_jax.attributions.smoothgrad import smoothgrad
from saliency_jax.attributions import xrai as xrai_lib
from saliency_jax.attributions import xrai_segments

Array = jax.Array
Settings = Mapping[str, Any]

# Settings every method accepts (on top of its own).
COMMON_SETTINGS = {"max_grads_in_flight": 64, "grayscale_percentile": 99,
                   "grayscale_nan_to": None, "visualization": "grayscale"}
VISUALIZATIONS = ("grayscale", "diverging")


@dataclasses.dataclass(frozen=True)
class MapMethod:
  """A saliency method as the study uses it.

  Attributes:
    name: the study's name (GRAD, SG, ...).
    compute: compute(model_fns, images, targets, *, indices, key, settings, prepared=None)
      -> float32 [B,H,W] in [0,1].
    prepare: prepare(images, settings) -> model-independent data for `compute` (XRAI segments),
      computed once per batch of images and reused for every model state; None if not needed.
    default_settings: the paper's settings.
    traceable: whether `compute` can be traced under an outer `jax.jit` (False for XRAI, whose
      segment handling and region selection run on the host, and Guided IG).
  """
  name: str
  compute: Callable[..., Array]
  prepare: Optional[Callable[[Array, Settings], Any]] = None
  default_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  traceable: bool = True

  @property
  def jittable(self) -> bool:
    """Whether a caller should wrap `compute` in its own jit: never on the CPU backend, where
    `compute` runs its own plan (see `make_compute`); else when traceable."""
    return self.traceable and jax.default_backend() != "cpu"


def merge_settings(defaults: Mapping[str, Any], settings: Optional[Settings]) -> dict:
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


def _frozen(settings: Mapping[str, Any]) -> tuple:
  def freeze(v):
    if isinstance(v, (list, tuple)):
      return tuple(freeze(x) for x in v)
    if isinstance(v, np.ndarray):
      return (v.shape, v.tobytes())
    return v
  return tuple(sorted((k, freeze(v)) for k, v in settings.items()))


def _is_array_pytree(tree: Any) -> bool:
  return all(isinstance(x, (jax.Array, np.ndarray)) for x in jax.tree.leaves(tree))


_JIT_CACHE: "collections.OrderedDict[Any, Callable]" = collections.OrderedDict()
_JIT_CACHE_SIZE = 64


def _cached_jit(impl: Callable, name: str, model_fns: Any, settings: dict,
                donate: tuple[int, ...] = ()) -> Callable:
  """jit(impl) for this model_fns/settings; returns run(images, targets, indices, key, prepared).

  impl(model_fns, settings, images, targets, indices, key, prepared, *extra) -> maps.
  donate: positions in run's arguments whose buffers the call may reuse.
  """
  frozen = _frozen(settings)
  if _is_array_pytree(model_fns):
    cache_key = (name, frozen, "pytree")
    if cache_key not in _JIT_CACHE:
      _JIT_CACHE[cache_key] = jax.jit(
          lambda fns, *args: impl(fns, settings, *args),
          donate_argnums=tuple(i + 1 for i in donate))
    fn = _JIT_CACHE[cache_key]
    run = functools.partial(fn, model_fns)
  else:
    cache_key = (name, frozen, id(model_fns))
    entry = _JIT_CACHE.get(cache_key)
    if entry is None or entry[0] is not model_fns:
      entry = (model_fns, jax.jit(lambda *args: impl(model_fns, settings, *args),
                                  donate_argnums=donate))
      _JIT_CACHE[cache_key] = entry
    run = entry[1]
  _JIT_CACHE.move_to_end(cache_key)
  while len(_JIT_CACHE) > _JIT_CACHE_SIZE:
    _JIT_CACHE.popitem(last=False)
  return run


def _default_key(key):
  return _key_zero() if key is None else key


@functools.cache
def _key_zero():
  """jax.random.key(0), made once: making a key is a dispatch (0.7 ms on the CPU)."""
  return jax.random.key(0)


# The CPU plan: XLA:CPU computes gradients fastest in mid-sized batches, one batch per call
# (small_vgg at 64x64: 0.52 ms per gradient in batches of 32, 0.60 of 16 or 25, 0.76 of 64, 0.96
# of 1; two batches in one program 1.1-1.2x slower than in two calls), so on the CPU backend an
# eager `compute` splits the work into calls of about this many gradients, each one call of the
# same cached compilation with one chunk of at most this many gradients.
CPU_GRADS_PER_CALL = 32


def make_compute(name: str, impl: Callable, defaults: Mapping[str, Any],
                 grads_per_map: Optional[Callable[[dict], int]] = None,
                 item_split: Optional[tuple[Callable, Callable[[dict], int],
                                            Callable[[dict], int]]] = None,
                 grayscale: bool = True) -> Callable:
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
    7% slower than one of 32). attr(model_fns, settings, images, targets, indices, key,
    item_window) -> float32 [B,H,W,C]; item_window=None: all items.
  grayscale: whether the item split's sums are turned into maps (False: impl returns the
    attributions themselves, and so does compute).
  Maps do not depend on the split (to float32 rounding where items are split): noise keys
  come from each image's `indices` entry and sample number.
  """
  def compute(model_fns, images, targets, *, indices=None, key=None, settings=None,
              prepared=None):
    s = merge_settings(defaults, settings)
    traced = any(isinstance(a, jax.core.Tracer) for a in (images, targets, indices))
    cpu_plan = not traced and grads_per_map is not None and jax.default_backend() == "cpu"
    # The CPU plan slices its groups on the host: each slice of a device array is a dispatch.
    xp = np if cpu_plan else jnp
    images = xp.asarray(images, xp.float32)
    if images.ndim != 4:
      raise ValueError(f"images must be [B,H,W,C], got shape {images.shape}")
    targets = xp.asarray(targets, xp.int32)
    b = images.shape[0]
    indices = (xp.arange(b, dtype=xp.int32) if indices is None
               else xp.asarray(indices, xp.int32))
    if indices.shape != (b,) or targets.shape != (b,):
      raise ValueError(f"targets and indices must have shape ({b},)")
    key = _default_key(key)
    if not cpu_plan:
      return _cached_jit(impl, name, model_fns, s)(images, targets, indices, key, prepared)
    # CPU plan: groups of images, each one call of one compilation (the last group padded).
    s = {**s, "max_grads_in_flight": min(int(s["max_grads_in_flight"]), CPU_GRADS_PER_CALL)}
    arrays = (images, targets, indices)
    if item_split is not None:
      return _split_items(name, *item_split, model_fns, s, arrays, key, prepared, grayscale)
    per_call = min(b, max(1, CPU_GRADS_PER_CALL // max(1, int(grads_per_map(s)))))
    run = _cached_jit(impl, name, model_fns, s)
    pad = -b % per_call
    if pad:
      arrays = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
    outs = [run(*(a[i:i + per_call] for a in arrays), key, prepared)
            for i in range(0, b + pad, per_call)]
    out = jnp.concatenate(outs) if len(outs) > 1 else outs[0]
    return out[:b] if pad else out
  compute.__name__ = f"compute_{name.lower()}"
  compute.__doc__ = f"The study's {name} map, float32 [B,H,W] in [0,1]; see `MapMethod`."
  return compute


def _split_items(name, attr, items_per_map, grads_per_item, model_fns, s, arrays, key,
                 prepared, grayscale=True):
  """The CPU plan of `make_compute(item_split=...)`: windows of items, one call each."""
  b = arrays[0].shape[0]
  items = int(items_per_map(s))
  # One chunk per call: at most max_grads_in_flight (itself at most CPU_GRADS_PER_CALL).
  window = max(1, int(s["max_grads_in_flight"]) // max(1, int(grads_per_item(s))))
  span = min(b, -(-(window - 1) // items) + 1)     # images a window can touch
  if span > 1:   # pad so that every window's images are rows first .. first + span - 1
    arrays = [np.concatenate([a, np.repeat(a[-1:], span - 1, axis=0)]) for a in arrays]
  s = {**s, "window_items": window}
  run = _cached_jit(_add_window(attr), f"{name}/window", model_fns, s, donate=(7,))
  totals = jnp.zeros(arrays[0].shape, jnp.float32)
  for start in range(0, b * items, window):
    first = start // items
    totals = run(*(a[first:first + span] for a in arrays), key, prepared,
                 start - first * items, first, totals)
  maps = _jitted_gray(_frozen(s))(totals) if grayscale else totals
  return maps[:b] if span > 1 else maps


def _add_window(attr):
  """impl(..., prepared, offset, first, totals): totals with the window's part added to rows
  first, first + 1, ... (the window's images)."""
  def impl(fns, s, images, targets, indices, key, prepared, offset, first, totals):
    del prepared
    part = attr(fns, s, images, targets, indices, key, (offset, s["window_items"]))
    start = (first,) + (0,) * (totals.ndim - 1)
    current = jax.lax.dynamic_slice(totals, start, part.shape)
    return jax.lax.dynamic_update_slice(totals, current + part, start)
  return impl


@functools.lru_cache(maxsize=_JIT_CACHE_SIZE)
def _jitted_gray(frozen_settings):
  settings = dict(frozen_settings)
  return jax.jit(lambda maps: _gray(maps, settings))


def _gray(maps, s):
  """The 2-D map of raw attributions under the `visualization` setting."""
  if s["visualization"] == "diverging":
    return to_diverging(maps, s["grayscale_percentile"], nan_to=s["grayscale_nan_to"])
  if s["visualization"] != "grayscale":
    raise ValueError(f"visualization must be one of {VISUALIZATIONS}, got "
                     f"{s['visualization']!r}")
  return to_grayscale(maps, s["grayscale_percentile"], nan_to=s["grayscale_nan_to"])


def _grad_impl(fns, s, images, targets, indices, key, prepared):
  del indices, key, prepared
  return _gray(gradient(fns.logits_fn, images, targets,
                        max_grads_in_flight=s["max_grads_in_flight"]), s)


def _sg_attr(fns, s, images, targets, indices, key, item_window=None):
  return smoothgrad(fns.logits_fn, images, targets, key=key, samples=s["samples"],
                    spread=s["spread"], squared=s["squared"], indices=indices,
                    max_grads_in_flight=s["max_grads_in_flight"], item_window=item_window)


def _ig_attr(fns, s, images, targets, indices, key, item_window=None):
  del indices, key
  return integrated_gradients(fns.logits_fn, images, targets, baseline=s["baseline"],
                              steps=s["steps"], max_grads_in_flight=s["max_grads_in_flight"],
                              item_window=item_window)


def _sig_attr(fns, s, images, targets, indices, key, item_window=None):
  return smooth_integrated_gradients(
      fns.logits_fn, images, targets, key=key, samples=s["samples"], spread=s["spread"],
      squared=s["squared"], baseline=s["baseline"], steps=s["steps"], indices=indices,
      max_grads_in_flight=s["max_grads_in_flight"], item_window=item_window)


def _blur_ig_attr(fns, s, images, targets, indices, key, item_window=None):
  del indices, key
  return blur_ig(fns.logits_fn, images, targets, max_sigma=s["max_sigma"], steps=s["steps"],
                 grad_step=s["grad_step"], sqrt=s["sqrt"],
                 max_grads_in_flight=s["max_grads_in_flight"], item_window=item_window)


def _grayscale_of(attr):
  """The impl of a method whose map is the grayscale of attr's attributions."""
  def impl(fns, s, images, targets, indices, key, prepared):
    del prepared
    return _gray(attr(fns, s, images, targets, indices, key), s)
  return impl


def _gbp_attr(fns, s, images, targets):
  return guided_backprop(fns.guided_logits_fn, images, targets,
                         max_grads_in_flight=s["max_grads_in_flight"])


def _gbp_impl(fns, s, images, targets, indices, key, prepared):
  del indices, key, prepared
  return _gray(_gbp_attr(fns, s, images, targets), s)


def _gcam_impl(fns, s, images, targets, indices, key, prepared):
  del indices, key, prepared
  return _gray(gradcam(fns.features_fn, fns.head_fn, images, targets, resize=s["resize"],
                       max_grads_in_flight=s["max_grads_in_flight"]), s)


def _ggcam_impl(fns, s, images, targets, indices, key, prepared):
  if s["visualization"] == "diverging":
    gcam = _gcam_impl(fns, {**s, "visualization": "grayscale"}, images, targets, indices, key,
                      prepared)
    return _gray(_gbp_attr(fns, s, images, targets) * gcam[..., None], s)
  return _gbp_impl(fns, s, images, targets, indices, key, prepared) * _gcam_impl(
      fns, s, images, targets, indices, key, prepared)


def _guided_ig_impl(fns, s, images, targets, indices, key, prepared):
  del indices, key, prepared
  return _gray(guided_ig(fns.logits_fn, images, targets, baseline=s["baseline"],
                         steps=s["steps"], fraction=s["fraction"], max_dist=s["max_dist"],
                         max_grads_in_flight=s["max_grads_in_flight"]), s)


def _guided_ig_compute(model_fns, images, targets, *, indices=None, key=None, settings=None,
                       prepared=None):
  """GUIDED_IG: one jitted scan on accelerators, a host-driven step loop on the CPU backend
  (see `guided_ig.host_loop`); hence not traceable."""
  s = merge_settings(_GUIDED_IG_DEFAULTS, settings)
  if jax.default_backend() != "cpu":
    return make_compute("GUIDED_IG", _guided_ig_impl, _GUIDED_IG_DEFAULTS)(
        model_fns, images, targets, indices=indices, key=key, settings=settings,
        prepared=prepared)
  s = {**s, "max_grads_in_flight": min(int(s["max_grads_in_flight"]), CPU_GRADS_PER_CALL)}
  images = jnp.asarray(images, jnp.float32)
  return _guided_ig_impl(model_fns, s, images, jnp.asarray(targets, jnp.int32), None, None, None)


_GUIDED_IG_DEFAULTS = {**COMMON_SETTINGS, "baseline": 0.0, "steps": 200, "fraction": 0.25,
                       "max_dist": 0.02}


def _occlusion_impl(fns, s, images, targets, indices, key, prepared):
  del indices, key, prepared
  return _gray(occlusion(fns.logits_fn, images, targets, size=s["size"], value=s["value"],
                         max_grads_in_flight=s["max_grads_in_flight"]), s)


XRAI_DEFAULTS = {
    "steps": 100, "algorithm": "full", "area_threshold": 1.0, "min_pixel_diff": 50,
    "scales": xrai_segments.SCALES, "sigma": xrai_segments.SIGMA,
    "min_size": xrai_segments.MIN_SIZE, "segmentation_size": xrai_segments.RESIZE[0],
    "dilation_radius": xrai_segments.DILATION_RADIUS, "workers": None,
    # Alias of segmentation_size kept for older callers; "default" defers to it.
    "segment_resize": "default",
}


def _segmentation_size(size):
  """The `segmentation_size` setting (int: square; (h, w); None: the image's size)."""
  if size is None:
    return None
  if isinstance(size, (int, np.integer)):
    return (int(size), int(size))
  return tuple(int(v) for v in size)


def _xrai_prepare(images, settings=None):
  """XRAI's segments of each image (model-independent): a list of bool [M_i,H,W].

  The segmentation runs on the image resized to `segmentation_size` (PAIR: 224); the study's
  CPU demo sets it to the image size (a cubic resize to the same size: the image up to
  rounding), which keeps Felzenszwalb's cost proportional to the image.
  """
  return _xrai_prepare_async(images, settings)()


def _xrai_prepare_async(images, settings=None):
  s = merge_settings({**COMMON_SETTINGS, **XRAI_DEFAULTS}, settings)
  return xrai_segments.segment_batch_async(
      np.asarray(images, np.float32), workers=s["workers"], scales=tuple(s["scales"]),
      sigma=s["sigma"], min_size=s["min_size"],
      resize=_segmentation_size(s["segmentation_size"] if s["segment_resize"] == "default"
                                else s["segment_resize"]),
      dilation_radius=s["dilation_radius"])


def _xrai_ig_attr(fns, s, images, targets, indices, key, item_window=None):
  del indices, key
  return xrai_lib.xrai_base_attribution(fns.logits_fn, images, targets, steps=s["steps"],
                                        max_grads_in_flight=s["max_grads_in_flight"],
                                        item_window=item_window)


def _xrai_ig_impl(fns, s, images, targets, indices, key, prepared):
  del prepared
  return _xrai_ig_attr(fns, s, images, targets, indices, key)


# The jitted model part of XRAI, returning [B,H,W,C] attributions; on the CPU, windows of
# (image, step) items like IG's.
XRAI_IG_COMPUTE = make_compute("XRAI_IG", _xrai_ig_impl,
                               {"steps": 100, "max_grads_in_flight": 64},
                               lambda s: 2 * s["steps"],
                               item_split=(_xrai_ig_attr, lambda s: 2 * s["steps"],
                                           lambda s: 1),
                               grayscale=False)


def _xrai_compute(model_fns, images, targets, *, indices=None, key=None, settings=None,
                  prepared=None):
  """The study's XRAI map (host-side selection: not traceable under jit)."""
  del indices, key
  s = merge_settings({**COMMON_SETTINGS, **XRAI_DEFAULTS}, settings)
  images = np.asarray(images, np.float32)
  targets = np.asarray(targets, np.int32)
  ig_settings = {"steps": s["steps"], "max_grads_in_flight": s["max_grads_in_flight"]}
  # Segments (when not prepared) are computed in worker processes while IG runs.
  pending = _xrai_prepare_async(images, s) if prepared is None else (lambda: prepared)
  attributions = np.asarray(XRAI_IG_COMPUTE(model_fns, images, targets, settings=ig_settings))
  segments = pending()
  maps = xrai_lib.xrai(None, images, attributions=attributions, segments=segments,
                       algorithm=s["algorithm"], area_threshold=s["area_threshold"],
                       min_pixel_diff=s["min_pixel_diff"])
  return _gray(jnp.asarray(maps), s)


def _method(name, impl, own_defaults, grads_per_map=None):
  defaults = {**COMMON_SETTINGS, **own_defaults}
  return MapMethod(name=name, compute=make_compute(name, impl, defaults, grads_per_map),
                   default_settings=defaults)


def _summed_method(name, attr, own_defaults, items_per_map, grads_per_item):
  """A method whose attributions sum over (image, item) pairs: split by items on the CPU."""
  defaults = {**COMMON_SETTINGS, **own_defaults}
  compute = make_compute(name, _grayscale_of(attr), defaults,
                         lambda s: items_per_map(s) * grads_per_item(s),
                         item_split=(attr, items_per_map, grads_per_item))
  return MapMethod(name=name, compute=compute, default_settings=defaults)


def _build_methods() -> dict[str, MapMethod]:
  methods = [
      _method("GRAD", _grad_impl, {}, lambda s: 1),
      _summed_method("SG", _sg_attr, {"samples": 25, "spread": 0.15, "squared": True},
                     lambda s: s["samples"], lambda s: 1),
      _summed_method("IG", _ig_attr, {"steps": 10, "baseline": -1.0}, lambda s: s["steps"],
                     lambda s: 1),
      _summed_method("SIG", _sig_attr, {"samples": 25, "spread": 0.15, "squared": True,
                                        "steps": 10, "baseline": -1.0},
                     lambda s: s["samples"], lambda s: s["steps"]),
      _method("GCAM", _gcam_impl, {"resize": "tf1_bilinear"}, lambda s: 1),
      MapMethod("XRAI", _xrai_compute, prepare=_xrai_prepare,
                default_settings={**COMMON_SETTINGS, **XRAI_DEFAULTS}, traceable=False),
      _method("GBP", _gbp_impl, {}, lambda s: 1),
      _method("GGCAM", _ggcam_impl, {"resize": "tf1_bilinear"}, lambda s: 2),
      # Not in the study; PAIR's defaults.
      _summed_method("BLUR_IG", _blur_ig_attr, {"max_sigma": 50.0, "steps": 100,
                                                "grad_step": 0.01, "sqrt": False},
                     lambda s: s["steps"], lambda s: 1),
      MapMethod("GUIDED_IG", _guided_ig_compute, default_settings=_GUIDED_IG_DEFAULTS,
                traceable=False),
      _method("OCCLUSION", _occlusion_impl, {"size": 15, "value": 0.0}),
  ]
  return {m.name: m for m in methods}


METHODS: dict[str, MapMethod] = _build_methods()
