"""The methods of the study's maps: each configured method's settings, the methods a model
cannot give, the methods of external maps, and the localization baseline's output, stored and
scored like a map."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from saliency_jax import attributions
from saliency_jax import data as data_lib
from saliency_jax.attributions import custom as custom_methods
from saliency_jax.models import plugin
from saliency_jax.trust import external
from saliency_jax.trust.names import Baseline


def method_settings(
  config: ml_collections.ConfigDict, name: str, style: str | None = None
) -> dict[str, Any]:
  """A method's settings for models fed `style` (default: data.style): defaults, config
  overrides, protocol."""
  style = config.data.style if style is None else style
  settings = dict(attributions.METHODS[name].default_settings)
  overrides = config.methods.settings
  own = overrides[name].to_dict() if name in overrides else {}
  settings.update(own)
  # The config's global value, unless the method's own settings name one.
  if "max_grads_in_flight" in settings and "max_grads_in_flight" not in own:
    settings["max_grads_in_flight"] = config.methods.max_grads_in_flight
  protocol = config.protocol
  if name in ("IG", "SIG"):
    settings["baseline"] = ig_baseline(protocol.ig_baseline, style, config.data.channels)
  if name == "XRAI":
    settings["region_scores"] = protocol.xrai_grayscale
  return settings


def ig_baseline(choice: str, style: str, channels: int):
  """IG's baseline: -1 (the authors', black for Inception scaling) or "black": a black pixel
  in the model's input space, per channel (ImageNet scaling: -mean / std)."""
  if choice == "minus_one":
    return -1.0
  if choice != "black":
    raise ValueError(f"protocol.ig_baseline must be 'minus_one' or 'black', got {choice!r}")
  black = data_lib.preprocess(np.zeros((1, 1, 1), np.uint8), style=style, channels=channels)
  values = [float(v) for v in np.asarray(black).reshape(-1)]
  return values[0] if len(set(values)) == 1 else tuple(values)


def check_names(config: ml_collections.ConfigDict) -> list[str]:
  """The configured methods (config.methods.names), custom ones registered; an unknown name is
  an error."""
  custom_methods.register_from_config(config.methods.get("custom"))
  names = list(config.methods.names)
  unknown = [n for n in names if n not in attributions.METHODS]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; known: {sorted(attributions.METHODS)}")
  return names


def external_methods(config: ml_collections.ConfigDict) -> list[str]:
  """Names of the methods whose maps come from `config.study.external_maps`."""
  directory = config.study.external_maps
  return sorted(external.discover(directory)) if directory else []


def method_names(config: ml_collections.ConfigDict) -> list[str]:
  """Every method the criteria score: ours (config.methods.names), then external ones."""
  return list(config.methods.names) + [
    m for m in external_methods(config) if m not in config.methods.names
  ]


def skipped_methods(
  config: ml_collections.ConfigDict, bound: plugin.PluginModel
) -> list[tuple[str, str]]:
  """[(method, why)] of the configured methods this model cannot give."""
  out = []
  for name in config.methods.names:
    needs = plugin.METHOD_NEEDS.get(name, ()) + custom_methods.NEEDS.get(name, ())
    missing = [part for part in needs if part in bound.lacks]
    if missing:
      out.append((name, bound.lacks[missing[0]]))
  return out


class SegmentationOutput:
  """The localization network's per-pixel probability, stored like a saliency map."""

  name = Baseline.LOCALIZATION
  prepare = None
  default_settings: dict[str, Any] = {}

  def compute(self, model_fns, images, targets, *, indices, key, settings, prepared=None):
    del targets, indices, key, settings, prepared
    return jax.nn.sigmoid(model_fns.logits_fn(images)).astype(jnp.float32)


class DetectionScoreMap:
  """The RetinaNet's per-pixel score map (`detection.postprocess.score_maps` of its
  detections), stored like a saliency map: the detector's localization baseline."""

  name = Baseline.LOCALIZATION
  prepare = None
  default_settings: dict[str, Any] = {}

  def __init__(self, anchors: np.ndarray):
    self.anchors = anchors

  def compute(self, model_fns, images, targets, *, indices, key, settings, prepared=None):
    del targets, indices, key, settings, prepared
    from saliency_jax.detection import postprocess  # pylint: disable=g-import-not-at-top

    logits, deltas = model_fns.logits_fn(images)
    shape = tuple(images.shape[1:3])
    boxes, scores = postprocess.detect(logits, deltas, jnp.asarray(self.anchors), image_shape=shape)
    return postprocess.score_maps(boxes, scores, shape)
