"""The sanity checks' verdicts: each check's rule, its scorecard rows and the faithfulness table.

  summarize(records, manifest, config.sanity, config.study, seed=config.seed, workdir=workdir)

gives what summary.json holds for the checks. A check's rows are scored as the paper's criteria
are (`verdict_tests`: the rule's one-sided test, corrected across methods), except input
invariance, a property every map must have (PASS when every image is at least 1 - tolerance).
"""

from collections.abc import Sequence
import json
import os
from typing import Any

import numpy as np

from saliency_jax.trust import record_table
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.names import State
from saliency_jax.trust.sanity import _methods
from saliency_jax.trust.sanity import COMPARISONS
from saliency_jax.trust.sanity import FAITHFULNESS_METRICS
from saliency_jax.trust.sanity import FULLY_RANDOMIZED
from saliency_jax.trust.sanity import RANDOM_ORDER
from saliency_jax.trust.sanity import section_enabled
from saliency_jax.trust.verdict_tests import apply_tests
from saliency_jax.trust.verdict_tests import describe
from saliency_jax.trust.verdict_tests import mean_or_none
from saliency_jax.trust.verdict_tests import paired_test


def _rule(metric: str, alternative: str, baseline: str, text: str, test: str = "wilcoxon"):
  return dict(metric=metric, alternative=alternative, test=test, baseline=baseline, text=text)


def rules(sanity) -> dict[str, dict[str, Any]]:
  """The pass/fail rule of each enabled check (`config.sanity`), with its text."""
  out = {}
  if section_enabled(sanity, "data_randomization"):
    out["data_randomization"] = _rule(
      "ssim",
      "less",
      "random_pairs",
      "SSIM between the maps of the trained model and of the same architecture trained "
      "on permuted labels is lower than SSIM between maps of two different images "
      "(Adebayo et al. 2018)",
    )
  if section_enabled(sanity, "smooth_mprt"):
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
  if section_enabled(sanity, "efficient_mprt"):
    out["efficient_mprt"] = _rule(
      "entropy",
      "greater",
      "trained",
      f"the histogram entropy ({sanity.efficient_mprt.bins} bins) of the fully "
      "randomized model's maps is higher than that of the trained model's maps "
      "(eMPRT, Hedström et al. 2023)",
    )
  if section_enabled(sanity, "random_logit"):
    out["random_logit"] = _rule(
      "ssim",
      "less",
      "random_pairs",
      "SSIM between the map of the explained class and the map of another class (with "
      "two classes: the other one) is lower than SSIM between maps of two different "
      "images (Sixt et al. 2020)",
    )
  if section_enabled(sanity, "input_invariance"):
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
  if section_enabled(sanity, "faithfulness"):
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
      index, check, metric, method, [(m, State.ORIGINAL) for m in selection], ids
    )
    return values, baseline
  if check == "faithfulness":
    selection = [(m, State.ORIGINAL) for m in sanity.faithfulness.models]
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
  if not section_enabled(sanity, "faithfulness"):
    return []
  index = record_table.index_records(records_)
  f = sanity.faithfulness
  ids = record_table.image_ids(index, "faithfulness")
  rows = []
  for method in list(methods) + [RANDOM_ORDER]:
    row = dict(method=method)
    for metric in FAITHFULNESS_METRICS:
      values = record_table.per_image(
        index, "faithfulness", metric, method, [(m, State.ORIGINAL) for m in f.models], ids
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
    faithfulness_baseline=(
      sanity.faithfulness.baseline if section_enabled(sanity, "faithfulness") else None
    ),
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
