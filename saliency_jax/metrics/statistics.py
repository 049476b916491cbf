"""Aggregation and hypothesis tests over per-image metric values.

NaN values are the metrics' "undefined" (see `saliency_jax.metrics.policy`). Every helper here
leaves them out and says how many it left out (`n_excluded`); nothing averages a NaN silently.
Paired tests drop a pair when either value is NaN.

SciPy is imported at run time: scikit-image, a runtime dependency, depends on it, so it is
always installed. The tests are SciPy's own (`scipy.stats.wilcoxon`, `scipy.stats.ttest_rel`);
every result carries the name of the test that produced its p-value.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np
import scipy.stats

_ALTERNATIVES = ("two-sided", "greater", "less")


def _finite(values) -> tuple[np.ndarray, int]:
  values = np.asarray(values, dtype=np.float64).ravel()
  keep = ~np.isnan(values)
  if np.isinf(values[keep]).any():
    raise ValueError("values contain inf; metrics return NaN, never inf, for undefined cases.")
  return values[keep], int((~keep).sum())


def summarize(values, *, ddof: int = 1) -> dict:
  """Mean and spread of per-image values, NaN excluded and counted.

  Args:
    values: array-like of floats (one metric value per image); NaN = undefined.
    ddof: delta degrees of freedom of `std` (1: sample standard deviation).

  Returns:
    dict with `mean`, `std`, `sem` (std / sqrt(n)), `median`, `min`, `max`, `n` (values used),
    `n_excluded` (NaN values left out) and `n_total`. Statistics of an empty selection are NaN;
    `std`/`sem` are NaN when n <= ddof.
  """
  kept, excluded = _finite(values)
  n = kept.size
  nan = float("nan")
  std = float(np.std(kept, ddof=ddof)) if n > ddof else nan
  return {
    "mean": float(np.mean(kept)) if n else nan,
    "std": std,
    "sem": float(std / np.sqrt(n)) if n > ddof else nan,
    "median": float(np.median(kept)) if n else nan,
    "min": float(np.min(kept)) if n else nan,
    "max": float(np.max(kept)) if n else nan,
    "n": n,
    "n_excluded": excluded,
    "n_total": n + excluded,
  }


def bootstrap_ci(values, *, seed: int, n_resamples: int = 1000, confidence: float = 0.95) -> dict:
  """Percentile-bootstrap confidence interval of the mean, NaN excluded and counted.

  Resamples with `numpy.random.default_rng(seed)` exactly as `scipy.stats.bootstrap(...,
  method="percentile", rng=default_rng(seed))` does (one draw of [n_resamples, n] indices), so
  the two agree for the same seed. Percentiles are NumPy's linear interpolation.

  Returns:
    dict with `low`, `high`, `mean` (of the data), `confidence`, `n_resamples`, `seed`, `n`,
    `n_excluded` and `method`. With fewer than 2 values, `low`/`high` are NaN.
  """
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
  if n_resamples < 1:
    raise ValueError(f"n_resamples must be positive, got {n_resamples}.")
  kept, excluded = _finite(values)
  n = kept.size
  result = {
    "mean": float(np.mean(kept)) if n else float("nan"),
    "confidence": confidence,
    "n_resamples": n_resamples,
    "seed": seed,
    "n": n,
    "n_excluded": excluded,
    "method": "percentile bootstrap of the mean",
  }
  if n < 2:
    return {**result, "low": float("nan"), "high": float("nan")}
  rng = np.random.default_rng(seed)
  indices = rng.integers(0, n, (n_resamples, n))
  means = kept[indices].mean(axis=-1)
  alpha = (1 - confidence) / 2
  low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
  return {**result, "low": float(low), "high": float(high)}


@dataclasses.dataclass(frozen=True)
class TestResult:
  """A paired comparison: the statistic, its p-value, and the test that produced it."""

  test: str
  statistic: float
  pvalue: float
  alternative: str
  n: int
  n_excluded: int
  mean_difference: float

  def asdict(self) -> dict:
    return dataclasses.asdict(self)


def _paired(values, baseline) -> tuple[np.ndarray, np.ndarray, int]:
  values = np.asarray(values, dtype=np.float64).ravel()
  baseline = np.asarray(baseline, dtype=np.float64)
  if baseline.ndim == 0:
    baseline = np.full_like(values, baseline)
  baseline = baseline.ravel()
  if values.shape != baseline.shape:
    raise ValueError(f"paired values need equal lengths, got {values.size} and {baseline.size}.")
  keep = ~(np.isnan(values) | np.isnan(baseline))
  if np.isinf(values[keep]).any() or np.isinf(baseline[keep]).any():
    raise ValueError("values contain inf.")
  return values[keep], baseline[keep], int((~keep).sum())


def _check_alternative(alternative: str) -> None:
  if alternative not in _ALTERNATIVES:
    raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}.")


def wilcoxon(values, baseline, *, alternative: str = "two-sided") -> TestResult:
  """Wilcoxon signed-rank test of `values - baseline` (per image), = scipy.stats.wilcoxon.

  SciPy's defaults: zero differences dropped (`zero_method="wilcox"`), exact distribution for
  small samples without ties, normal approximation otherwise. `alternative="greater"` tests
  values > baseline. `baseline` may be a scalar (a one-sample test against that value).
  Fewer than one non-NaN pair, or all differences zero, gives NaN statistic and p-value.
  """
  return _paired_test(
    "Wilcoxon signed-rank (scipy.stats.wilcoxon)",
    scipy.stats.wilcoxon,
    lambda d: np.any(d != 0),
    values,
    baseline,
    alternative,
  )


def paired_t(values, baseline, *, alternative: str = "two-sided") -> TestResult:
  """Paired t-test of `values` against `baseline` (per image), = scipy.stats.ttest_rel.

  `baseline` may be a scalar (then a one-sample t-test, = scipy.stats.ttest_1samp). Fewer than
  two pairs gives NaN.
  """
  return _paired_test(
    "paired t-test (scipy.stats.ttest_rel)",
    scipy.stats.ttest_rel,
    lambda d: d.size >= 2,
    values,
    baseline,
    alternative,
  )


def _paired_test(name: str, test, defined, values, baseline, alternative: str) -> TestResult:
  """`test(x, y, alternative=...)` on the non-NaN pairs; NaN statistic and p-value where
  `defined(x - y)` is false."""
  _check_alternative(alternative)
  x, y, excluded = _paired(values, baseline)
  d = x - y
  mean_difference = float(np.mean(d)) if d.size else float("nan")
  if not defined(d):
    stat = pvalue = float("nan")
  else:
    res = test(x, y, alternative=alternative)
    stat, pvalue = float(res.statistic), float(res.pvalue)
  return TestResult(name, stat, pvalue, alternative, int(d.size), excluded, mean_difference)


def _adjusted(pvalues: Sequence[float], adjust) -> np.ndarray:
  """Applies `adjust(sorted non-NaN p-values, m)` and returns them in the given order, NaN kept."""
  p = np.asarray(pvalues, dtype=np.float64)
  out = np.full(p.shape, np.nan)
  keep = ~np.isnan(p)
  q = p[keep]
  if q.size:
    order = np.argsort(q, kind="stable")
    result = np.empty(q.size)
    result[order] = adjust(q[order], q.size)
    out[keep] = result
  return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm-Bonferroni adjusted p-values (family-wise error), same order as given; NaN kept.

  Adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) over the m non-NaN p-values sorted
  increasingly. Reject at level alpha where the adjusted p-value <= alpha.
  """

  def adjust(sorted_p, m):
    scaled = (m - np.arange(m)) * sorted_p
    return np.minimum(np.maximum.accumulate(scaled), 1.0)

  return _adjusted(pvalues, adjust)


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
  """Benjamini-Hochberg adjusted p-values (false discovery rate), same order; NaN kept.

  Adjusted p_(i) = min_{j >= i} min(1, m p_(j) / j) over the m non-NaN p-values sorted
  increasingly; equals `scipy.stats.false_discovery_control(p, method="bh")`.
  """

  def adjust(sorted_p, m):
    scaled = sorted_p * m / np.arange(1, m + 1)
    return np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)

  return _adjusted(pvalues, adjust)


_CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


def correct(results: dict[str, TestResult], *, method: str = "holm") -> dict[str, dict]:
  """Adjusts the p-values of several methods' tests for multiple comparisons.

  Args:
    results: {method name: TestResult} (one comparison per saliency method).
    method: "holm" (Holm-Bonferroni) or "bh" (Benjamini-Hochberg).

  Returns:
    {name: result as a dict plus `pvalue_adjusted` and `correction`}.
  """
  if method not in _CORRECTIONS:
    raise ValueError(f"method must be one of {sorted(_CORRECTIONS)}, got {method!r}.")
  names = list(results)
  adjusted = _CORRECTIONS[method]([results[k].pvalue for k in names])
  label = {"holm": "Holm-Bonferroni", "bh": "Benjamini-Hochberg"}[method]
  return {
    k: {**results[k].asdict(), "pvalue_adjusted": float(a), "correction": label}
    for k, a in zip(names, adjusted)
  }
