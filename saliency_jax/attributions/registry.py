"""The study's saliency methods by name: `METHODS[name].compute(model_fns, images, targets, ...)`.

Every `compute` returns the study's 2-D map, float32 [B,H,W] in [0,1] (PAIR's
VisualizeImageGrayscale applied to the method's raw output; NaN where a map is constant, as in
the study's pipeline unless the setting `grayscale_nan_to` is a number). The setting
`visualization="diverging"` keeps the sign instead: PAIR's VisualizeImageDiverging of the
channel sum (0.5 where it is 0; GGCAM is then the signed guided backprop times the Grad-CAM
grayscale, Selvaraju et al.'s product). Settings are a plain dict
or ConfigDict overriding `default_settings` (the paper's values); unknown keys are an error.

The table. `METHODS` is built by `_build_methods` from the public method functions
(`smoothgrad`, `integrated_gradients`, ...; PAIR-like signatures) and one adapter per method
(`_<name>_impl` / `_<name>_attr`: settings -> the function's arguments, then `visualize`;
XRAI's, with its host-side steps, in `xrai_method`). Settings every method accepts:
`_execution.COMMON_SETTINGS`. A method of your own is added with `custom.register(name, fn)`
(or `config.methods.custom`).

Compilation and the CPU plan live in `_execution`: each (method, settings, image shape) runs as
one jitted computation, and `compute` also traces inside a caller's jit (except XRAI and Guided
IG: `traceable=False`). If `model_fns` is a pytree whose leaves are arrays (our `ModelFunctions`:
a Flax model's variables are its leaves), it is an argument of the jitted computation, so one
compilation serves every model state of an architecture; otherwise the computation is compiled
once per `model_fns` object (cached). On the CPU backend an eager `compute` runs the CPU plan
(`_execution.make_compute`); `MapMethod.wrap_in_jit` is False there, telling callers to call
`compute` eagerly.

Noise. `key` (default `jax.random.key(0)`) is folded with each image's `indices` entry (default
0..B-1), so a map depends only on the key, the image and its dataset index.
"""

from collections.abc import Callable, Mapping
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from saliency_jax.attributions import _memory
from saliency_jax.attributions import _precision
from saliency_jax.attributions import xrai_method
from saliency_jax.attributions._execution import COMMON_SETTINGS
from saliency_jax.attributions._execution import CPU_GRADS_PER_CALL
from saliency_jax.attributions._execution import make_compute
from saliency_jax.attributions._execution import merge_settings
from saliency_jax.attributions.blur_ig import blur_ig
from saliency_jax.attributions.gradcam import gradcam
from saliency_jax.attributions.gradient import gradient
from saliency_jax.attributions.grayscale import visualize
from saliency_jax.attributions.guided_backprop import guided_backprop
from saliency_jax.attributions.guided_ig import guided_ig
from saliency_jax.attributions.integrated_gradients import integrated_gradients
from saliency_jax.attributions.occlusion import occlusion
from saliency_jax.attributions.smooth_integrated_gradients import smooth_integrated_gradients
from saliency_jax.attributions.smoothgrad import smoothgrad

Array = jax.Array
Settings = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class MapMethod:
  """A saliency method as the study uses it.

  Attributes:
    name: the study's name (GRAD, SG, ...).
    compute: compute(model_fns, images, targets, *, indices, key, settings, prepared=None)
      -> float32 [B,H,W] in [0,1].
    prepare: prepare(images, settings) -> model-independent data for `compute` (XRAI regions),
      computed once per batch of images and reused for every model state; None if not needed.
    default_settings: the paper's settings.
    traceable: whether `compute` can be traced under an outer `jax.jit` (False for XRAI, whose
      segment handling and region selection run on the host, and Guided IG).
  """

  name: str
  compute: Callable[..., Array]
  prepare: Callable[[Array, Settings], Any] | None = None
  default_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  traceable: bool = True

  @property
  def wrap_in_jit(self) -> bool:
    """Whether a caller should wrap `compute` in its own jit: never on the CPU backend, where
    `compute` runs its own plan (see `make_compute`); else when traceable."""
    return self.traceable and jax.default_backend() != "cpu"


def _grad_impl(fns, s, images, targets, indices, key, prepared):
  del indices, key, prepared
  return visualize(
    gradient(fns.logits_fn, images, targets, max_grads_in_flight=s["max_grads_in_flight"]), s
  )


def _sg_attr(fns, s, images, targets, indices, key):
  return smoothgrad(
    fns.logits_fn,
    images,
    targets,
    key=key,
    samples=s["samples"],
    spread=s["spread"],
    squared=s["squared"],
    indices=indices,
    max_grads_in_flight=s["max_grads_in_flight"],
  )


def _ig_attr(fns, s, images, targets, indices, key):
  del indices, key
  return integrated_gradients(
    fns.logits_fn,
    images,
    targets,
    baseline=s["baseline"],
    steps=s["steps"],
    max_grads_in_flight=s["max_grads_in_flight"],
  )


def _sig_attr(fns, s, images, targets, indices, key):
  return smooth_integrated_gradients(
    fns.logits_fn,
    images,
    targets,
    key=key,
    samples=s["samples"],
    spread=s["spread"],
    squared=s["squared"],
    baseline=s["baseline"],
    steps=s["steps"],
    indices=indices,
    max_grads_in_flight=s["max_grads_in_flight"],
  )


def _blur_ig_attr(fns, s, images, targets, indices, key):
  del indices, key
  return blur_ig(
    fns.logits_fn,
    images,
    targets,
    max_sigma=s["max_sigma"],
    steps=s["steps"],
    grad_step=s["grad_step"],
    sqrt=s["sqrt"],
    max_grads_in_flight=s["max_grads_in_flight"],
  )


def _grayscale_of(attr):
  """The impl of a method whose map is the grayscale of attr's attributions."""

  def impl(fns, s, images, targets, indices, key, prepared):
    del prepared
    return visualize(attr(fns, s, images, targets, indices, key), s)

  return impl


def _gbp_attr(fns, s, images, targets):
  return guided_backprop(
    fns.guided_logits_fn, images, targets, max_grads_in_flight=s["max_grads_in_flight"]
  )


def _gbp_impl(fns, s, images, targets, indices, key, prepared):
  del indices, key, prepared
  return visualize(_gbp_attr(fns, s, images, targets), s)


def _gcam_impl(fns, s, images, targets, indices, key, prepared):
  del indices, key, prepared
  return visualize(
    gradcam(
      fns.features_fn,
      fns.head_fn,
      images,
      targets,
      resize=s["resize"],
      max_grads_in_flight=s["max_grads_in_flight"],
    ),
    s,
  )


def _ggcam_impl(fns, s, images, targets, indices, key, prepared):
  if s["visualization"] == "diverging":
    gcam = _gcam_impl(
      fns, {**s, "visualization": "grayscale"}, images, targets, indices, key, prepared
    )
    return visualize(_gbp_attr(fns, s, images, targets) * gcam[..., None], s)
  return _gbp_impl(fns, s, images, targets, indices, key, prepared) * _gcam_impl(
    fns, s, images, targets, indices, key, prepared
  )


def _guided_ig_impl(fns, s, images, targets, indices, key, prepared):
  del indices, key, prepared
  return visualize(
    guided_ig(
      fns.logits_fn,
      images,
      targets,
      baseline=s["baseline"],
      steps=s["steps"],
      fraction=s["fraction"],
      max_dist=s["max_dist"],
      max_grads_in_flight=s["max_grads_in_flight"],
    ),
    s,
  )


def _guided_ig_compute(
  model_fns, images, targets, *, indices=None, key=None, settings=None, prepared=None
):
  """GUIDED_IG: one jitted scan on accelerators, a host-driven step loop on the CPU backend
  (see `guided_ig.host_loop`); hence not traceable."""
  s = merge_settings(_GUIDED_IG_DEFAULTS, settings)
  _precision.check(s["compute_dtype"], "GUIDED_IG", supported=False)
  images = jnp.asarray(images, jnp.float32)
  s = _memory.fitted(s, model_fns, images.shape)
  if jax.default_backend() != "cpu":
    return make_compute("GUIDED_IG", _guided_ig_impl, _GUIDED_IG_DEFAULTS)(
      model_fns, images, targets, indices=indices, key=key, settings=s, prepared=prepared
    )
  s = {**s, "max_grads_in_flight": min(int(s["max_grads_in_flight"]), CPU_GRADS_PER_CALL)}
  return _guided_ig_impl(model_fns, s, images, jnp.asarray(targets, jnp.int32), None, None, None)


_GUIDED_IG_DEFAULTS = {
  **COMMON_SETTINGS,
  "baseline": 0.0,
  "steps": 200,
  "fraction": 0.25,
  "max_dist": 0.02,
}


def _occlusion_impl(fns, s, images, targets, indices, key, prepared):
  del indices, key, prepared
  return visualize(
    occlusion(
      fns.logits_fn,
      images,
      targets,
      size=s["size"],
      value=s["value"],
      max_grads_in_flight=s["max_grads_in_flight"],
    ),
    s,
  )


def _method(name, impl, own_defaults, grads_per_map=None):
  defaults = {**COMMON_SETTINGS, **own_defaults}
  return MapMethod(
    name=name, compute=make_compute(name, impl, defaults, grads_per_map), default_settings=defaults
  )


def _summed_method(name, attr, own_defaults, items_per_map, grads_per_item):
  """A method whose attributions sum over (image, item) pairs: split by items on the CPU."""
  defaults = {**COMMON_SETTINGS, **own_defaults}
  compute = make_compute(
    name,
    _grayscale_of(attr),
    defaults,
    lambda s: items_per_map(s) * grads_per_item(s),
    item_split=(attr, items_per_map, grads_per_item),
  )
  return MapMethod(name=name, compute=compute, default_settings=defaults)


def _build_methods() -> dict[str, MapMethod]:
  methods = [
    _method("GRAD", _grad_impl, {}, lambda s: 1),
    _summed_method(
      "SG",
      _sg_attr,
      {"samples": 25, "spread": 0.15, "squared": True},
      lambda s: s["samples"],
      lambda s: 1,
    ),
    _summed_method(
      "IG", _ig_attr, {"steps": 10, "baseline": -1.0}, lambda s: s["steps"], lambda s: 1
    ),
    _summed_method(
      "SIG",
      _sig_attr,
      {"samples": 25, "spread": 0.15, "squared": True, "steps": 10, "baseline": -1.0},
      lambda s: s["samples"],
      lambda s: s["steps"],
    ),
    _method("GCAM", _gcam_impl, {"resize": "tf1_bilinear"}, lambda s: 1),
    MapMethod(
      "XRAI",
      xrai_method.compute,
      prepare=xrai_method.prepare,
      default_settings={**COMMON_SETTINGS, **xrai_method.DEFAULTS},
      traceable=False,
    ),
    _method("GBP", _gbp_impl, {}, lambda s: 1),
    _method("GGCAM", _ggcam_impl, {"resize": "tf1_bilinear"}, lambda s: 2),
    # Not in the study; PAIR's defaults.
    _summed_method(
      "BLUR_IG",
      _blur_ig_attr,
      {"max_sigma": 50.0, "steps": 100, "grad_step": 0.01, "sqrt": False},
      lambda s: s["steps"],
      lambda s: 1,
    ),
    MapMethod(
      "GUIDED_IG", _guided_ig_compute, default_settings=_GUIDED_IG_DEFAULTS, traceable=False
    ),
    _method("OCCLUSION", _occlusion_impl, {"size": 15, "value": 0.0}),
  ]
  return {m.name: m for m in methods}


METHODS: dict[str, MapMethod] = _build_methods()
