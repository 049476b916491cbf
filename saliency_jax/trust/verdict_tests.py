"""The statistics of a verdict: a rule's test, the correction across methods, and the mean,
std and bootstrap CI each scorecard row reports.

  results[method] = paired_test(values, baseline, rule)   # paired, or one-sample vs a number
  apply_tests(rows, results, correction, alpha)           # p-values, corrected; PASS/FAIL/N/A
  row.update(describe(values, "value", seed=..., resamples=...))

Undefined values (NaN) are excluded and counted; a number that is not finite is reported as
None.
"""

import dataclasses
from typing import Any

import numpy as np

from saliency_jax.metrics import statistics
from saliency_jax.trust import criteria

TESTS = {"wilcoxon": statistics.wilcoxon, "paired_t": statistics.paired_t}


def finite_or_none(value) -> float | None:
  return float(value) if value is not None and np.isfinite(value) else None


def mean_or_none(values) -> float | None:
  """Mean of the defined values; None where there are none."""
  return finite_or_none(float(criteria.mean_of_defined(values)))


def describe(values: np.ndarray, prefix: str, *, seed: int, resamples: int) -> dict[str, Any]:
  """Mean, std and bootstrap 95% CI of the defined values; NaN (undefined) excluded, counted."""
  summary = statistics.summarize(values)
  ci = statistics.bootstrap_ci(values, seed=seed, n_resamples=resamples)
  return {
    prefix: finite_or_none(summary["mean"]),
    f"{prefix}_std": finite_or_none(summary["std"]),
    f"{prefix}_ci": ([ci["low"], ci["high"]] if np.isfinite(ci["low"]) else None),
    f"{prefix}_n": summary["n"],
    f"{prefix}_excluded": summary["n_excluded"],
  }


def paired_test(values: np.ndarray, baseline: np.ndarray | float, rule) -> statistics.TestResult:
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


def apply_tests(
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
      statistic=finite_or_none(result.statistic),
      p_value=finite_or_none(result.pvalue),
      pairs=result.n,
      pairs_excluded=result.n_excluded,
    )
    if row["method"] in corrected:
      row["p_adjusted"] = corrected[row["method"]]["pvalue_adjusted"]
      row["correction"] = corrected[row["method"]]["correction"]
      row["verdict"] = "PASS" if row["p_adjusted"] < alpha else "FAIL"
    else:
      row.update(p_adjusted=None, correction=None, verdict="N/A")
