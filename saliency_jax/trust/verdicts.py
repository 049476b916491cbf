"""Pass/fail verdicts: each criterion's per-image values against its baseline, with a test.

A rule (in the config, printed in the report) names the criterion whose records it reads, the
metric, the baseline and the direction in which a trustworthy method differs from it. The
verdict is PASS when a one-sided test over images (Wilcoxon signed-rank by default) rejects "no
better than the baseline" at `alpha` after correcting across methods (Holm by default); FAIL
otherwise; N/A when the run has no data for the criterion (e.g. a single replicate has no
repeatability pair). A per-image baseline gets a paired test; a scalar baseline (the authors'
random-pair number, protocol.random_pairs = "scalar") a one-sample test against it.

Randomization (protocol.randomization_pooling): one verdict per architecture, over its
replicates (the authors' figure: the InceptionV3 replicates), or one pooled over all
classifiers; each read at the last step of the cascade, and each row also names the first step
at which the curve passes the baseline.

Everything here reads the records (`results.json`), the run manifest and the config's `study`
and `protocol` sections; no Study, dataset or model:

  summarize_study(records, manifest, config.study, seed=config.seed, protocol=config.protocol)
  scorecard(records, manifest, config.study, seed=config.seed, protocol=config.protocol)
"""

import collections
from collections.abc import Iterable
import dataclasses
from typing import Any

import ml_collections
import numpy as np

from saliency_jax.metrics import statistics
from saliency_jax.trust import criteria
from saliency_jax.trust import protocol as protocol_lib
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import CASCADE_PREFIX
from saliency_jax.trust.names import Criterion
from saliency_jax.trust.names import independent_state
from saliency_jax.trust.names import Measure
from saliency_jax.trust.names import NO_MODEL
from saliency_jax.trust.names import RecordKey
from saliency_jax.trust.names import State

# What each criterion's rule may compare with and measure (a rule's `baseline` and `metric`).
BASELINES = {
  Criterion.UTILITY: ("average_mask", "localization_network"),
  Criterion.RANDOMIZATION: ("random_pairs",),
  Criterion.REPEATABILITY: ("localization_network",),
  Criterion.REPRODUCIBILITY: ("localization_network",),
}
METRICS = {
  Criterion.UTILITY: criteria.UTILITY_METRICS,
  Criterion.RANDOMIZATION: criteria.SIMILARITY_NAMES,
  Criterion.REPEATABILITY: criteria.SIMILARITY_NAMES,
  Criterion.REPRODUCIBILITY: criteria.SIMILARITY_NAMES,
}

# Rules by name; a rule's `criterion` says which records it reads (default: its name). Plain
# strings, so a command-line override type-checks.
DEFAULT_RULES = {
  "utility": dict(
    criterion="utility",
    metric="auprc",
    baseline="average_mask",
    alternative="greater",
    test="wilcoxon",
    text="AUPRC of the trained model's maps is higher than the average-mask baseline's",
  ),
  "utility_localization": dict(
    criterion="utility",
    metric="auprc",
    baseline="localization_network",
    alternative="greater",
    test="wilcoxon",
    text=(
      "AUPRC of the trained model's maps is higher than the localization network's "
      "(mean over its replicates)"
    ),
  ),
  "randomization": dict(
    criterion="randomization",
    metric="ssim",
    baseline="random_pairs",
    alternative="less",
    test="wilcoxon",
    text=(
      "SSIM between the trained and the randomized model's maps (the cascade's last "
      "step) is lower than SSIM between maps of two different images (random pairs)"
    ),
  ),
  "repeatability": dict(
    criterion="repeatability",
    metric="ssim",
    baseline="localization_network",
    alternative="greater",
    test="wilcoxon",
    text=(
      "SSIM between maps of two replicates of the same architecture is higher than "
      "SSIM between the two localization-network replicates' outputs"
    ),
  ),
  "reproducibility": dict(
    criterion="reproducibility",
    metric="ssim",
    baseline="localization_network",
    alternative="greater",
    test="wilcoxon",
    text=(
      "SSIM between maps of the two architectures is higher than SSIM between the two "
      "localization-network replicates' outputs"
    ),
  ),
}

Index = dict[RecordKey, dict[str, float]]  # a column of per-image values {image_id: value}


def index_records(records: Iterable[dict[str, Any]]) -> Index:
  index: Index = collections.defaultdict(dict)
  for r in records:
    value = np.nan if r["value"] is None else float(r["value"])
    key = RecordKey(r["criterion"], r["metric"], r["method"], r["model"], r["state"])
    index[key][r["image_id"]] = value
  return index


def per_image(
  index: Index,
  criterion: str,
  metric: str,
  method: str,
  selection: Iterable[tuple[str, str]],
  ids: list[str],
) -> np.ndarray:
  """Per-image mean over the selected (model, state) entries, NaN where all are undefined."""
  keys = [RecordKey(criterion, metric, method, model, state) for model, state in selection]
  columns = [[index[key].get(i, np.nan) for i in ids] for key in keys if key in index]
  if not columns:
    return np.full(len(ids), np.nan)
  return criteria.mean_of_defined(columns, axis=0)


def models_of(index: Index, criterion: str, method: str | None = None) -> list[str]:
  """The models (or model pairs) with records of `criterion` (and `method`), sorted."""
  return sorted({k.model for k in index if k.criterion == criterion and method in (None, k.method)})


def criterion_values(
  index: Index,
  manifest: Manifest,
  rule: dict[str, Any],
  method: str,
  ids: list[str],
  *,
  classifiers=None,
  scalar_pairs: bool = False,
) -> tuple[np.ndarray, np.ndarray | float, str]:
  """(method's per-image values, the baseline (per image, or one number), baseline name).

  `classifiers`: the classifiers a randomization verdict reads (default: all); with
  `scalar_pairs` its baseline is the authors' number: the mean random-pair similarity of the
  first of them (replicate 1's original maps).
  """
  criterion, metric, kind = rule["criterion"], rule["metric"], rule["baseline"]
  if kind not in BASELINES.get(criterion, (kind,)):
    raise ValueError(f"{kind!r} is not a baseline of {criterion}: {BASELINES[criterion]}")
  if criterion == Criterion.UTILITY:
    selection = [(m, State.ORIGINAL) for m in manifest.utility_models]
    values = per_image(index, Measure.UTILITY, metric, method, selection, ids)
    if kind == "localization_network":
      loc = [(m, State.BASELINE) for m in models_of(index, Measure.UTILITY, Baseline.LOCALIZATION)]
      return (
        values,
        per_image(index, Measure.UTILITY, metric, Baseline.LOCALIZATION, loc, ids),
        "localization network",
      )
    baseline = per_image(
      index, Measure.UTILITY, metric, Baseline.AVERAGE_MASK, [(NO_MODEL, State.BASELINE)], ids
    )
    return values, baseline, "average mask"
  if criterion == Criterion.RANDOMIZATION:
    classifiers = manifest.classifiers if classifiers is None else classifiers
    classifiers = [c for c in classifiers if c.block_names]  # a model with no blocks: N/A
    last = [(c.name, manifest.cascade_steps(c)[-1]) for c in classifiers]
    values = per_image(index, Measure.CASCADING, metric, method, last, ids)
    if scalar_pairs:
      if not classifiers:  # no model with blocks to randomize: N/A
        return values, float("nan"), "random pairs"
      first = classifiers[0].name
      pairs = per_image(index, Measure.RANDOM_PAIRS, metric, method, [(first, State.BASELINE)], ids)
      return values, float(criteria.mean_of_defined(pairs)), f"random pairs ({first}, one number)"
    baseline = per_image(
      index,
      Measure.RANDOM_PAIRS,
      metric,
      method,
      [(c.name, State.BASELINE) for c in classifiers],
      ids,
    )
    return values, baseline, "random pairs"
  pairs = [(m, State.ORIGINAL) for m in models_of(index, criterion, method)]
  values = per_image(index, criterion, metric, method, pairs, ids)
  loc_pairs = [
    (m, State.ORIGINAL)
    for m in models_of(index, Measure.LOCALIZATION_AGREEMENT, Baseline.LOCALIZATION)
  ]
  baseline = per_image(
    index, Measure.LOCALIZATION_AGREEMENT, metric, Baseline.LOCALIZATION, loc_pairs, ids
  )
  return values, baseline, "localization network"


def verdict_groups(manifest: Manifest, criterion: str, protocol) -> list[tuple[str | None, list]]:
  """(architecture or None, the classifiers one verdict reads) for each verdict of a rule."""
  if criterion != Criterion.RANDOMIZATION or protocol.randomization_pooling == "pooled":
    return [(None, manifest.classifiers)]
  archs: dict[str, list] = collections.OrderedDict()
  for clf in manifest.classifiers:
    archs.setdefault(clf.arch, []).append(clf)
  return list(archs.items())


def first_step_past(
  index: Index, manifest: Manifest, classifiers, rule, method: str, baseline: float | None
) -> str | None:
  """The first cascade step at which the curve (mean over the classifiers of each one's mean
  over images) passes `baseline` in the rule's direction; None if it never does."""
  if baseline is None or not classifiers:
    return None
  steps = [manifest.cascade_steps(c) for c in classifiers]
  for k in range(1, min(len(s) for s in steps)):
    means = [
      _none_to_nan(
        _nanmean(
          list(
            index.get(
              RecordKey(Measure.CASCADING, rule["metric"], method, c.name, s[k]), {}
            ).values()
          )
        )
      )
      for c, s in zip(classifiers, steps)
    ]
    mean = float(criteria.mean_of_defined(means))
    if np.isfinite(mean) and (
      mean < baseline if rule["alternative"] == "less" else mean > baseline
    ):
      return steps[0][k].replace(CASCADE_PREFIX, "")
  return None


def image_ids(index: Index, criterion: str) -> list[str]:
  """The image ids with records of `criterion` (a `Measure`), sorted."""
  ids = set()
  for key, column in index.items():
    if key.criterion == criterion:
      ids.update(column)
  return sorted(ids)


def scorecard(
  records, manifest: Manifest, study_config: ml_collections.ConfigDict, *, seed: int, protocol=None
) -> list[dict[str, Any]]:
  """One row per rule x method (x architecture for a per-architecture randomization verdict):
  value (95% CI), baseline, test, p-values, verdict."""
  protocol = protocol_lib.paper_protocol() if protocol is None else protocol
  index = index_records(records)
  s = study_config
  rules = rules_from_config(study_config)
  scalar_pairs = protocol.random_pairs == "scalar"
  rows = []
  for name, rule in rules.items():
    criterion = rule["criterion"]
    source = {Criterion.RANDOMIZATION: Measure.CASCADING}.get(criterion, criterion)
    ids = image_ids(index, source)
    for arch, classifiers in verdict_groups(manifest, criterion, protocol):
      group_rows, results = [], {}
      randomization = criterion == Criterion.RANDOMIZATION
      classifiers = [c for c in classifiers if c.block_names]  # none: nothing to randomize
      for method in manifest.methods:
        values, baseline, baseline_name = criterion_values(
          index,
          manifest,
          rule,
          method,
          ids,
          classifiers=classifiers,
          scalar_pairs=randomization and scalar_pairs,
        )
        scalar = np.ndim(baseline) == 0
        row = dict(
          criterion=name,
          method=method,
          metric=rule["metric"],
          baseline_name=baseline_name,
          rule=rule["text"],
          alternative=rule["alternative"],
          architecture=arch,
          baseline_kind="scalar" if scalar else "per_image",
        )
        row.update(_describe(values, "value", seed=seed, resamples=s.bootstrap_resamples))
        if scalar:
          row.update(
            baseline=_finite_or_none(baseline),
            baseline_std=None,
            baseline_ci=None,
            baseline_n=1,
            baseline_excluded=0,
          )
        else:
          row.update(_describe(baseline, "baseline", seed=seed, resamples=s.bootstrap_resamples))
        if randomization:
          row["replicates"] = [c.name for c in classifiers]
          row["step"] = (
            manifest.cascade_steps(classifiers[0])[-1].replace(CASCADE_PREFIX, "")
            if classifiers
            else None
          )
          row["first_step_past_baseline"] = first_step_past(
            index, manifest, classifiers, rule, method, row["baseline"]
          )
        results[method] = _test(values, baseline, rule)
        group_rows.append(row)
      _apply_tests(group_rows, results, s.correction, s.alpha)
      rows += group_rows
  return rows


def _describe(values: np.ndarray, prefix: str, *, seed: int, resamples: int) -> dict[str, Any]:
  """Mean, std and bootstrap 95% CI of the defined values; NaN (undefined) excluded, counted."""
  summary = statistics.summarize(values)
  ci = statistics.bootstrap_ci(values, seed=seed, n_resamples=resamples)
  return {
    prefix: _finite_or_none(summary["mean"]),
    f"{prefix}_std": _finite_or_none(summary["std"]),
    f"{prefix}_ci": ([ci["low"], ci["high"]] if np.isfinite(ci["low"]) else None),
    f"{prefix}_n": summary["n"],
    f"{prefix}_excluded": summary["n_excluded"],
  }


TESTS = {"wilcoxon": statistics.wilcoxon, "paired_t": statistics.paired_t}


def _test(values: np.ndarray, baseline: np.ndarray | float, rule) -> statistics.TestResult:
  """The rule's test: paired over images, or one-sample against a scalar baseline."""
  test = rule.get("test", "wilcoxon")
  if test not in TESTS:
    raise ValueError(f"unknown test {test!r}; known: {sorted(TESTS)}")
  result = TESTS[test](values, baseline, alternative=rule["alternative"])
  if np.ndim(baseline) == 0:
    result = dataclasses.replace(
      result, test=f"{result.test}, one-sample against the baseline's number"
    )
  return result


def _apply_tests(
  rows: list[dict[str, Any]],
  results: dict[str, statistics.TestResult],
  correction: str,
  alpha: float,
) -> None:
  """Adds each row's test, corrected p-value and verdict (PASS/FAIL/N/A)."""
  tested = {m: r for m, r in results.items() if np.isfinite(r.pvalue)}
  corrected = statistics.correct(tested, method=correction) if tested else {}
  for row in rows:
    result = results[row["method"]]
    row.update(
      test=result.test,
      statistic=_finite_or_none(result.statistic),
      p_value=_finite_or_none(result.pvalue),
      pairs=result.n,
      pairs_excluded=result.n_excluded,
    )
    if row["method"] in corrected:
      row["p_adjusted"] = corrected[row["method"]]["pvalue_adjusted"]
      row["correction"] = corrected[row["method"]]["correction"]
      row["verdict"] = "PASS" if row["p_adjusted"] < alpha else "FAIL"
    else:
      row.update(p_adjusted=None, correction=None, verdict="N/A")


def _finite_or_none(value) -> float | None:
  return float(value) if value is not None and np.isfinite(value) else None


def rules_from_config(study_config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """The config's rules (all of DEFAULT_RULES where it has none), each completed from the
  default rule of its name; a rule the config leaves out is not scored."""
  configured = study_config.get("rules", None)
  configured = DEFAULT_RULES if configured is None else configured.to_dict()
  rules = {}
  order = list(DEFAULT_RULES)  # the defaults' order first (a ConfigDict sorts its keys)
  for name, rule in sorted(
    configured.items(),
    key=lambda item: (order.index(item[0]) if item[0] in order else len(order), item[0]),
  ):
    rules[name] = {**DEFAULT_RULES.get(name, {}), **rule}
    rules[name].setdefault("criterion", name)
  return rules


def curves(records, manifest: Manifest, protocol=None) -> dict[str, Any]:
  """Randomization curves, {metric: {architecture: {method: curve}}}.

  A curve holds, per cascading step, the mean and std over replicates of each replicate's
  mean similarity over images (the paper's curves), the random-pair baseline (the first
  replicate's number, or the mean over replicates: protocol.random_pairs), and the
  independent-randomization curve (Adebayo et al.) where it was run.
  """
  protocol = protocol_lib.paper_protocol() if protocol is None else protocol
  index = index_records(records)
  archs: dict[str, list] = collections.OrderedDict()
  for clf in manifest.classifiers:
    archs.setdefault(clf.arch, []).append(clf)

  def image_mean(criterion, metric, method, model, state):
    key = RecordKey(criterion, metric, method, model, state)
    return _nanmean(list(index.get(key, {}).values()))

  out: dict[str, Any] = {}
  for metric in ("ssim", "spearman_abs"):
    for arch, clfs in archs.items():
      if not clfs[0].block_names:
        continue  # nothing was randomized (the report says why)
      steps = manifest.cascade_steps(clfs[0])
      blocks = list(clfs[0].block_names)
      for method in manifest.methods:
        cascade = np.array(
          [
            [
              _none_to_nan(image_mean(Measure.CASCADING, metric, method, c.name, step))
              for step in steps
            ]
            for c in clfs
          ]
        )
        mean, std = _column_mean_std(cascade)
        independent = np.array(
          [
            [
              _none_to_nan(
                image_mean(Measure.INDEPENDENT, metric, method, c.name, independent_state(b))
              )
              for b in blocks
            ]
            for c in clfs
          ]
        )
        has_independent = np.isfinite(independent).any()
        out.setdefault(metric, {}).setdefault(arch, {})[method] = dict(
          steps=[s.replace(CASCADE_PREFIX, "") for s in steps],
          mean=_list(mean),
          std=_list(std),
          replicates=[c.name for c in clfs],
          baseline=_nanmean(
            [
              _none_to_nan(image_mean(Measure.RANDOM_PAIRS, metric, method, c.name, State.BASELINE))
              for c in (clfs[:1] if protocol.random_pairs == "scalar" else clfs)
            ]
          ),
          independent=dict(steps=blocks, mean=_list(_column_mean_std(independent)[0]))
          if has_independent
          else None,
        )
  return out


def _none_to_nan(value) -> float:
  return np.nan if value is None else value


def _column_mean_std(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Column mean and (population) std over the defined entries; NaN where a column has none."""
  mean = criteria.mean_of_defined(arr, axis=0)
  return mean, np.sqrt(criteria.mean_of_defined((arr - mean) ** 2, axis=0))


def _nanmean(values) -> float | None:
  return _finite_or_none(float(criteria.mean_of_defined(values)))


def _list(arr) -> list[float | None]:
  return [float(v) if np.isfinite(v) else None for v in arr]


def utility_table(records, manifest: Manifest) -> list[dict[str, Any]]:
  """Mean localization metrics of every method (trained, untrained) and the baselines."""
  index = index_records(records)
  ids = image_ids(index, Measure.UTILITY)
  models = manifest.utility_models
  rows = []
  entries = [(m, "trained", [(x, State.ORIGINAL) for x in models]) for m in manifest.methods]
  entries += [(m, "untrained", [(x, State.UNTRAINED) for x in models]) for m in manifest.methods]
  entries.append((Baseline.AVERAGE_MASK, State.BASELINE, [(NO_MODEL, State.BASELINE)]))
  loc_models = models_of(index, Measure.UTILITY, Baseline.LOCALIZATION)
  entries.append((Baseline.LOCALIZATION, State.BASELINE, [(x, State.BASELINE) for x in loc_models]))
  for method, state, selection in entries:
    row = dict(method=method, state=state)
    for metric in ("auprc", "pointing_game", "iou_otsu"):
      values = per_image(index, Measure.UTILITY, metric, method, selection, ids)
      row[metric] = _nanmean(values)
      row[f"{metric}_excluded"] = int((~np.isfinite(values)).sum())
    rows.append(row)
  return rows


def summarize_study(
  records, manifest: Manifest, study_config: ml_collections.ConfigDict, *, seed: int, protocol=None
) -> dict[str, Any]:
  protocol = protocol_lib.paper_protocol() if protocol is None else protocol
  return dict(
    scorecard=scorecard(records, manifest, study_config, seed=seed, protocol=protocol),
    rules=rules_from_config(study_config),
    protocol=protocol.to_dict(),
    curves=curves(records, manifest, protocol),
    utility=utility_table(records, manifest),
  )


# The helpers the checks beyond the four criteria reuse (controls_scoring, robustness).
def source_measure(criterion: str) -> str:
  """The measure whose records give a criterion's image ids."""
  return {Criterion.RANDOMIZATION: Measure.CASCADING}.get(criterion, criterion)


describe = _describe
paired_test = _test
finite_or_none = _finite_or_none
