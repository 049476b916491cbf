"""Pass/fail verdicts: each criterion's per-image values against its baseline, with a test.

A rule (in the config, printed in the report) names the metric, the baseline and the direction
in which a trustworthy method differs from it. The verdict is PASS when a one-sided paired test
over images (Wilcoxon signed-rank by default) rejects "no better than the baseline" at `alpha`
after correcting across methods (Holm by default); FAIL otherwise; N/A when the run has no data
for the criterion (e.g. a single replicate has no repeatability pair).
"""
import collections
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from saliency_jax.metrics import statistics
from saliency_jax.trust import criteria
from saliency_jax.trust.names import AVERAGE_MASK
from saliency_jax.trust.names import CASCADE_PREFIX
from saliency_jax.trust.names import INDEPENDENT_PREFIX
from saliency_jax.trust.names import LOCALIZATION_METHOD
from saliency_jax.trust.names import ORIGINAL
from saliency_jax.trust.names import UNTRAINED

# What each criterion's rule may compare with and measure (a rule's `baseline` and `metric`).
CRITERIA = ("utility", "randomization", "repeatability", "reproducibility")
BASELINES = {
    "utility": ("average_mask", "localization_network"),
    "randomization": ("random_pairs",),
    "repeatability": ("localization_network",),
    "reproducibility": ("localization_network",),
}
METRICS = {
    "utility": criteria.UTILITY_METRICS,
    "randomization": criteria.SIMILARITY_METRICS,
    "repeatability": criteria.SIMILARITY_METRICS,
    "reproducibility": criteria.SIMILARITY_METRICS,
}

# Rules by name; a rule's `criterion` says which records it reads (default: its name).
DEFAULT_RULES = {
    "utility": dict(
        criterion="utility", metric="auprc", baseline="average_mask", alternative="greater",
        test="wilcoxon",
        text="AUPRC of the trained model's maps is higher than the average-mask baseline's"),
    "utility_localization": dict(
        criterion="utility", metric="auprc", baseline="localization_network",
        alternative="greater", test="wilcoxon",
        text=("AUPRC of the trained model's maps is higher than the localization network's "
              "(mean over its replicates)")),
    "randomization": dict(
        criterion="randomization", metric="ssim", baseline="random_pairs", alternative="less",
        test="wilcoxon",
        text=("SSIM between the trained and the randomized model's maps is lower than "
              "SSIM between maps of two different images (random pairs)")),
    "repeatability": dict(
        criterion="repeatability", metric="ssim", baseline="localization_network",
        alternative="greater", test="wilcoxon",
        text=("SSIM between maps of two replicates of the same architecture is higher than "
              "SSIM between the two localization-network replicates' outputs")),
    "reproducibility": dict(
        criterion="reproducibility", metric="ssim", baseline="localization_network",
        alternative="greater", test="wilcoxon",
        text=("SSIM between maps of the two architectures is higher than SSIM between the two "
              "localization-network replicates' outputs")),
}

Key = Tuple[str, str, str, str, str]  # criterion, metric, method, model, state


def index_records(records: Iterable[Dict[str, Any]]) -> Dict[Key, Dict[str, float]]:
  index: Dict[Key, Dict[str, float]] = collections.defaultdict(dict)
  for r in records:
    value = np.nan if r["value"] is None else float(r["value"])
    index[(r["criterion"], r["metric"], r["method"], r["model"], r["state"])][r["image_id"]] = value
  return index


def per_image(index, criterion: str, metric: str, method: str,
              selection: Iterable[Tuple[str, str]], ids: List[str]) -> np.ndarray:
  """Per-image mean over the selected (model, state) entries, NaN where all are undefined."""
  columns = [[index[(criterion, metric, method, model, state)].get(i, np.nan) for i in ids]
             for model, state in selection
             if (criterion, metric, method, model, state) in index]
  if not columns:
    return np.full(len(ids), np.nan)
  return criteria.mean_of_defined(columns, axis=0)


def _models(index, criterion: str, method: str) -> List[str]:
  return sorted({k[3] for k in index if k[0] == criterion and k[2] == method})


def criterion_values(index, study, criterion: str, method: str, metric: str,
                     ids: List[str], baseline_kind: str = "") -> Tuple[np.ndarray, np.ndarray, str]:
  """(method's per-image values, baseline's per-image values, baseline name)."""
  if criterion == "utility":
    models = list(study.config.study.utility_models)
    values = per_image(index, "utility", metric, method, [(m, ORIGINAL) for m in models], ids)
    if baseline_kind == "localization_network":
      loc = [(m, "baseline") for m in _models(index, "utility", LOCALIZATION_METHOD)]
      return values, per_image(index, "utility", metric, LOCALIZATION_METHOD, loc, ids), (
          "localization network")
    if baseline_kind not in ("", "average_mask"):
      raise ValueError(f"unknown utility baseline {baseline_kind!r}")
    baseline = per_image(index, "utility", metric, AVERAGE_MASK, [("-", "baseline")], ids)
    return values, baseline, "average mask"
  if criterion == "randomization":
    last = [(c.name, study.cascade_steps(c)[-1]) for c in study.classifiers()]
    values = per_image(index, "cascading_randomization", metric, method, last, ids)
    baseline = per_image(index, "random_pairs", metric, method,
                         [(c.name, "baseline") for c in study.classifiers()], ids)
    return values, baseline, "random pairs"
  pairs = [(m, ORIGINAL) for m in _models(index, criterion, method)]
  values = per_image(index, criterion, metric, method, pairs, ids)
  loc_pairs = [(m, ORIGINAL) for m in _models(index, "localization_agreement",
                                              LOCALIZATION_METHOD)]
  baseline = per_image(index, "localization_agreement", metric, LOCALIZATION_METHOD,
                       loc_pairs, ids)
  return values, baseline, "localization network"


def _ids(index, criterion: str) -> List[str]:
  ids = set()
  for key, column in index.items():
    if key[0] == criterion:
      ids.update(column)
  return sorted(ids)


def scorecard(records, study) -> List[Dict[str, Any]]:
  """One row per method x criterion: value (95% CI), baseline, test, p-values, verdict."""
  index = index_records(records)
  s = study.config.study
  rules = rules_from_config(study.config)
  rows = []
  for name, rule in rules.items():
    criterion = rule.get("criterion", name)
    source = {"randomization": "cascading_randomization"}.get(criterion, criterion)
    ids = _ids(index, source)
    criterion_rows, results = [], {}
    for method in study.method_names():
      values, baseline, baseline_name = criterion_values(
          index, study, criterion, method, rule["metric"], ids, rule.get("baseline", ""))
      row = dict(criterion=name, method=method, metric=rule["metric"],
                 baseline_name=baseline_name, rule=rule["text"],
                 alternative=rule["alternative"])
      row.update(_describe(values, "value", seed=study.config.seed,
                           resamples=s.bootstrap_resamples))
      row.update(_describe(baseline, "baseline", seed=study.config.seed,
                           resamples=s.bootstrap_resamples))
      results[method] = _paired_test(values, baseline, rule)
      criterion_rows.append(row)
    _apply_tests(criterion_rows, results, s.correction, s.alpha)
    rows += criterion_rows
  return rows


def _describe(values: np.ndarray, prefix: str, *, seed: int, resamples: int) -> Dict[str, Any]:
  """Mean, std and bootstrap 95% CI of the defined values; NaN (undefined) excluded, counted."""
  summary = statistics.summarize(values)
  ci = statistics.bootstrap_ci(values, seed=seed, n_resamples=resamples)
  return {prefix: _finite_or_none(summary["mean"]),
          f"{prefix}_std": _finite_or_none(summary["std"]),
          f"{prefix}_ci": ([ci["low"], ci["high"]] if np.isfinite(ci["low"]) else None),
          f"{prefix}_n": summary["n"], f"{prefix}_excluded": summary["n_excluded"]}


TESTS = {"wilcoxon": statistics.wilcoxon, "paired_t": statistics.paired_t}


def _paired_test(values: np.ndarray, baseline: np.ndarray, rule) -> statistics.TestResult:
  test = rule.get("test", "wilcoxon")
  if test not in TESTS:
    raise ValueError(f"unknown test {test!r}; known: {sorted(TESTS)}")
  return TESTS[test](values, baseline, alternative=rule["alternative"])


def _apply_tests(rows: List[Dict[str, Any]], results: Dict[str, statistics.TestResult],
                 correction: str, alpha: float) -> None:
  """Adds each row's test, corrected p-value and verdict (PASS/FAIL/N/A)."""
  tested = {m: r for m, r in results.items() if np.isfinite(r.pvalue)}
  corrected = statistics.correct(tested, method=correction) if tested else {}
  for row in rows:
    result = results[row["method"]]
    row.update(test=result.test, statistic=_finite_or_none(result.statistic),
               p_value=_finite_or_none(result.pvalue), pairs=result.n,
               pairs_excluded=result.n_excluded)
    if row["method"] in corrected:
      row["p_adjusted"] = corrected[row["method"]]["pvalue_adjusted"]
      row["correction"] = corrected[row["method"]]["correction"]
      row["verdict"] = "PASS" if row["p_adjusted"] < alpha else "FAIL"
    else:
      row.update(p_adjusted=None, correction=None, verdict="N/A")


def _finite_or_none(value) -> Optional[float]:
  return float(value) if value is not None and np.isfinite(value) else None


def rules_from_config(config) -> Dict[str, Dict[str, Any]]:
  """The config's rules, each completed from the default rule of its name where it has one
  (a rule left out of the config is not scored)."""
  configured = config.study.get("rules", None)
  configured = DEFAULT_RULES if configured is None else configured.to_dict()
  rules = {}
  for name, rule in configured.items():
    rules[name] = {**DEFAULT_RULES.get(name, {}), **rule}
    rules[name].setdefault("criterion", name)
  return rules


def curves(records, study) -> Dict[str, Any]:
  """Randomization curves, {metric: {architecture: {method: curve}}}.

  A curve holds, per cascading step, the mean and std over replicates of each replicate's
  mean similarity over images (the paper's curves), the random-pair baseline (mean over
  replicates), and the independent-randomization curve (Adebayo et al.) where it was run.
  """
  index = index_records(records)
  archs: Dict[str, list] = collections.OrderedDict()
  for clf in study.classifiers():
    archs.setdefault(clf.arch, []).append(clf)

  def image_mean(criterion, metric, method, model, state):
    return _nanmean(list(index.get((criterion, metric, method, model, state), {}).values()))

  out: Dict[str, Any] = {}
  for metric in ("ssim", "spearman_abs"):
    for arch, clfs in archs.items():
      steps = study.cascade_steps(clfs[0])
      blocks = list(clfs[0].module.block_names)
      for method in study.method_names():
        cascade = np.array([[_none_to_nan(image_mean("cascading_randomization", metric,
                                                     method, c.name, step))
                             for step in steps] for c in clfs])
        mean, std = _column_mean_std(cascade)
        independent = np.array([[_none_to_nan(image_mean(
            "independent_randomization", metric, method, c.name, INDEPENDENT_PREFIX + b))
            for b in blocks] for c in clfs])
        has_independent = np.isfinite(independent).any()
        out.setdefault(metric, {}).setdefault(arch, {})[method] = dict(
            steps=[s.replace(CASCADE_PREFIX, "") for s in steps],
            mean=_list(mean), std=_list(std), replicates=[c.name for c in clfs],
            baseline=_nanmean([_none_to_nan(image_mean("random_pairs", metric, method,
                                                       c.name, "baseline")) for c in clfs]),
            independent=dict(steps=blocks, mean=_list(_column_mean_std(independent)[0]))
            if has_independent else None)
  return out


def _none_to_nan(value) -> float:
  return np.nan if value is None else value


def _column_mean_std(arr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Column mean and (population) std over the defined entries; NaN where a column has none."""
  mean = criteria.mean_of_defined(arr, axis=0)
  return mean, np.sqrt(criteria.mean_of_defined((arr - mean) ** 2, axis=0))


def _nanmean(values) -> Optional[float]:
  return _finite_or_none(float(criteria.mean_of_defined(values)))


def _list(arr) -> List[Optional[float]]:
  return [float(v) if np.isfinite(v) else None for v in arr]


def utility_table(records, study) -> List[Dict[str, Any]]:
  """Mean localization metrics of every method (trained, untrained) and the baselines."""
  index = index_records(records)
  ids = _ids(index, "utility")
  models = list(study.config.study.utility_models)
  rows = []
  entries = [(m, "trained", [(x, ORIGINAL) for x in models]) for m in study.method_names()]
  entries += [(m, "untrained", [(x, UNTRAINED) for x in models])
              for m in study.method_names()]
  entries.append((AVERAGE_MASK, "baseline", [("-", "baseline")]))
  entries.append((LOCALIZATION_METHOD, "baseline",
                  [(x, "baseline") for x in _models(index, "utility", LOCALIZATION_METHOD)]))
  for method, state, selection in entries:
    row = dict(method=method, state=state)
    for metric in ("auprc", "pointing_game", "iou_otsu"):
      values = per_image(index, "utility", metric, method, selection, ids)
      row[metric] = _nanmean(values)
      row[f"{metric}_excluded"] = int((~np.isfinite(values)).sum())
    rows.append(row)
  return rows


def summarize_study(records, study) -> Dict[str, Any]:
  return dict(
      scorecard=scorecard(records, study),
      rules=rules_from_config(study.config),
      curves=curves(records, study),
      utility=utility_table(records, study),
  )
