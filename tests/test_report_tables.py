"""The scorecard table's cells, from a hand-written summary."""

from saliency_jax.trust import report_tables


def _row(criterion, method, value, baseline, verdict, **extra):
  return dict(
    criterion=criterion,
    method=method,
    metric="ssim",
    value=value,
    value_ci=[value - 0.01, value + 0.01],
    baseline=baseline,
    verdict=verdict,
    **extra,
  )


def test_scorecard_cells_carry_the_corrected_p_value():
  summary = {
    "rules": {"randomization": {"metric": "ssim"}, "input_invariance": {"metric": "ssim"}},
    "scorecard": [
      # A mean well past the baseline that FAILs: 6 images, Holm over 8 methods.
      _row("randomization", "GCAM", -0.084, 0.5386, "FAIL", p_value=0.015625, p_adjusted=0.125),
      _row("randomization", "GRAD", 0.1, 0.5, "PASS", p_value=1e-5, p_adjusted=0.00008),
      # A property every map must have: no test, no p-value.
      _row("input_invariance", "GRAD", 0.999, 0.99, "PASS"),
    ],
  }
  table = report_tables.scorecard_table(summary, ["GRAD", "GCAM"])
  assert table.header == ["method", "randomization (SSIM)", "input_invariance (SSIM)"]
  grad, gcam = table.rows
  assert gcam == ["GCAM", "-0.084 [-0.094, -0.074] vs 0.539 **FAIL** (p 0.125)", "-"]
  assert grad[1] == "0.100 [0.090, 0.110] vs 0.500 **PASS** (p 8.00e-05)"
  assert grad[2] == "0.999 [0.989, 1.009] vs 0.990 **PASS**"
