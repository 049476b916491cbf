"""Your own attribution method, scored by every criterion like the built-in ones.

A method is a function with the registry's signature,

  def my_method(model_fns, images, targets, *, indices, key, settings):
    ...  # -> float [B, H, W, C] attributions (made 2-D by PAIR's VisualizeImageGrayscale,
         #    as every built-in method) or [B, H, W] maps in [0, 1] (used as they are)

where `model_fns` is the model's `ModelFunctions` (logits_fn; features_fn/head_fn and
guided_logits_fn where the model has them), `indices` the images' dataset indices (fold them into
`key` for noise, so a map does not depend on batching) and `settings` the method's settings: its
function attribute `default_settings` (a dict) updated by `config.methods.settings.<NAME>`. A
function attribute `needs` (a tuple of "gradcam", "guided") says which model internals it uses,
so prediction-only models skip it with a reason instead of failing.

In a config:  config.methods.custom = {"MY_METHOD": "my_pkg.saliency:my_method"} and
"MY_METHOD" in config.methods.names. From Python: `register("MY_METHOD", my_method)`.
"""

from collections.abc import Callable, Mapping

import jax.numpy as jnp

from saliency_jax.attributions import _execution
from saliency_jax.attributions import _memory
from saliency_jax.attributions import _precision
from saliency_jax.attributions import registry
from saliency_jax.attributions.grayscale import to_grayscale
from saliency_jax.import_path import load_object

# name -> the model internals the method needs ("gradcam", "guided"), for every method
# registered here (the built-in ones are listed in saliency_jax.models.plugin).
NEEDS: dict[str, tuple[str, ...]] = {}
_PARTS = ("gradcam", "guided")


def register(name: str, fn: Callable, *, needs: tuple[str, ...] | None = None) -> None:
  """Adds `fn` to `attributions.METHODS` as `name` (registering the same function again is a
  no-op; another function under a taken name is an error)."""
  if not name or not isinstance(name, str):
    raise ValueError(f"a method name must be a non-empty string, got {name!r}")
  existing = registry.METHODS.get(name)
  if existing is not None:
    if getattr(existing.compute, "custom_fn", None) is fn:
      return
    raise ValueError(f"method name {name!r} is taken (built-in or registered before).")
  needs = tuple(needs if needs is not None else getattr(fn, "needs", ()))
  unknown = [n for n in needs if n not in _PARTS]
  if unknown:
    raise ValueError(f"method {name!r}: unknown needs {unknown}; known: {list(_PARTS)}.")
  defaults = {**registry.COMMON_SETTINGS, **dict(getattr(fn, "default_settings", {}) or {})}

  def compute(model_fns, images, targets, *, indices=None, key=None, settings=None, prepared=None):
    del prepared
    s = registry.merge_settings(defaults, settings)
    _precision.check(s["compute_dtype"], name, supported=False)
    images = jnp.asarray(images, jnp.float32)
    s = _memory.fitted(s, model_fns, images.shape)
    b = images.shape[0]
    indices = jnp.arange(b, dtype=jnp.int32) if indices is None else jnp.asarray(indices)
    key = _execution.default_key(key)
    out = jnp.asarray(
      fn(model_fns, images, jnp.asarray(targets, jnp.int32), indices=indices, key=key, settings=s),
      jnp.float32,
    )
    if out.shape == images.shape:
      return to_grayscale(out, s["grayscale_percentile"], nan_to=s["grayscale_nan_to"])
    if out.shape == images.shape[:3]:
      return out
    raise ValueError(
      f"method {name!r} returned shape {out.shape}; expected {images.shape} "
      f"(attributions) or {images.shape[:3]} (maps)."
    )

  compute.custom_fn = fn
  registry.METHODS[name] = registry.MapMethod(
    name=name, compute=compute, default_settings=defaults, traceable=False
  )
  NEEDS[name] = needs


def register_from_config(custom: Mapping[str, str] | None) -> list[str]:
  """Registers {name: "package.module:function"}; returns the names."""
  names = []
  for name, path in dict(custom or {}).items():
    register(name, load_object(path, f"config.methods.custom.{name}"))
    names.append(name)
  return names
