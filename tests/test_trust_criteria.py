"""The trust criteria and verdicts on hand-made maps with known answers."""

import ml_collections
import numpy as np
import pytest
import scipy.stats
from scoring_inputs import tidy_records
from skimage.metrics import structural_similarity

from saliency_jax.trust import criteria
from saliency_jax.trust import verdicts
from saliency_jax.trust.manifest import CLASSIFIER
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.manifest import ModelEntry
from saliency_jax.trust.names import Baseline


def _smooth_maps(n, h=17, w=13, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  maps = []
  for _ in range(n):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    maps.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20.0))
  return np.asarray(maps, np.float32)


def test_random_pairs_with_two_images_is_their_similarity():
  maps = _smooth_maps(2)
  maps[1] -= 0.5  # signed: the Spearman baseline ranks |map|
  got = criteria.random_pair_baseline(maps, pairs=5, seed=3, data_range=1.0)
  expected = structural_similarity(maps[0], maps[1], data_range=1.0)
  np.testing.assert_allclose(got["ssim"], [expected, expected], atol=1e-5)
  rho = scipy.stats.spearmanr(np.abs(maps[0]).ravel(), np.abs(maps[1]).ravel())[0]
  np.testing.assert_allclose(got["spearman_abs"], [rho, rho], atol=1e-9)


def test_random_pairs_approach_the_mean_over_all_other_images():
  maps = _smooth_maps(5)
  got = criteria.random_pair_baseline(maps, pairs=4000, seed=0, data_range=1.0)["ssim"]
  for i in range(5):
    others = [structural_similarity(maps[i], maps[j], data_range=1.0) for j in range(5) if j != i]
    assert got[i] == pytest.approx(np.mean(others), abs=0.02)


def test_random_pairs_never_compare_an_image_with_itself():
  # Identical maps would give SSIM 1; with distinct images it must stay below.
  maps = _smooth_maps(3)
  got = criteria.random_pair_baseline(maps, pairs=50, seed=1, data_range=1.0)["ssim"]
  assert np.all(got < 0.999)


def test_random_pairs_need_two_images():
  with pytest.raises(ValueError, match="two images"):
    criteria.random_pair_baseline(_smooth_maps(1), pairs=3, seed=0, data_range=1.0)


def test_average_mask_is_the_pixelwise_mean():
  masks = [np.zeros((4, 5, 1), np.uint8) for _ in range(4)]
  masks[0][0, 0] = 1
  masks[1][0, 0] = 1
  masks[2][3, 4] = 1
  avg = criteria.average_mask(masks)
  assert avg.shape == (4, 5)
  assert avg[0, 0] == pytest.approx(0.5) and avg[3, 4] == pytest.approx(0.25)
  assert avg.sum() == pytest.approx(0.75)
  with pytest.raises(ValueError, match="at least one"):
    criteria.average_mask([])


def test_utility_of_a_perfect_map_and_an_empty_mask():
  masks = np.zeros((2, 9, 7), bool)
  masks[0, 2:5, 1:4] = True  # image 1 has an empty mask: undefined
  maps = masks.astype(np.float32)
  scores = criteria.utility(maps, masks)
  assert scores["auprc"][0] == pytest.approx(1.0)
  assert scores["pointing_game"][0] == 1.0
  assert scores["iou_otsu"][0] == pytest.approx(1.0)
  assert all(np.isnan(v[1]) for v in scores.values())


def test_similarity_of_identical_maps():
  maps = _smooth_maps(3)
  values = criteria.similarity(maps, maps, data_range=1.0)
  np.testing.assert_allclose(values["ssim"], 1.0, atol=1e-6)
  np.testing.assert_allclose(values["spearman_abs"], 1.0, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Verdicts on hand-made records.


def _manifest(methods=("GOOD", "BAD")):
  manifest = Manifest("unused.json")
  manifest.record_run(
    models=[ModelEntry("A1", "a", ("logits", "stem"), CLASSIFIER)],
    image_ids={},
    methods=list(methods),
    computed_methods=list(methods),
    utility_models=["A1"],
    independent_models=[],
  )
  return manifest


_STUDY_CONFIG = ml_collections.ConfigDict(
  dict(alpha=0.05, correction="holm", bootstrap_resamples=200)
)


def _scorecard(records):
  return verdicts.scorecard(records, _manifest(), _STUDY_CONFIG, seed=0)


def test_utility_verdicts_follow_the_paired_test():
  rng = np.random.default_rng(0)
  n = 30
  base = rng.uniform(0.1, 0.2, n)
  records = tidy_records("utility", "auprc", Baseline.AVERAGE_MASK, "-", "baseline", base)
  records += tidy_records("utility", "auprc", "GOOD", "A1", "original", base + 0.3)
  bad = base - 0.05
  bad[0] = np.nan  # one undefined image: excluded and counted
  records += tidy_records("utility", "auprc", "BAD", "A1", "original", bad)
  rows = {r["method"]: r for r in _scorecard(records) if r["criterion"] == "utility"}
  assert rows["GOOD"]["verdict"] == "PASS"
  assert rows["BAD"]["verdict"] == "FAIL"
  assert rows["GOOD"]["value"] == pytest.approx(np.mean(base + 0.3))
  assert rows["BAD"]["value_excluded"] == 1 and rows["BAD"]["pairs_excluded"] == 1
  assert "Wilcoxon" in rows["GOOD"]["test"]
  # Holm over two methods: the adjusted p-value is at least the raw one.
  assert rows["GOOD"]["p_adjusted"] >= rows["GOOD"]["p_value"]
  low, high = rows["GOOD"]["value_ci"]
  assert low < rows["GOOD"]["value"] < high


def test_randomization_verdict_uses_the_last_cascading_step_and_random_pairs():
  n = 25
  rng = np.random.default_rng(1)
  pairs = rng.uniform(0.3, 0.4, n)
  records = []
  for method, final in (("GOOD", pairs - 0.2), ("BAD", pairs + 0.3)):
    records += tidy_records("random_pairs", "ssim", method, "A1", "baseline", pairs)
    records += tidy_records("cascading_randomization", "ssim", method, "A1", "original", np.ones(n))
    # The first step is far from the baseline in the wrong direction for GOOD: only the
    # last step may decide.
    records += tidy_records(
      "cascading_randomization", "ssim", method, "A1", "cascade_logits", np.full(n, 0.99)
    )
    records += tidy_records("cascading_randomization", "ssim", method, "A1", "cascade_stem", final)
  rows = {r["method"]: r for r in _scorecard(records) if r["criterion"] == "randomization"}
  assert rows["GOOD"]["verdict"] == "PASS" and rows["BAD"]["verdict"] == "FAIL"
  assert rows["GOOD"]["baseline"] == pytest.approx(pairs.mean())


def test_repeatability_without_pairs_is_not_applicable():
  records = tidy_records("utility", "auprc", Baseline.AVERAGE_MASK, "-", "baseline", np.ones(3))
  records += tidy_records(
    "localization_agreement", "ssim", Baseline.LOCALIZATION, "U1-U2", "original", np.full(3, 0.9)
  )
  rows = [r for r in _scorecard(records) if r["criterion"] == "repeatability"]
  assert rows and all(r["verdict"] == "N/A" for r in rows)


def test_rules_from_config_override_defaults():
  study_config = ml_collections.ConfigDict(dict(rules=dict(utility=dict(test="paired_t"))))
  rules = verdicts.rules_from_config(study_config)
  assert rules["utility"]["test"] == "paired_t"
  assert rules["utility"]["metric"] == "auprc"
  assert set(rules) == {"utility"}  # a rule the config leaves out is not scored


def test_means_leave_undefined_values_out():
  values = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan], [2.0, 2.0, np.inf]])
  np.testing.assert_array_equal(criteria.mean_of_defined(values, axis=1), [2.0, np.nan, 2.0])
  np.testing.assert_array_equal(criteria.mean_of_defined(values, axis=0), [1.5, 2.0, 3.0])
  assert np.isnan(criteria.mean_of_defined([]))
