"""The maps stage's part of the sanity checks (saliency_jax.trust.sanity): the checks' map
states and the faithfulness values, computed where the models are at hand; scoring reads what
it wrote and never imports this module. The data randomization test's permuted-label models
are trained with the others (trust.study_models).
"""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import attributions
from saliency_jax import models
from saliency_jax.sanity import faithfulness
from saliency_jax.sanity import invariance
from saliency_jax.sanity import logits as logits_lib
from saliency_jax.sanity import smoothing
from saliency_jax.trust import map_methods
from saliency_jax.trust.map_reader import MapReader
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State
from saliency_jax.trust.sanity import _methods
from saliency_jax.trust.sanity import DATA_RANDOMIZED
from saliency_jax.trust.sanity import enabled
from saliency_jax.trust.sanity import faithfulness_path
from saliency_jax.trust.sanity import INPUT_SHIFTED
from saliency_jax.trust.sanity import OTHER_CLASS
from saliency_jax.trust.sanity import RANDOM_ORDER
from saliency_jax.trust.sanity import SMOOTHED_ORIGINAL
from saliency_jax.trust.sanity import SMOOTHED_UNTRAINED


def generate_maps(stage) -> None:
  """The maps of every enabled check that needs its own (resumable stores), and the
  faithfulness values; `stage` is the study's `maps_stage.MapsStage`."""
  config = stage.config
  image_set = stage.data.image_set(SetName.EVAL)
  classifiers = {c.name: c for c in stage.models.classifiers()}
  explained = {}

  def targets_of(clf):
    if clf.name not in explained:
      explained[clf.name] = stage.targets(clf, image_set)
    return explained[clf.name]

  def run(
    clf,
    state,
    variables,
    fns,
    images,
    targets,
    method_names,
    wrap=None,
    extra=None,
    prepared_name="prepared",
  ):
    lacking = stage.lacking(clf)
    for name in method_names:
      if name in lacking:
        continue  # the model cannot give this method (listed in the report)
      method = attributions.METHODS[name]
      settings = map_methods.method_settings(config, name, clf.style)
      if wrap is not None:
        method, settings = wrap(method), {**settings, **extra}
      stage.fill_store(
        stage.store_path(SetName.EVAL, clf.name, state, name),
        method,
        fns,
        image_set,
        images,
        targets,
        settings,
        variables,
        prepared_name,
      )

  for name, twin in stage.models.permuted_classifiers().items():
    clf = classifiers[name]
    run(
      clf,
      DATA_RANDOMIZED,
      twin.variables,
      stage.bound(clf).bind(twin.variables),
      stage.data.inputs(image_set, clf.style),
      targets_of(clf),
      method_list(config, "data_randomization"),
    )
  if enabled(config, "smooth_mprt"):
    section = config.sanity.smooth_mprt
    extra = dict(smooth_samples=section.samples, smooth_noise=section.noise)
    for name in section.models:
      clf = classifiers[name]
      images = stage.data.inputs(image_set, clf.style)
      methods = method_list(config, "smooth_mprt")
      run(
        clf,
        SMOOTHED_ORIGINAL,
        clf.variables,
        stage.bound(clf).bind(clf.variables),
        images,
        targets_of(clf),
        methods,
        smoothing.smoothed,
        extra,
      )
      untrained = stage.state_variables(clf)[State.UNTRAINED]
      run(
        clf,
        SMOOTHED_UNTRAINED,
        untrained,
        stage.bound(clf).bind(untrained),
        images,
        targets_of(clf),
        methods,
        smoothing.smoothed,
        extra,
      )
  if enabled(config, "random_logit"):
    section = config.sanity.random_logit
    for name in section.models:
      clf = classifiers[name]
      images = stage.data.inputs(image_set, clf.style)
      fns = stage.bound(clf).bind(clf.variables)
      num_classes = int(jax.eval_shape(fns.logits_fn, images[:1]).shape[-1])
      other = logits_lib.other_classes(targets_of(clf), num_classes, section.seed)
      run(clf, OTHER_CLASS, clf.variables, fns, images, other, method_list(config, "random_logit"))
  if enabled(config, "input_invariance"):
    section = config.sanity.input_invariance
    for name in section.models:
      clf = classifiers[name]
      images = stage.data.inputs(image_set, clf.style)
      shifted = invariance.shifted_model_functions(clf.module, clf.variables, section.shift)
      check_shift_invisible(clf, shifted, images, section.shift)
      run(
        clf,
        INPUT_SHIFTED,
        clf.variables,
        shifted,
        images + np.float32(section.shift),
        targets_of(clf),
        method_list(config, "input_invariance"),
        prepared_name="prepared_shifted",
      )
  if enabled(config, "faithfulness"):
    reader = MapReader(stage.workdir, list(config.methods.names))
    for name in config.sanity.faithfulness.models:
      clf = classifiers[name]
      write_faithfulness(stage, clf, stage.bound(clf).bind(clf.variables), targets_of(clf), reader)


def check_shift_invisible(clf, shifted, images, shift: float, atol: float = 1e-3) -> float:
  """The adjusted model's logits on the shifted images equal the model's; else an error."""
  if not isinstance(clf.module, nn.Module):
    raise ValueError(
      f"input invariance needs a Flax model; {clf.name} is not one "
      "(config.sanity.input_invariance.models)"
    )
  original = models.model_functions(clf.module, clf.variables)
  logits = jax.jit(lambda f, x: f.logits_fn(x))
  diff = float(
    jnp.max(
      jnp.abs(logits(shifted, images[:16] + np.float32(shift)) - logits(original, images[:16]))
    )
  )
  if not diff <= atol:
    raise RuntimeError(
      f"input invariance: the adjusted model {clf.name} changes the logits by "
      f"{diff:.2e} on the shifted input: its first layer is not a convolution "
      "applied to the input (config.sanity.input_invariance)"
    )
  return diff


# Faithfulness values.


def _probabilities(fns):
  probs = jax.jit(lambda f, x: jax.nn.softmax(f.logits_fn(x).astype(jnp.float32), -1))

  def probs_fn(images):
    return np.concatenate(
      [np.asarray(probs(fns, images[i : i + 256])) for i in range(0, len(images), 256)]
    )

  return probs_fn


def write_faithfulness(stage, clf, fns, targets, reader: MapReader) -> None:
  """The faithfulness values of the model's maps (and of a random pixel order), computed in
  the maps stage where the model is at hand; one file per method, kept on a rerun."""
  config = stage.config
  f = config.sanity.faithfulness
  image_set = stage.data.image_set(SetName.EVAL)
  images = stage.data.inputs(image_set, clf.style)
  probs_fn = _probabilities(fns)
  lacking = stage.lacking(clf)
  methods = [m for m in config.methods.names if m not in lacking] + [RANDOM_ORDER]
  for method in methods:
    path = faithfulness_path(stage.workdir, clf.name, method)
    if os.path.exists(path):
      continue
    if method == RANDOM_ORDER:
      maps = np.random.default_rng(config.seed).uniform(size=images.shape[:3])
    else:
      maps = reader.read(SetName.EVAL, clf.name, State.ORIGINAL, method)
    values = faithfulness_values(
      images,
      image_set.raw,
      maps,
      targets,
      probs_fn,
      f,
      style=clf.style,
      channels=config.data.channels,
      seed=config.seed,
    )
    curves = values.pop("curves")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(
      tmp, ids=np.asarray(image_set.ids), **values, **{f"curve_{k}": v for k, v in curves.items()}
    )
    os.replace(tmp, path)


def faithfulness_values(
  images, raw, maps, targets, probs_fn, f, *, style: str, channels: int, seed: int
) -> dict[str, Any]:
  """The faithfulness metrics of one method's maps, [N] each (NaN where the map is undefined),
  and its curves."""
  common = dict(steps=f.steps, baseline=f.baseline, blur_sigma=f.blur_sigma)
  deletion = faithfulness.perturbation_curves(
    images, maps, targets, probs_fn, insertion=False, **common
  )
  insertion = faithfulness.perturbation_curves(
    images, maps, targets, probs_fn, insertion=True, **common
  )
  road = {
    order: faithfulness.road_curves(
      images,
      maps,
      targets,
      probs_fn,
      percentages=f.road_percentages,
      most_relevant_first=order,
      noise=f.road_noise,
      seed=seed,
    ).mean(axis=1)
    for order in (True, False)
  }
  values = {
    "deletion_auc": faithfulness.curve_area(deletion, f.steps),
    "insertion_auc": faithfulness.curve_area(insertion, f.steps),
    "road_morf": road[True],
    "road_lerf": road[False],
  }
  values.update(
    pic_values(raw, maps, targets, probs_fn, f, style=style, channels=channels, seed=seed)
  )
  undefined = ~np.isfinite(np.asarray(maps, np.float64)).all(axis=(1, 2))
  values = {k: np.where(undefined, np.nan, v) for k, v in values.items()}
  values["curves"] = {
    "deletion": np.where(undefined[:, None], np.nan, deletion),
    "insertion": np.where(undefined[:, None], np.nan, insertion),
  }
  return values


def pic_values(
  raw, maps, targets, probs_fn, f, *, style: str, channels: int, seed: int
) -> dict[str, np.ndarray]:
  """SIC and AIC of each image (PAIR's PIC on the stored uint8 image); NaN: skipped."""
  from saliency_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  n = len(raw)
  sic, aic = np.full(n, np.nan), np.full(n, np.nan)
  if np.asarray(raw).dtype != np.uint8:
    return {"sic": sic, "aic": aic}  # PIC's entropy estimate needs 8-bit images
  for i in range(n):
    image = np.asarray(raw[i])[..., 0]
    mask = faithfulness.random_mask(image.shape, f.pic_random_fraction, seed + i)
    saliency_map = np.nan_to_num(np.asarray(maps[i], np.float64), nan=0.0)
    stack = [image] + faithfulness.pic_images(image, saliency_map, mask, f.pic_thresholds)
    entropies = [faithfulness.image_entropy(im) for im in stack]
    probs = probs_fn(
      np.asarray(
        data_lib.preprocess(np.stack(stack)[..., None], style=style, channels=channels), np.float32
      )
    )
    softmax = probs[:, targets[i]]
    correct = (np.argmax(probs, axis=1) == targets[i]).astype(np.float64)
    for out, preds in ((sic, softmax), (aic, correct)):
      out[i] = faithfulness.pic_area(
        (preds[0], entropies[0]),
        (preds[1], entropies[1]),
        list(zip(preds[2:], entropies[2:])),
        min_pred_value=f.pic_min_pred_value,
      )
  return {"sic": sic, "aic": aic}


def method_list(config, check: str) -> list[str]:
  """The methods a check makes maps of, from the whole config."""
  return _methods(config.sanity, check, config.methods.names)
