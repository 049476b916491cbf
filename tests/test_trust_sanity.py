"""The sanity checks' config validation, rules and verdict rows on hand-made records."""

import numpy as np
import pytest
from scipy import stats
from scoring_inputs import tidy_records

from configs import tiny
from saliency_jax.trust import sanity
from saliency_jax.trust import sanity_scoring


def test_validate_names_the_bad_field():
  config = tiny.get_config()
  sanity.validate(config)
  config.sanity.random_logit.models = ("Z9",)
  with pytest.raises(ValueError, match=r"sanity.random_logit.models names 'Z9'"):
    sanity.validate(config)
  config = tiny.get_config()
  config.sanity.faithfulness.baseline = "zeros"
  with pytest.raises(ValueError, match="faithfulness.baseline"):
    sanity.validate(config)
  config = tiny.get_config()
  config.sanity.faithfulness.road_percentages = (0.5, 0.2)
  with pytest.raises(ValueError, match="road_percentages"):
    sanity.validate(config)
  config = tiny.get_config()
  config.sanity.smooth_mprt.methods = ("NOPE",)
  with pytest.raises(ValueError, match="smooth_mprt.methods"):
    sanity.validate(config)


def test_disabled_checks_leave_no_column():
  config = tiny.get_config()
  config.sanity.random_logit.enabled = False
  config.sanity.faithfulness.enabled = False
  assert set(sanity_scoring.rules(config.sanity)) == set(sanity.CHECKS) - {
    "random_logit",
    "faithfulness",
  }


class _Manifest:
  def __init__(self, config):
    self.methods = self.computed_methods = list(config.methods.names)


def _scorecard(records, config):
  return sanity_scoring.scorecard(
    records, _Manifest(config), config.sanity, config.study, seed=config.seed
  )


def _only(config, check):
  """Disables every check of `config.sanity` but `check`."""
  for other in sanity.CHECKS:
    config.sanity[other].enabled = other == check


def test_scorecard_rows_test_each_check_against_its_baseline():
  config = tiny.get_config()
  config.methods.names = ("GRAD", "GBP")
  _only(config, "data_randomization")
  config.study.alpha = 0.05
  rng = np.random.default_rng(0)
  n = 12
  low, high = rng.uniform(0.0, 0.2, n), rng.uniform(0.5, 0.9, n)
  records = (
    tidy_records("data_randomization", "ssim", "GRAD", "A1", "data_randomized", low)
    + tidy_records("random_pairs", "ssim", "GRAD", "A1", "baseline", high)
    + tidy_records("data_randomization", "ssim", "GBP", "A1", "data_randomized", high)
    + tidy_records("random_pairs", "ssim", "GBP", "A1", "baseline", low)
  )
  rows = {r["method"]: r for r in _scorecard(records, config)}
  assert rows["GRAD"]["verdict"] == "PASS" and rows["GBP"]["verdict"] == "FAIL"
  assert rows["GRAD"]["value"] == pytest.approx(low.mean())
  assert rows["GRAD"]["baseline"] == pytest.approx(high.mean())
  p = stats.wilcoxon(low, high, alternative="less").pvalue
  assert rows["GRAD"]["p_value"] == pytest.approx(p)
  assert rows["GRAD"]["baseline_name"] == "random pairs"


def test_input_invariance_rule_compares_with_one_minus_tolerance():
  config = tiny.get_config()
  config.methods.names = ("GRAD", "IG")
  _only(config, "input_invariance")
  config.sanity.input_invariance.models = ("B1",)
  config.sanity.input_invariance.tolerance = 0.05
  n = 3
  records = tidy_records(
    "input_invariance", "ssim", "GRAD", "B1", "input_shifted", np.ones(n)
  ) + tidy_records(
    "input_invariance", "ssim", "IG", "B1", "input_shifted", np.linspace(0.3, 0.99, n)
  )
  rows = {r["method"]: r for r in _scorecard(records, config)}
  # Every image must meet the floor: no test, so a handful of images can pass.
  assert rows["GRAD"]["verdict"] == "PASS" and rows["IG"]["verdict"] == "FAIL"
  assert rows["GRAD"]["baseline"] == pytest.approx(0.95)
  assert rows["IG"]["statistic"] == pytest.approx(np.mean(np.linspace(0.3, 0.99, n) >= 0.95))
  assert rows["GRAD"]["p_value"] is None and rows["GRAD"]["pairs"] == n
