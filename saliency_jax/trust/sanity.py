"""The sanity checks beyond the paper inside the study: their models, maps, records, verdicts.

Each check is a section of `config.sanity` with `enabled` and its settings:

  data_randomization  models trained on permuted labels (train stage, resumable like the
                      others: models/<name>_permuted_labels/); their maps (state
                      "data_randomized") compared with the trained model's.
  smooth_mprt         maps averaged over noisy copies (states "smoothed_original" and
                      "smoothed_untrained"), trained vs fully randomized model.
  efficient_mprt      histogram entropy of the trained and the fully randomized model's maps.
  random_logit        maps of another class (state "other_class") vs the explained class's.
  input_invariance    maps of the shifted input from the model with its first layer adjusted
                      (state "input_shifted") vs the original maps.
  faithfulness        deletion / insertion / ROAD / SIC / AIC of the trained model's maps,
                      computed in the maps stage (sanity/faithfulness/<model>/<method>.npz).

Map states are stores like the paper's (maps/eval/<model>/<state>/<method>), so any criterion
(e.g. the robustness grid) can read them with a `MapReader`; `COMPARISONS` names which pair of
states each similarity check compares. The maps stage makes the maps and faithfulness values
(it has the models: `generate_maps(study, key)`); scoring reads them with the run manifest, a
`MapReader` and `config.sanity` (`records`, `summarize`). Records use the study's tidy fields.
"""
import json
import os
from typing import Any, Dict, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import attributions
from saliency_jax import maps as maps_lib
from saliency_jax import models
from saliency_jax import train as train_lib
from saliency_jax.sanity import complexity
from saliency_jax.sanity import faithfulness
from saliency_jax.sanity import invariance
from saliency_jax.sanity import labels
from saliency_jax.sanity import logits as logits_lib
from saliency_jax.sanity import smoothing
from saliency_jax.trust import criteria
from saliency_jax.trust import verdicts
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.map_reader import MapReader
from saliency_jax.trust.names import cascade_state
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State

EVAL_SET = SetName.EVAL
ORIGINAL = State.ORIGINAL

CHECKS = ("data_randomization", "smooth_mprt", "efficient_mprt", "random_logit",
          "input_invariance", "faithfulness")
DATA_RANDOMIZED = "data_randomized"
SMOOTHED_ORIGINAL = "smoothed_original"
SMOOTHED_UNTRAINED = "smoothed_untrained"
OTHER_CLASS = "other_class"
INPUT_SHIFTED = "input_shifted"
PERMUTED_SUFFIX = "_permuted_labels"
RANDOM_ORDER = "RANDOM_ORDER"    # faithfulness baseline: pixels removed in a random order
FULLY_RANDOMIZED = "fully_randomized"   # record state of eMPRT's randomized model

# check -> (state of the first maps, state of the second maps) of a similarity check.
COMPARISONS = {
    "data_randomization": (ORIGINAL, DATA_RANDOMIZED),
    "smooth_mprt": (SMOOTHED_ORIGINAL, SMOOTHED_UNTRAINED),
    "random_logit": (ORIGINAL, OTHER_CLASS),
    "input_invariance": (ORIGINAL, INPUT_SHIFTED),
}
FAITHFULNESS_METRICS = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "sic", "aic")


def enabled(config, check: str) -> bool:
  """Whether the whole config runs `check`."""
  return _on(config.get("sanity", None), check)


def _on(sanity_config, check: str) -> bool:
  return bool(sanity_config is not None and check in sanity_config
              and sanity_config[check].enabled)


def _methods(sanity_config, check: str, computed: Sequence[str]) -> List[str]:
  """The methods a check makes maps of: sMPRT's `methods` (empty: all), else all."""
  if check == "smooth_mprt" and sanity_config.smooth_mprt.methods:
    return list(sanity_config.smooth_mprt.methods)
  return list(computed)


def enabled_checks(config) -> List[str]:
  return [c for c in CHECKS if enabled(config, c)]


def validate(config) -> None:
  """Clear errors for a bad `config.sanity` before any stage runs."""
  sanity = config.get("sanity", None)
  if sanity is None:
    return
  unknown = sorted(set(sanity) - set(CHECKS))
  if unknown:
    raise ValueError(f"config.sanity has unknown checks {unknown}; known: {list(CHECKS)}")
  names = [m["name"] for m in config.models]
  for check in enabled_checks(config):
    for model in sanity[check].get("models", ()):
      if model not in names:
        raise ValueError(f"config.sanity.{check}.models names {model!r}, not one of "
                         f"config.models {names}")
  if enabled(config, "smooth_mprt"):
    bad = [m for m in sanity.smooth_mprt.methods if m not in config.methods.names]
    if bad:
      raise ValueError(f"config.sanity.smooth_mprt.methods {bad} are not in "
                       f"config.methods.names")
  if enabled(config, "faithfulness"):
    f = sanity.faithfulness
    if f.baseline not in faithfulness.BASELINES:
      raise ValueError(f"config.sanity.faithfulness.baseline must be one of "
                       f"{faithfulness.BASELINES}, got {f.baseline!r}")
    for field in ("road_percentages", "pic_thresholds"):
      values = list(f[field])
      if not values or min(values) <= 0 or max(values) >= 1 or values != sorted(values):
        raise ValueError(f"config.sanity.faithfulness.{field} must be ascending fractions in "
                         f"(0, 1), got {values}")


# -----------------------------------------------------------------------------------------
# Training: the data randomization test's models.

def permuted_classifiers(study) -> Dict[str, Any]:
  """{trained model name: its permuted-label twin (a study Classifier)}, trained or resumed."""
  from saliency_jax.trust.study import Classifier  # pylint: disable=g-import-not-at-top
  if not enabled(study.config, "data_randomization"):
    return {}
  section = study.config.sanity.data_randomization

  def build():
    sources = study.sources()
    specs = {m["name"]: m for m in study.config.models}
    out = {}
    for name in section.models:
      spec = specs[name]
      module = models.create(spec["arch"], num_classes=2, **spec.get("kwargs", {}))
      style = spec.get("style", study.config.data.style)
      workdir = os.path.join(study.workdir, "models", name + PERMUTED_SUFFIX)
      # Validation labels are permuted too: model selection sees no real label.
      trained = train_lib.train_classifier(
          module, labels.PermutedLabels(sources["train"], section.label_seed),
          labels.PermutedLabels(sources["validation"], section.label_seed + 1),
          workdir=workdir, seed=spec["seed"],
          config=study._train_config(study.config.train, style),  # pylint: disable=protected-access
          initial_variables=study._pretrained(spec, workdir))  # pylint: disable=protected-access
      out[name] = Classifier(name + PERMUTED_SUFFIX, spec["arch"], module, trained.variables,
                             float(trained.val_auc), style)
    return out
  return study._cached("sanity_permuted", build)  # pylint: disable=protected-access


# -----------------------------------------------------------------------------------------
# Maps.

def _generate(study, path, method, fns, images, image_set, targets, settings, key,
              prepared_name="prepared"):
  s = study.config.study
  return maps_lib.generate_maps(
      path, method, fns, images, targets, image_set.indices, image_set.ids, key=key,
      settings=settings, chunk_size=s.chunk_size, dtype=s.map_dtype,
      prepared_dir=os.path.join(study.workdir, "maps", image_set.name, prepared_name),
      progress=False)


def _fully_randomized(study, clf, image_shape):
  states = study.states(clf, image_shape)
  return states[[state for _, state, _ in states].index(
      cascade_state(study.bound_model(clf, image_shape).block_names[-1]))][2]


def generate_maps(study, key) -> None:
  """The maps of every enabled check that needs its own (resumable stores), and the
  faithfulness values."""
  config = study.config
  image_set = study.image_set(EVAL_SET)
  classifiers = {c.name: c for c in study.classifiers()}
  explained = {}

  def targets_of(clf):
    if clf.name not in explained:
      explained[clf.name] = study.targets(clf, image_set)
    return explained[clf.name]

  def bound(clf):
    return study.bound_model(clf, study.inputs(image_set, clf.style).shape[1:])

  def run(clf, state, fns, images, targets, method_names, wrap=None, extra=None,
          prepared_name="prepared"):
    lacking = dict(study.skipped_methods(bound(clf)))
    for name in method_names:
      if name in lacking:
        continue   # the model cannot give this method (listed in the report)
      method = attributions.METHODS[name]
      settings = study.method_settings(name)
      if wrap is not None:
        method, settings = wrap(method), {**settings, **extra}
      _generate(study, study.store_path(EVAL_SET, clf.name, state, name), method, fns, images,
                image_set, targets, settings, key, prepared_name)

  for name, twin in permuted_classifiers(study).items():
    clf = classifiers[name]
    run(clf, DATA_RANDOMIZED, bound(clf).bind(twin.variables),
        study.inputs(image_set, clf.style), targets_of(clf),
        method_list(config, "data_randomization"))
  if enabled(config, "smooth_mprt"):
    section = config.sanity.smooth_mprt
    extra = dict(smooth_samples=section.samples, smooth_noise=section.noise)
    for name in section.models:
      clf = classifiers[name]
      images = study.inputs(image_set, clf.style)
      methods = method_list(config, "smooth_mprt")
      run(clf, SMOOTHED_ORIGINAL, bound(clf).bind(clf.variables), images, targets_of(clf),
          methods, smoothing.smoothed, extra)
      untrained = _fully_randomized(study, clf, images.shape[1:])
      run(clf, SMOOTHED_UNTRAINED, bound(clf).bind(untrained), images, targets_of(clf),
          methods, smoothing.smoothed, extra)
  if enabled(config, "random_logit"):
    section = config.sanity.random_logit
    for name in section.models:
      clf = classifiers[name]
      images = study.inputs(image_set, clf.style)
      fns = bound(clf).bind(clf.variables)
      num_classes = int(jax.eval_shape(fns.logits_fn, images[:1]).shape[-1])
      other = logits_lib.other_classes(targets_of(clf), num_classes, section.seed)
      run(clf, OTHER_CLASS, fns, images, other, method_list(config, "random_logit"))
  if enabled(config, "input_invariance"):
    section = config.sanity.input_invariance
    for name in section.models:
      clf = classifiers[name]
      images = study.inputs(image_set, clf.style)
      shifted = invariance.shifted_model_functions(clf.module, clf.variables, section.shift)
      check_shift_invisible(clf, shifted, images, section.shift)
      run(clf, INPUT_SHIFTED, shifted, images + np.float32(section.shift), targets_of(clf),
          method_list(config, "input_invariance"), prepared_name="prepared_shifted")
  if enabled(config, "faithfulness"):
    reader = MapReader(study.workdir, list(config.methods.names))
    for name in config.sanity.faithfulness.models:
      clf = classifiers[name]
      write_faithfulness(study, clf, bound(clf).bind(clf.variables), targets_of(clf), reader)


def check_shift_invisible(clf, shifted, images, shift: float, atol: float = 1e-3) -> float:
  """The adjusted model's logits on the shifted images equal the model's; else an error."""
  if not isinstance(clf.module, nn.Module):
    raise ValueError(f"input invariance needs a Flax model; {clf.name} is not one "
                     "(config.sanity.input_invariance.models)")
  original = models.model_functions(clf.module, clf.variables)
  logits = jax.jit(lambda f, x: f.logits_fn(x))
  diff = float(jnp.max(jnp.abs(logits(shifted, images[:16] + np.float32(shift))
                               - logits(original, images[:16]))))
  if not diff <= atol:
    raise RuntimeError(f"input invariance: the adjusted model {clf.name} changes the logits by "
                       f"{diff:.2e} on the shifted input: its first layer is not a convolution "
                       "applied to the input (config.sanity.input_invariance)")
  return diff


# -----------------------------------------------------------------------------------------
# Records.

def _records(values: Dict[str, np.ndarray], ids, **fields) -> List[Dict[str, Any]]:
  out = []
  for metric, column in values.items():
    for image_id, value in zip(ids, np.asarray(column, np.float64)):
      out.append(dict(fields, metric=metric, image_id=str(image_id),
                      value=float(value) if np.isfinite(value) else None))
  return out


def records(manifest: Manifest, reader: MapReader, sanity_config, study_config, *, seed: int,
            workdir: str) -> List[Dict[str, Any]]:
  """Tidy records of every enabled check (criterion = the check's name)."""
  ids = reader.ground_truth(EVAL_SET).ids
  data_range = study_config.ssim_data_range
  computed = manifest.computed_methods
  out: List[Dict[str, Any]] = []
  for check, (state_a, state_b) in COMPARISONS.items():
    if not _on(sanity_config, check):
      continue
    for model in sanity_config[check].models:
      for method in _methods(sanity_config, check, computed):
        maps_a = reader.read(EVAL_SET, model, state_a, method)
        maps_b = reader.read(EVAL_SET, model, state_b, method)
        if maps_a is None or maps_b is None:
          continue   # a method the model cannot give
        values = criteria.similarity(maps_a, maps_b, data_range=data_range)
        if check == "input_invariance":
          values["max_abs_diff"] = np.abs(maps_a - maps_b).reshape(len(ids), -1).max(axis=1)
        out += _records(values, ids, criterion=check, method=method, model=model,
                        state=state_b)
        if check == "smooth_mprt":
          baseline = criteria.random_pair_baseline(
              maps_a, pairs=study_config.random_pairs, seed=seed, data_range=data_range)
          out += _records(baseline, ids, criterion="smooth_random_pairs", method=method,
                          model=model, state=State.BASELINE)
  if _on(sanity_config, "efficient_mprt"):
    bins = sanity_config.efficient_mprt.bins
    for entry in manifest.classifiers:
      if not entry.block_names:
        continue   # nothing was randomized
      last = cascade_state(entry.block_names[-1])
      for method in manifest.methods:
        before = reader.read(EVAL_SET, entry.name, ORIGINAL, method)
        after = reader.read(EVAL_SET, entry.name, last, method)
        if before is None or after is None:
          continue
        h0 = complexity.histogram_entropy(before, bins)
        h1 = complexity.histogram_entropy(after, bins)
        out += _records({"entropy": h0}, ids, criterion="efficient_mprt", method=method,
                        model=entry.name, state=ORIGINAL)
        out += _records({"entropy": h1, "relative_rise": complexity.relative_rise(h0, h1)},
                        ids, criterion="efficient_mprt", method=method, model=entry.name,
                        state=FULLY_RANDOMIZED)
  if _on(sanity_config, "faithfulness"):
    out += faithfulness_records(workdir, sanity_config, computed)
  return out


def _probabilities(fns):
  probs = jax.jit(lambda f, x: jax.nn.softmax(f.logits_fn(x).astype(jnp.float32), -1))

  def probs_fn(images):
    return np.concatenate([np.asarray(probs(fns, images[i:i + 256]))
                           for i in range(0, len(images), 256)])
  return probs_fn


def faithfulness_path(workdir: str, model: str, method: str) -> str:
  return os.path.join(workdir, "sanity", "faithfulness", model, f"{method}.npz")


def write_faithfulness(study, clf, fns, targets, reader: MapReader) -> None:
  """The faithfulness values of the model's maps (and of a random pixel order), computed in
  the maps stage where the model is at hand; one file per method, kept on a rerun."""
  f = study.config.sanity.faithfulness
  image_set = study.image_set(EVAL_SET)
  images = study.inputs(image_set, clf.style)
  probs_fn = _probabilities(fns)
  lacking = dict(study.skipped_methods(study.bound_model(clf, images.shape[1:])))
  methods = [m for m in study.config.methods.names if m not in lacking] + [RANDOM_ORDER]
  for method in methods:
    path = faithfulness_path(study.workdir, clf.name, method)
    if os.path.exists(path):
      continue
    if method == RANDOM_ORDER:
      maps = np.random.default_rng(study.config.seed).uniform(size=images.shape[:3])
    else:
      maps = reader.read(EVAL_SET, clf.name, ORIGINAL, method)
    values = faithfulness_values(images, image_set.raw, maps, targets, probs_fn, f,
                                 style=clf.style, channels=study.config.data.channels,
                                 seed=study.config.seed)
    curves = values.pop("curves")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, ids=np.asarray(image_set.ids), **values,
             **{f"curve_{k}": v for k, v in curves.items()})
    os.replace(tmp, path)


def faithfulness_records(workdir: str, sanity_config,
                         methods: Sequence[str]) -> List[Dict[str, Any]]:
  """Records of the faithfulness files the maps stage wrote."""
  f = sanity_config.faithfulness
  out = []
  for model in f.models:
    for method in list(methods) + [RANDOM_ORDER]:
      path = faithfulness_path(workdir, model, method)
      if not os.path.exists(path):
        if method != RANDOM_ORDER and os.path.exists(faithfulness_path(workdir, model,
                                                                      RANDOM_ORDER)):
          continue   # a method the model cannot give
        raise FileNotFoundError(f"no faithfulness values at {path}: rerun the maps stage "
                                "(launch.run_all --redo=maps)")
      with np.load(path) as data:
        ids = data["ids"]
        out += _records({m: data[m] for m in FAITHFULNESS_METRICS}, ids,
                        criterion="faithfulness", method=method, model=model, state=ORIGINAL)
        for kind in ("deletion", "insertion"):
          curve = data[f"curve_{kind}"]
          out += _records({f"{kind}_step{k}": curve[:, k] for k in range(curve.shape[1])},
                          ids, criterion="faithfulness_curve", method=method, model=model,
                          state=kind)
  return out


def faithfulness_values(images, raw, maps, targets, probs_fn, f, *, style: str,
                        channels: int, seed: int) -> Dict[str, Any]:
  """The faithfulness metrics of one method's maps, [N] each (NaN where the map is undefined),
  and its curves."""
  common = dict(steps=f.steps, baseline=f.baseline, blur_sigma=f.blur_sigma)
  deletion = faithfulness.perturbation_curves(images, maps, targets, probs_fn, insertion=False,
                                              **common)
  insertion = faithfulness.perturbation_curves(images, maps, targets, probs_fn, insertion=True,
                                               **common)
  road = {order: faithfulness.road_curves(
      images, maps, targets, probs_fn, percentages=f.road_percentages,
      most_relevant_first=order, noise=f.road_noise, seed=seed).mean(axis=1)
          for order in (True, False)}
  values = {"deletion_auc": faithfulness.curve_area(deletion, f.steps),
            "insertion_auc": faithfulness.curve_area(insertion, f.steps),
            "road_morf": road[True], "road_lerf": road[False]}
  values.update(pic_values(raw, maps, targets, probs_fn, f, style=style, channels=channels,
                           seed=seed))
  undefined = ~np.isfinite(np.asarray(maps, np.float64)).all(axis=(1, 2))
  values = {k: np.where(undefined, np.nan, v) for k, v in values.items()}
  values["curves"] = {"deletion": np.where(undefined[:, None], np.nan, deletion),
                      "insertion": np.where(undefined[:, None], np.nan, insertion)}
  return values


def pic_values(raw, maps, targets, probs_fn, f, *, style: str, channels: int,
               seed: int) -> Dict[str, np.ndarray]:
  """SIC and AIC of each image (PAIR's PIC on the stored uint8 image); NaN: skipped."""
  from saliency_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  n = len(raw)
  sic, aic = np.full(n, np.nan), np.full(n, np.nan)
  if np.asarray(raw).dtype != np.uint8:
    return {"sic": sic, "aic": aic}   # PIC's entropy estimate needs 8-bit images
  for i in range(n):
    image = np.asarray(raw[i])[..., 0]
    mask = faithfulness.random_mask(image.shape, f.pic_random_fraction, seed + i)
    saliency_map = np.nan_to_num(np.asarray(maps[i], np.float64), nan=0.0)
    stack = [image] + faithfulness.pic_images(image, saliency_map, mask, f.pic_thresholds)
    entropies = [faithfulness.image_entropy(im) for im in stack]
    probs = probs_fn(np.asarray(data_lib.preprocess(np.stack(stack)[..., None], style=style,
                                                    channels=channels), np.float32))
    softmax = probs[:, targets[i]]
    correct = (np.argmax(probs, axis=1) == targets[i]).astype(np.float64)
    for out, preds in ((sic, softmax), (aic, correct)):
      out[i] = faithfulness.pic_area(
          (preds[0], entropies[0]), (preds[1], entropies[1]),
          list(zip(preds[2:], entropies[2:])), min_pred_value=f.pic_min_pred_value)
  return {"sic": sic, "aic": aic}


# -----------------------------------------------------------------------------------------
# Verdicts.

def rules(sanity) -> Dict[str, Dict[str, Any]]:
  """The pass/fail rule of each enabled check (`config.sanity`), with its text."""
  out = {}
  if _on(sanity, "data_randomization"):
    out["data_randomization"] = dict(
        metric="ssim", alternative="less", test="wilcoxon", baseline="random_pairs",
        text=("SSIM between the maps of the trained model and of the same architecture trained "
              "on permuted labels is lower than SSIM between maps of two different images "
              "(Adebayo et al. 2018)"))
  if _on(sanity, "smooth_mprt"):
    s = sanity.smooth_mprt
    out["smooth_mprt"] = dict(
        metric="ssim", alternative="less", test="wilcoxon", baseline="smooth_random_pairs",
        text=(f"with each map averaged over {s.samples} noisy copies (noise std {s.noise} of "
              "the image's range), SSIM between the trained and the fully randomized model's "
              "maps is lower than between smoothed maps of two different images (sMPRT, "
              "Hedström et al. 2023)"))
  if _on(sanity, "efficient_mprt"):
    out["efficient_mprt"] = dict(
        metric="entropy", alternative="greater", test="wilcoxon", baseline="trained",
        text=(f"the histogram entropy ({sanity.efficient_mprt.bins} bins) of the fully "
              "randomized model's maps is higher than that of the trained model's maps "
              "(eMPRT, Hedström et al. 2023)"))
  if _on(sanity, "random_logit"):
    out["random_logit"] = dict(
        metric="ssim", alternative="less", test="wilcoxon", baseline="random_pairs",
        text=("SSIM between the map of the explained class and the map of another class (with "
              "two classes: the other one) is lower than SSIM between maps of two different "
              "images (Sixt et al. 2020)"))
  if _on(sanity, "input_invariance"):
    s = sanity.input_invariance
    out["input_invariance"] = dict(
        metric="ssim", alternative="greater", test="every_image", baseline="tolerance",
        text=(f"SSIM between the map of the image and the map of the image shifted by "
              f"{s.shift} (first layer's bias adjusted: same outputs) is at least "
              f"1 - {s.tolerance} (Kindermans et al. 2019)"))
  if _on(sanity, "faithfulness"):
    out["faithfulness"] = dict(
        metric="deletion_auc", alternative="less", test="wilcoxon", baseline="random_order",
        text=(f"the area under the deletion curve ({sanity.faithfulness.baseline} baseline) is "
              "lower than with pixels removed in a random order (Petsiuk et al. 2018)"))
  return out


_BASELINE_NAMES = {"random_pairs": "random pairs", "smooth_random_pairs": "smoothed random pairs",
                   "trained": "trained model's maps", "tolerance": "1 - tolerance",
                   "random_order": "random order"}


def _values(index, sanity, check: str, rule, method: str, ids: List[str]):
  metric = rule["metric"]
  if check == "efficient_mprt":
    selection = verdicts.models_of(index, check, method)
    values = verdicts.per_image(index, check, metric, method,
                                [(m, FULLY_RANDOMIZED) for m in selection], ids)
    baseline = verdicts.per_image(index, check, metric, method,
                                  [(m, ORIGINAL) for m in selection], ids)
    return values, baseline
  if check == "faithfulness":
    selection = [(m, ORIGINAL) for m in sanity.faithfulness.models]
    return (verdicts.per_image(index, check, metric, method, selection, ids),
            verdicts.per_image(index, check, metric, RANDOM_ORDER, selection, ids))
  model_names = list(sanity[check].models)
  values = verdicts.per_image(index, check, metric, method,
                              [(m, COMPARISONS[check][1]) for m in model_names], ids)
  if rule["baseline"] == "tolerance":
    baseline = np.where(np.isfinite(values), 1.0 - sanity[check].tolerance, np.nan)
  else:
    baseline = verdicts.per_image(index, rule["baseline"], metric, method,
                                  [(m, State.BASELINE) for m in model_names], ids)
  return values, baseline


def scorecard(records_, manifest: Manifest, sanity, study_config, *,
              seed: int) -> List[Dict[str, Any]]:
  """Scorecard rows of the enabled checks, as the paper's criteria's (verdicts.scorecard)."""
  index = verdicts.index_records(records_)
  rows = []
  for check, rule in rules(sanity).items():
    ids = verdicts.image_ids(index, check)
    methods = (manifest.methods if check == "efficient_mprt"
               else _methods(sanity, check, manifest.computed_methods))
    check_rows, results = [], {}
    for method in methods:
      values, baseline = _values(index, sanity, check, rule, method, ids)
      row = dict(criterion=check, method=method, metric=rule["metric"],
                 baseline_name=_BASELINE_NAMES[rule["baseline"]], rule=rule["text"],
                 alternative=rule["alternative"])
      row.update(verdicts._describe(values, "value", seed=seed,  # pylint: disable=protected-access
                                    resamples=study_config.bootstrap_resamples))
      row.update(verdicts._describe(baseline, "baseline", seed=seed,  # pylint: disable=protected-access
                                    resamples=study_config.bootstrap_resamples))
      check_rows.append(row)
      if rule["test"] == "every_image":
        row.update(_every_image(values, baseline))
      else:
        results[method] = verdicts._paired_test(values, baseline, rule)  # pylint: disable=protected-access
    if results:
      verdicts._apply_tests(check_rows, results, study_config.correction,  # pylint: disable=protected-access
                            study_config.alpha)
    rows += check_rows
  return rows


def _every_image(values: np.ndarray, floor: np.ndarray) -> Dict[str, Any]:
  """A property every map must have (input invariance): PASS when each defined value is at
  least its floor; N/A when none is defined. No test, so no p-value."""
  defined = np.isfinite(values) & np.isfinite(floor)
  verdict = ("N/A" if not defined.any()
             else "PASS" if (values[defined] >= floor[defined]).all() else "FAIL")
  return dict(test="every image", statistic=float((values[defined] >= floor[defined]).mean())
              if defined.any() else None, p_value=None, pairs=int(defined.sum()),
              pairs_excluded=int((~defined).sum()), p_adjusted=None, correction=None,
              verdict=verdict)


def faithfulness_table(records_, sanity, methods: Sequence[str]) -> List[Dict[str, Any]]:
  """Mean of each faithfulness metric per method (and the random order), and the mean
  deletion / insertion curves the report draws."""
  if not _on(sanity, "faithfulness"):
    return []
  index = verdicts.index_records(records_)
  f = sanity.faithfulness
  ids = verdicts.image_ids(index, "faithfulness")
  rows = []
  for method in list(methods) + [RANDOM_ORDER]:
    row = dict(method=method)
    for metric in FAITHFULNESS_METRICS:
      values = verdicts.per_image(index, "faithfulness", metric, method,
                                  [(m, ORIGINAL) for m in f.models], ids)
      row[metric] = _mean(values)
      row[f"{metric}_excluded"] = int((~np.isfinite(values)).sum())
    for kind in ("deletion", "insertion"):
      row[f"{kind}_curve"] = [_mean(verdicts.per_image(
          index, "faithfulness_curve", f"{kind}_step{k}", method,
          [(m, kind) for m in f.models], ids)) for k in range(f.steps + 1)]
    rows.append(row)
  return rows


def _mean(values) -> float | None:
  value = float(criteria.mean_of_defined(values))
  return value if np.isfinite(value) else None


def summarize(records_, manifest: Manifest, sanity, study_config, *, seed: int,
              workdir: str) -> Dict[str, Any]:
  """What summary.json holds for the checks: rules, scorecard rows, the faithfulness table."""
  return dict(rules=rules(sanity),
              scorecard=scorecard(records_, manifest, sanity, study_config, seed=seed),
              faithfulness=faithfulness_table(records_, sanity, manifest.computed_methods),
              faithfulness_baseline=(sanity.faithfulness.baseline
                                     if _on(sanity, "faithfulness") else None),
              permuted_models=_permuted_scores(workdir))


def _permuted_scores(workdir: str) -> Dict[str, float]:
  """Validation AUC (on permuted labels) of each permuted-label model, from the train stage."""
  path = os.path.join(workdir, "models", "summary.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    trained = json.load(f)
  return {name: entry["val_auc_permuted_labels"] for name, entry in trained.items()
          if "val_auc_permuted_labels" in entry}


def method_list(config, check: str) -> List[str]:
  """The methods a check makes maps of, from the whole config."""
  return _methods(config.sanity, check, config.methods.names)
