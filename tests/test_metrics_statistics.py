"""Aggregation and tests against NumPy/SciPy and hand-worked corrections."""

import numpy as np
import pytest
import scipy.stats

from saliency_jax import metrics

RNG = np.random.default_rng(2)


def test_summarize_excludes_and_counts_nan():
  values = np.array([0.2, np.nan, 0.4, 0.9, np.nan, 0.5])
  kept = values[~np.isnan(values)]
  out = metrics.summarize(values)
  assert out["n"] == 4 and out["n_excluded"] == 2 and out["n_total"] == 6
  assert out["mean"] == pytest.approx(kept.mean())
  assert out["std"] == pytest.approx(np.std(kept, ddof=1))
  assert out["sem"] == pytest.approx(scipy.stats.sem(kept))
  assert out["median"] == pytest.approx(0.45)
  assert (out["min"], out["max"]) == (0.2, 0.9)
  assert metrics.summarize(values, ddof=0)["std"] == pytest.approx(np.std(kept))


def test_summarize_all_nan_and_inf():
  out = metrics.summarize([np.nan, np.nan])
  assert out["n"] == 0 and out["n_excluded"] == 2 and np.isnan(out["mean"])
  assert np.isnan(metrics.summarize([0.3])["std"])
  with pytest.raises(ValueError, match="inf"):
    metrics.summarize([0.1, np.inf])


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_bootstrap_ci_equals_scipy_percentile_bootstrap(confidence):
  values = RNG.random(40)
  values[[3, 17]] = np.nan
  kept = values[~np.isnan(values)]
  ours = metrics.bootstrap_ci(values, seed=7, n_resamples=500, confidence=confidence)
  ref = scipy.stats.bootstrap(
    (kept,),
    np.mean,
    n_resamples=500,
    confidence_level=confidence,
    method="percentile",
    rng=np.random.default_rng(7),
  ).confidence_interval
  assert ours["low"] == pytest.approx(ref.low, abs=1e-12)
  assert ours["high"] == pytest.approx(ref.high, abs=1e-12)
  assert ours["n"] == 38 and ours["n_excluded"] == 2
  assert ours["low"] < kept.mean() < ours["high"]
  # Seeded: same seed, same interval; another seed, another interval.
  assert (
    metrics.bootstrap_ci(values, seed=7, n_resamples=500, confidence=confidence)["low"]
    == ours["low"]
  )
  assert (
    metrics.bootstrap_ci(values, seed=8, n_resamples=500, confidence=confidence)["low"]
    != ours["low"]
  )


def test_bootstrap_ci_degenerate():
  out = metrics.bootstrap_ci([0.5, np.nan], seed=0)
  assert np.isnan(out["low"]) and out["n"] == 1 and out["n_excluded"] == 1
  with pytest.raises(ValueError):
    metrics.bootstrap_ci([0.1, 0.2], seed=0, confidence=1.5)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_paired_tests_equal_scipy(alternative):
  x = RNG.random(30)
  y = x - 0.05 + 0.1 * RNG.random(30)
  x[4] = np.nan  # pair dropped
  keep = ~np.isnan(x)
  w = metrics.wilcoxon(x, y, alternative=alternative)
  ref = scipy.stats.wilcoxon(x[keep], y[keep], alternative=alternative)
  assert (w.statistic, w.pvalue) == pytest.approx((ref.statistic, ref.pvalue))
  assert w.n == 29 and w.n_excluded == 1 and "Wilcoxon" in w.test
  t = metrics.paired_t(x, y, alternative=alternative)
  ref = scipy.stats.ttest_rel(x[keep], y[keep], alternative=alternative)
  assert (t.statistic, t.pvalue) == pytest.approx((ref.statistic, ref.pvalue))
  assert "t-test" in t.test and t.alternative == alternative
  assert t.mean_difference == pytest.approx(np.mean(x[keep] - y[keep]))


def test_paired_tests_against_scalar_baseline():
  x = RNG.random(25)
  t = metrics.paired_t(x, 0.4, alternative="greater")
  ref = scipy.stats.ttest_1samp(x, 0.4, alternative="greater")
  assert t.pvalue == pytest.approx(ref.pvalue)
  w = metrics.wilcoxon(x, 0.4)
  assert w.pvalue == pytest.approx(scipy.stats.wilcoxon(x - 0.4).pvalue)
  assert np.isnan(metrics.wilcoxon([0.1, 0.2], [0.1, 0.2]).pvalue)
  with pytest.raises(ValueError, match="alternative"):
    metrics.paired_t(x, x, alternative="bigger")


def test_holm_hand_worked():
  # Sorted p: 0.01, 0.02, 0.03, 0.04 (m = 4): 4*0.01, 3*0.02, 2*0.03, 1*0.04 -> running max.
  p = [0.03, 0.01, np.nan, 0.04, 0.02]
  np.testing.assert_allclose(metrics.holm(p), [0.06, 0.04, np.nan, 0.06, 0.06])
  np.testing.assert_allclose(metrics.holm([0.5, 0.4]), [0.8, 0.8])
  np.testing.assert_allclose(metrics.holm([0.9, 0.8]), [1.0, 1.0])


def test_benjamini_hochberg_equals_scipy():
  p = RNG.random(12) ** 3
  np.testing.assert_allclose(
    metrics.benjamini_hochberg(p), scipy.stats.false_discovery_control(p, method="bh")
  )
  # Hand-worked: sorted 0.01, 0.02, 0.04 (m = 3) -> 0.03, 0.03, 0.04.
  np.testing.assert_allclose(metrics.benjamini_hochberg([0.04, 0.01, 0.02]), [0.04, 0.03, 0.03])


def test_correct_names_tests_and_corrections():
  x = RNG.random(20)
  noise = 0.05 * RNG.random(20)
  results = {
    "GRAD": metrics.paired_t(x, x - 0.1 + noise),
    "SG": metrics.wilcoxon(x, x + 0.01 - noise),
  }
  out = metrics.correct(results, method="holm")
  raw = [results[k].pvalue for k in results]
  np.testing.assert_allclose([out[k]["pvalue_adjusted"] for k in results], metrics.holm(raw))
  assert out["GRAD"]["test"].startswith("paired t") and out["SG"]["correction"] == (
    "Holm-Bonferroni"
  )
  assert metrics.correct(results, method="bh")["SG"]["correction"] == "Benjamini-Hochberg"
