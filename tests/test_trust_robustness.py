"""The verdict-robustness grid: its choices, the rules it re-runs, and holds/flips."""

import ml_collections
import numpy as np
import pytest
import scipy.stats

from saliency_jax import metrics
from saliency_jax.trust import criteria
from saliency_jax.trust import robustness

RULES = {
  "utility": dict(
    metric="auprc", baseline="average_mask", alternative="greater", test="wilcoxon", text="t"
  ),
  "randomization": dict(
    metric="ssim", baseline="random_pairs", alternative="less", test="wilcoxon", text="t"
  ),
  "repeatability": dict(
    metric="spearman_abs",
    baseline="localization_network",
    alternative="greater",
    test="paired_t",
    text="t",
  ),
}


def _section(**overrides):
  section = dict(
    grayscale=("configured", "no_clip"),
    similarity=("ssim", "spearman", "hog"),
    ssim_data_ranges=(1.0, 2.0),
    top_k_fraction=0.1,
  )
  section.update(overrides)
  return ml_collections.ConfigDict(section)


def test_choices_cover_the_grid_once_with_the_run_first():
  grid = robustness.choices(_section())
  assert grid[0] == robustness.AS_CONFIGURED and grid[0].label == "as configured"
  # 2 grayscales x (ssim at 2 ranges + spearman + hog) = 8, plus the run itself.
  assert len(grid) == 9 and len(set(grid)) == 9
  assert robustness.Choice("no_clip", "ssim", 2.0) in grid
  assert robustness.Choice("configured", "hog", None).label == "hog"
  assert robustness.Choice("no_clip", "ssim", 2.0).label == "grayscale no_clip, ssim (data_range 2)"


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("grayscale", ("signed_sqrt",), "robustness.grayscale"),
    ("similarity", ("mutual_information",), "robustness.similarity"),
    ("ssim_data_ranges", (0.0,), "robustness.ssim_data_ranges"),
    ("top_k_fraction", 1.5, "robustness.top_k_fraction"),
  ],
)
def test_bad_sections_name_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    robustness.choices(_section(**{field: value}))


def test_study_config_swaps_only_similarity_metrics_and_the_range():
  study = ml_collections.ConfigDict(
    dict(ssim_data_range=1.0, alpha=0.05, rules=ml_collections.ConfigDict(RULES))
  )
  config = robustness.study_config_for(study, RULES, robustness.Choice("no_clip", "hog", None))
  assert config.rules.utility.metric == "auprc"  # not a similarity: kept
  assert config.rules.randomization.metric == "hog"
  assert config.rules.repeatability.metric == "hog"
  assert config.rules.repeatability.test == "paired_t"  # the rest of the rule as it was
  assert config.ssim_data_range == 1.0 and config.alpha == 0.05
  config = robustness.study_config_for(study, RULES, robustness.Choice("configured", "ssim", 2.0))
  assert config.ssim_data_range == 2.0 and config.rules.randomization.metric == "ssim"
  same = robustness.study_config_for(study, RULES, robustness.AS_CONFIGURED)
  assert same.rules.to_dict() == study.rules.to_dict()
  assert study.rules.randomization.metric == "ssim"  # the run's config is untouched
  assert robustness.similarity_names(RULES, robustness.AS_CONFIGURED) == ("ssim", "spearman_abs")
  assert robustness.similarity_names(RULES, robustness.Choice("no_clip", "hog", None)) == ("hog",)


def _rows(choice, verdicts):
  return robustness.verdict_rows(
    choice,
    [dict(criterion=c, method=m, metric="ssim", verdict=v) for (m, c), v in verdicts.items()],
  )


def test_compare_finds_holds_flips_and_undefined():
  hog = robustness.Choice("configured", "hog", None)
  clip = robustness.Choice("no_clip", "ssim", 1.0)
  rows = (
    _rows(
      robustness.AS_CONFIGURED,
      {
        ("GRAD", "randomization"): "PASS",
        ("GBP", "randomization"): "FAIL",
        ("IG", "randomization"): "N/A",
      },
    )
    + _rows(
      hog,
      {
        ("GRAD", "randomization"): "PASS",
        ("GBP", "randomization"): "PASS",
        ("IG", "randomization"): "FAIL",
      },
    )
    + _rows(
      clip,
      {
        ("GRAD", "randomization"): "N/A",
        ("GBP", "randomization"): "PASS",
        ("IG", "randomization"): "N/A",
      },
    )
  )
  out = {r["method"]: r for r in robustness.compare(rows)}
  assert out["GRAD"]["status"] == "holds" and out["GRAD"]["undefined"] == [clip.label]
  assert out["GBP"]["status"] == "flips" and out["GBP"]["flips"] == [hog.label, clip.label]
  assert out["IG"]["status"] == "N/A"
  assert all(r["grid_points"] == 2 for r in out.values())
  with pytest.raises(ValueError, match="as-configured"):
    robustness.compare(rows[3:])


def test_similarity_by_name_equals_references():
  rng = np.random.default_rng(1)
  a, b = rng.standard_normal((2, 3, 24, 26))
  values = criteria.similarity(
    a, b, data_range=2.0, names=criteria.SIMILARITY_NAMES, top_k_fraction=0.2
  )
  np.testing.assert_allclose(
    values["spearman"],
    [scipy.stats.spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)],
    rtol=1e-10,
  )
  np.testing.assert_allclose(values["ssim"], metrics.ssim(a, b, data_range=2.0))
  np.testing.assert_allclose(values["hog"], metrics.hog_similarity(a, b))
  np.testing.assert_allclose(values["top_k_iou"], metrics.top_k_iou(a, b, fraction=0.2))
  with pytest.raises(ValueError, match="unknown similarity metrics"):
    criteria.similarity(a, b, data_range=1.0, names=("psnr",))


def test_random_pairs_of_every_similarity_equal_the_pairwise_loop():
  rng = np.random.default_rng(2)
  maps = rng.standard_normal((4, 24, 24))
  maps[1] = 0.5  # constant: correlations undefined, left out of the means
  names = ("spearman", "hog", "top_k_iou")
  out = criteria.random_pair_baseline(maps, pairs=3, seed=5, data_range=1.0, names=names)
  partners = (np.arange(4)[:, None] + np.random.default_rng(5).integers(1, 4, (4, 3))) % 4
  for name in names:
    expected = [
      criteria.mean_of_defined(
        [
          criteria.similarity(maps[i : i + 1], maps[j : j + 1], data_range=1.0, names=(name,))[
            name
          ][0]
          for j in partners[i]
        ]
      )
      for i in range(4)
    ]
    if name == "hog":  # each map's HOG features computed once: the same numbers, bit for bit
      np.testing.assert_array_equal(out[name], expected)
    else:
      np.testing.assert_allclose(out[name], expected, rtol=1e-10)
