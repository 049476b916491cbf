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
(it has the models: `sanity_maps.generate_maps(study, key)`); scoring reads them with the run
manifest, a `MapReader` and `config.sanity` (`records`, `summarize`). Records use the study's
tidy fields.
"""

from collections.abc import Sequence
import json
import os
from typing import Any

import numpy as np

from saliency_jax.sanity import complexity
from saliency_jax.sanity import faithfulness
from saliency_jax.trust import criteria
from saliency_jax.trust import record_table
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.map_reader import MapReader
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State
from saliency_jax.trust.record_table import per_image_records
from saliency_jax.trust.verdict_tests import apply_tests
from saliency_jax.trust.verdict_tests import describe
from saliency_jax.trust.verdict_tests import mean_or_none
from saliency_jax.trust.verdict_tests import paired_test

EVAL_SET = SetName.EVAL
ORIGINAL = State.ORIGINAL

CHECKS = (
  "data_randomization",
  "smooth_mprt",
  "efficient_mprt",
  "random_logit",
  "input_invariance",
  "faithfulness",
)
DATA_RANDOMIZED = "data_randomized"
SMOOTHED_ORIGINAL = "smoothed_original"
SMOOTHED_UNTRAINED = "smoothed_untrained"
OTHER_CLASS = "other_class"
INPUT_SHIFTED = "input_shifted"
PERMUTED_SUFFIX = "_permuted_labels"
RANDOM_ORDER = "RANDOM_ORDER"  # faithfulness baseline: pixels removed in a random order
FULLY_RANDOMIZED = "fully_randomized"  # record state of eMPRT's randomized model

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
  return bool(sanity_config is not None and check in sanity_config and sanity_config[check].enabled)


def _methods(sanity_config, check: str, computed: Sequence[str]) -> list[str]:
  """The methods a check makes maps of: sMPRT's `methods` (empty: all), else all."""
  if check == "smooth_mprt" and sanity_config.smooth_mprt.methods:
    return list(sanity_config.smooth_mprt.methods)
  return list(computed)


def enabled_checks(config) -> list[str]:
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
        raise ValueError(
          f"config.sanity.{check}.models names {model!r}, not one of config.models {names}"
        )
  if enabled(config, "smooth_mprt"):
    bad = [m for m in sanity.smooth_mprt.methods if m not in config.methods.names]
    if bad:
      raise ValueError(f"config.sanity.smooth_mprt.methods {bad} are not in config.methods.names")
  if enabled(config, "faithfulness"):
    f = sanity.faithfulness
    if f.baseline not in faithfulness.BASELINES:
      raise ValueError(
        f"config.sanity.faithfulness.baseline must be one of "
        f"{faithfulness.BASELINES}, got {f.baseline!r}"
      )
    for field in ("road_percentages", "pic_thresholds"):
      values = list(f[field])
      if not values or min(values) <= 0 or max(values) >= 1 or values != sorted(values):
        raise ValueError(
          f"config.sanity.faithfulness.{field} must be ascending fractions in (0, 1), got {values}"
        )


# -----------------------------------------------------------------------------------------
# Records.


def records(
  manifest: Manifest, reader: MapReader, sanity_config, study_config, *, seed: int, workdir: str
) -> list[dict[str, Any]]:
  """Tidy records of every enabled check (criterion = the check's name)."""
  ids = reader.ground_truth(EVAL_SET).ids
  data_range = study_config.ssim_data_range
  computed = manifest.computed_methods
  out: list[dict[str, Any]] = []
  for check, (state_a, state_b) in COMPARISONS.items():
    if not _on(sanity_config, check):
      continue
    for model in sanity_config[check].models:
      for method in _methods(sanity_config, check, computed):
        maps_a = reader.read(EVAL_SET, model, state_a, method)
        maps_b = reader.read(EVAL_SET, model, state_b, method)
        if maps_a is None or maps_b is None:
          continue  # a method the model cannot give
        values = criteria.similarity(maps_a, maps_b, data_range=data_range)
        if check == "input_invariance":
          values["max_abs_diff"] = np.abs(maps_a - maps_b).reshape(len(ids), -1).max(axis=1)
        out += per_image_records(
          values, ids, criterion=check, method=method, model=model, state=state_b
        )
        if check == "smooth_mprt":
          baseline = criteria.random_pair_baseline(
            maps_a, pairs=study_config.random_pairs, seed=seed, data_range=data_range
          )
          out += per_image_records(
            baseline,
            ids,
            criterion="smooth_random_pairs",
            method=method,
            model=model,
            state=State.BASELINE,
          )
  if _on(sanity_config, "efficient_mprt"):
    bins = sanity_config.efficient_mprt.bins
    for entry in manifest.classifiers:
      if not entry.block_names:
        continue  # nothing was randomized
      last = manifest.cascade_steps(entry)[-1]  # the cascade's end (protocol.cascade_keep)
      for method in manifest.methods:
        before = reader.read(EVAL_SET, entry.name, ORIGINAL, method)
        after = reader.read(EVAL_SET, entry.name, last, method)
        if before is None or after is None:
          continue
        h0 = complexity.histogram_entropy(before, bins)
        h1 = complexity.histogram_entropy(after, bins)
        out += per_image_records(
          {"entropy": h0},
          ids,
          criterion="efficient_mprt",
          method=method,
          model=entry.name,
          state=ORIGINAL,
        )
        out += per_image_records(
          {"entropy": h1, "relative_rise": complexity.relative_rise(h0, h1)},
          ids,
          criterion="efficient_mprt",
          method=method,
          model=entry.name,
          state=FULLY_RANDOMIZED,
        )
  if _on(sanity_config, "faithfulness"):
    out += faithfulness_records(workdir, sanity_config, computed)
  return out


def faithfulness_path(workdir: str, model: str, method: str) -> str:
  return os.path.join(workdir, "sanity", "faithfulness", model, f"{method}.npz")


def faithfulness_records(
  workdir: str, sanity_config, methods: Sequence[str]
) -> list[dict[str, Any]]:
  """Records of the faithfulness files the maps stage wrote."""
  f = sanity_config.faithfulness
  out = []
  for model in f.models:
    for method in list(methods) + [RANDOM_ORDER]:
      path = faithfulness_path(workdir, model, method)
      if not os.path.exists(path):
        if method != RANDOM_ORDER and os.path.exists(
          faithfulness_path(workdir, model, RANDOM_ORDER)
        ):
          continue  # a method the model cannot give
        raise FileNotFoundError(
          f"no faithfulness values at {path}: rerun the maps stage (launch.run_all --redo=maps)"
        )
      with np.load(path) as data:
        ids = data["ids"]
        out += per_image_records(
          {m: data[m] for m in FAITHFULNESS_METRICS},
          ids,
          criterion="faithfulness",
          method=method,
          model=model,
          state=ORIGINAL,
        )
        for kind in ("deletion", "insertion"):
          curve = data[f"curve_{kind}"]
          out += per_image_records(
            {f"{kind}_step{k}": curve[:, k] for k in range(curve.shape[1])},
            ids,
            criterion="faithfulness_curve",
            method=method,
            model=model,
            state=kind,
          )
  return out


# -----------------------------------------------------------------------------------------
# Verdicts.


def _rule(metric: str, alternative: str, baseline: str, text: str, test: str = "wilcoxon"):
  return dict(metric=metric, alternative=alternative, test=test, baseline=baseline, text=text)


def rules(sanity) -> dict[str, dict[str, Any]]:
  """The pass/fail rule of each enabled check (`config.sanity`), with its text."""
  out = {}
  if _on(sanity, "data_randomization"):
    out["data_randomization"] = _rule(
      "ssim",
      "less",
      "random_pairs",
      "SSIM between the maps of the trained model and of the same architecture trained "
      "on permuted labels is lower than SSIM between maps of two different images "
      "(Adebayo et al. 2018)",
    )
  if _on(sanity, "smooth_mprt"):
    s = sanity.smooth_mprt
    out["smooth_mprt"] = _rule(
      "ssim",
      "less",
      "smooth_random_pairs",
      f"with each map averaged over {s.samples} noisy copies (noise std {s.noise} of "
      "the image's range), SSIM between the trained and the fully randomized model's "
      "maps is lower than between smoothed maps of two different images (sMPRT, "
      "Hedström et al. 2023)",
    )
  if _on(sanity, "efficient_mprt"):
    out["efficient_mprt"] = _rule(
      "entropy",
      "greater",
      "trained",
      f"the histogram entropy ({sanity.efficient_mprt.bins} bins) of the fully "
      "randomized model's maps is higher than that of the trained model's maps "
      "(eMPRT, Hedström et al. 2023)",
    )
  if _on(sanity, "random_logit"):
    out["random_logit"] = _rule(
      "ssim",
      "less",
      "random_pairs",
      "SSIM between the map of the explained class and the map of another class (with "
      "two classes: the other one) is lower than SSIM between maps of two different "
      "images (Sixt et al. 2020)",
    )
  if _on(sanity, "input_invariance"):
    s = sanity.input_invariance
    out["input_invariance"] = _rule(
      "ssim",
      "greater",
      "tolerance",
      f"SSIM between the map of the image and the map of the image shifted by "
      f"{s.shift} (first layer's bias adjusted: same outputs) is at least "
      f"1 - {s.tolerance} (Kindermans et al. 2019)",
      test="every_image",
    )
  if _on(sanity, "faithfulness"):
    out["faithfulness"] = _rule(
      "deletion_auc",
      "less",
      "random_order",
      f"the area under the deletion curve ({sanity.faithfulness.baseline} baseline) is "
      "lower than with pixels removed in a random order (Petsiuk et al. 2018)",
    )
  return out


_BASELINE_NAMES = {
  "random_pairs": "random pairs",
  "smooth_random_pairs": "smoothed random pairs",
  "trained": "trained model's maps",
  "tolerance": "1 - tolerance",
  "random_order": "random order",
}


def _values(index, sanity, check: str, rule, method: str, ids: list[str]):
  metric = rule["metric"]
  if check == "efficient_mprt":
    selection = record_table.models_of(index, check, method)
    values = record_table.per_image(
      index, check, metric, method, [(m, FULLY_RANDOMIZED) for m in selection], ids
    )
    baseline = record_table.per_image(
      index, check, metric, method, [(m, ORIGINAL) for m in selection], ids
    )
    return values, baseline
  if check == "faithfulness":
    selection = [(m, ORIGINAL) for m in sanity.faithfulness.models]
    return (
      record_table.per_image(index, check, metric, method, selection, ids),
      record_table.per_image(index, check, metric, RANDOM_ORDER, selection, ids),
    )
  model_names = list(sanity[check].models)
  values = record_table.per_image(
    index, check, metric, method, [(m, COMPARISONS[check][1]) for m in model_names], ids
  )
  if rule["baseline"] == "tolerance":
    baseline = np.where(np.isfinite(values), 1.0 - sanity[check].tolerance, np.nan)
  else:
    baseline = record_table.per_image(
      index, rule["baseline"], metric, method, [(m, State.BASELINE) for m in model_names], ids
    )
  return values, baseline


def scorecard(
  records_, manifest: Manifest, sanity, study_config, *, seed: int
) -> list[dict[str, Any]]:
  """Scorecard rows of the enabled checks, as the paper's criteria's (verdicts.scorecard)."""
  index = record_table.index_records(records_)
  rows = []
  for check, rule in rules(sanity).items():
    ids = record_table.image_ids(index, check)
    methods = (
      manifest.methods
      if check == "efficient_mprt"
      else _methods(sanity, check, manifest.computed_methods)
    )
    check_rows, results = [], {}
    for method in methods:
      values, baseline = _values(index, sanity, check, rule, method, ids)
      row = dict(
        criterion=check,
        method=method,
        metric=rule["metric"],
        baseline_name=_BASELINE_NAMES[rule["baseline"]],
        rule=rule["text"],
        alternative=rule["alternative"],
      )
      resamples = study_config.bootstrap_resamples
      row.update(describe(values, "value", seed=seed, resamples=resamples))
      row.update(describe(baseline, "baseline", seed=seed, resamples=resamples))
      check_rows.append(row)
      if rule["test"] == "every_image":
        row.update(_every_image(values, baseline))
      else:
        results[method] = paired_test(values, baseline, rule)
    if results:
      apply_tests(check_rows, results, study_config.correction, study_config.alpha)
    rows += check_rows
  return rows


def _every_image(values: np.ndarray, floor: np.ndarray) -> dict[str, Any]:
  """A property every map must have (input invariance): PASS when each defined value is at
  least its floor; N/A when none is defined. No test, so no p-value."""
  defined = np.isfinite(values) & np.isfinite(floor)
  verdict = (
    "N/A" if not defined.any() else "PASS" if (values[defined] >= floor[defined]).all() else "FAIL"
  )
  return dict(
    test="every image",
    statistic=float((values[defined] >= floor[defined]).mean()) if defined.any() else None,
    p_value=None,
    pairs=int(defined.sum()),
    pairs_excluded=int((~defined).sum()),
    p_adjusted=None,
    correction=None,
    verdict=verdict,
  )


def faithfulness_table(records_, sanity, methods: Sequence[str]) -> list[dict[str, Any]]:
  """Mean of each faithfulness metric per method (and the random order), and the mean
  deletion / insertion curves the report draws."""
  if not _on(sanity, "faithfulness"):
    return []
  index = record_table.index_records(records_)
  f = sanity.faithfulness
  ids = record_table.image_ids(index, "faithfulness")
  rows = []
  for method in list(methods) + [RANDOM_ORDER]:
    row = dict(method=method)
    for metric in FAITHFULNESS_METRICS:
      values = record_table.per_image(
        index, "faithfulness", metric, method, [(m, ORIGINAL) for m in f.models], ids
      )
      row[metric] = mean_or_none(values)
      row[f"{metric}_excluded"] = int((~np.isfinite(values)).sum())
    for kind in ("deletion", "insertion"):
      row[f"{kind}_curve"] = [
        mean_or_none(
          record_table.per_image(
            index,
            "faithfulness_curve",
            f"{kind}_step{k}",
            method,
            [(m, kind) for m in f.models],
            ids,
          )
        )
        for k in range(f.steps + 1)
      ]
    rows.append(row)
  return rows


def summarize(
  records_, manifest: Manifest, sanity, study_config, *, seed: int, workdir: str
) -> dict[str, Any]:
  """What summary.json holds for the checks: rules, scorecard rows, the faithfulness table."""
  return dict(
    rules=rules(sanity),
    scorecard=scorecard(records_, manifest, sanity, study_config, seed=seed),
    faithfulness=faithfulness_table(records_, sanity, manifest.computed_methods),
    faithfulness_baseline=(sanity.faithfulness.baseline if _on(sanity, "faithfulness") else None),
    permuted_models=_permuted_scores(workdir),
  )


def _permuted_scores(workdir: str) -> dict[str, float]:
  """Validation AUC (on permuted labels) of each permuted-label model, from the train stage."""
  path = os.path.join(workdir, "models", "summary.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    trained = json.load(f)
  return {
    name: entry["val_auc_permuted_labels"]
    for name, entry in trained.items()
    if "val_auc_permuted_labels" in entry
  }
