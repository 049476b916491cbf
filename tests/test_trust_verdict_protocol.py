"""The verdict choices of config.protocol and the rules' `baseline`, on hand-made records."""

import ml_collections
import numpy as np
import pytest
import scipy.stats
from scoring_inputs import tidy_records

from saliency_jax.trust import protocol
from saliency_jax.trust import verdicts
from saliency_jax.trust.manifest import CLASSIFIER
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.manifest import ModelEntry
from saliency_jax.trust.names import Baseline

N = 24
BLOCKS = ("logits", "mid", "stem")
STUDY = ml_collections.ConfigDict(dict(alpha=0.05, correction="holm", bootstrap_resamples=100))


def _manifest(cascade_keep=0, methods=("M",)):
  manifest = Manifest("unused.json")
  manifest.record_run(
    models=[
      ModelEntry("A1", "vgg", BLOCKS, CLASSIFIER),
      ModelEntry("A2", "vgg", BLOCKS, CLASSIFIER),
      ModelEntry("B1", "dense", BLOCKS, CLASSIFIER),
    ],
    image_ids={},
    methods=list(methods),
    computed_methods=list(methods),
    utility_models=["A1"],
    independent_models=[],
    cascade_keep=cascade_keep,
  )
  return manifest


def _cascade(model, steps, pairs, method="M"):
  """Records of one model: each cascade step's values, and its random pairs."""
  records = tidy_records("random_pairs", "ssim", method, model, "baseline", pairs)
  records += tidy_records("cascading_randomization", "ssim", method, model, "original", np.ones(N))
  for block, values in steps.items():
    records += tidy_records(
      "cascading_randomization", "ssim", method, model, f"cascade_{block}", values
    )
  return records


def _protocol(**choices):
  p = protocol.paper_protocol()
  p.update(choices)
  return p


def _rows(records, manifest=None, **choices):
  return [
    r
    for r in verdicts.scorecard(
      records, manifest or _manifest(), STUDY, seed=0, protocol=_protocol(**choices)
    )
    if r["criterion"] == "randomization"
  ]


def test_randomization_verdicts_per_architecture_or_pooled():
  rng = np.random.default_rng(0)
  pairs = rng.uniform(0.3, 0.5, N)
  low, high = pairs - 0.25, pairs + 0.3
  records = []
  for model in ("A1", "A2"):  # architecture vgg falls below the random pairs
    records += _cascade(model, {"logits": low, "mid": low, "stem": low}, pairs)
  records += _cascade("B1", {"logits": high, "mid": high, "stem": high}, pairs)
  per_arch = {r["architecture"]: r for r in _rows(records)}
  assert set(per_arch) == {"vgg", "dense"}
  assert per_arch["vgg"]["verdict"] == "PASS" and per_arch["dense"]["verdict"] == "FAIL"
  assert per_arch["vgg"]["replicates"] == ["A1", "A2"]
  assert per_arch["vgg"]["value"] == pytest.approx(low.mean())
  pooled = _rows(records, randomization_pooling="pooled")
  assert len(pooled) == 1 and pooled[0]["architecture"] is None
  assert pooled[0]["value"] == pytest.approx(((2 * low + high) / 3).mean())


def test_the_verdict_is_read_at_the_cascades_configured_end():
  rng = np.random.default_rng(1)
  pairs = rng.uniform(0.3, 0.5, N)
  steps = {"logits": pairs + 0.3, "mid": pairs - 0.25, "stem": pairs + 0.3}
  records = sum((_cascade(m, steps, pairs) for m in ("A1", "A2", "B1")), [])
  to_stem = {r["architecture"]: r for r in _rows(records, _manifest(cascade_keep=0))}
  above_stem = {r["architecture"]: r for r in _rows(records, _manifest(cascade_keep=1))}
  assert to_stem["vgg"]["step"] == "stem" and to_stem["vgg"]["verdict"] == "FAIL"
  assert above_stem["vgg"]["step"] == "mid" and above_stem["vgg"]["verdict"] == "PASS"
  # The curve first falls below the baseline at "mid", whichever step the verdict reads.
  assert to_stem["vgg"]["first_step_past_baseline"] == "mid"
  assert above_stem["vgg"]["first_step_past_baseline"] == "mid"


def test_the_scalar_random_pair_baseline_is_one_number_with_a_one_sample_test():
  rng = np.random.default_rng(2)
  # Random pairs that vary a lot between images; the last step tracks them, just below.
  pairs = {m: rng.uniform(0.1, 0.9, N) for m in ("A1", "A2", "B1")}
  records = []
  for m in pairs:
    records += _cascade(
      m, {"logits": pairs[m] - 0.01, "mid": pairs[m] - 0.01, "stem": pairs[m] - 0.01}, pairs[m]
    )
  scalar = {r["architecture"]: r for r in _rows(records)}["vgg"]
  paired = {r["architecture"]: r for r in _rows(records, random_pairs="per_image")}["vgg"]
  values = (pairs["A1"] + pairs["A2"]) / 2 - 0.01
  # The authors' number: replicate 1's (A1's) mean random-pair SSIM.
  assert scalar["baseline"] == pytest.approx(pairs["A1"].mean())
  assert scalar["baseline_kind"] == "scalar" and "one-sample" in scalar["test"]
  assert scalar["p_value"] == pytest.approx(
    scipy.stats.wilcoxon(values - pairs["A1"].mean(), alternative="less").pvalue
  )
  assert paired["baseline_kind"] == "per_image" and "one-sample" not in paired["test"]
  assert paired["p_value"] == pytest.approx(
    scipy.stats.wilcoxon(values, (pairs["A1"] + pairs["A2"]) / 2, alternative="less").pvalue
  )
  # Every image just below its own pairs: the paired test passes; against one number not.
  assert paired["verdict"] == "PASS" and scalar["verdict"] == "FAIL"


def test_each_utility_rule_uses_its_baseline():
  rng = np.random.default_rng(3)
  average = rng.uniform(0.1, 0.2, N)
  unet = rng.uniform(0.6, 0.8, N)
  records = tidy_records("utility", "auprc", Baseline.AVERAGE_MASK, "-", "baseline", average)
  for model in ("U1", "U2"):
    records += tidy_records("utility", "auprc", Baseline.LOCALIZATION, model, "baseline", unet)
  records += tidy_records("utility", "auprc", "M", "A1", "original", average + 0.2)
  rows = {
    r["criterion"]: r
    for r in verdicts.scorecard(records, _manifest(), STUDY, seed=0, protocol=_protocol())
    if r["criterion"].startswith("utility")
  }
  assert rows["utility"]["baseline_name"] == "average mask"
  assert rows["utility"]["baseline"] == pytest.approx(average.mean())
  assert rows["utility"]["verdict"] == "PASS"
  assert rows["utility_localization"]["baseline_name"] == "localization network"
  assert rows["utility_localization"]["baseline"] == pytest.approx(unet.mean())
  assert rows["utility_localization"]["verdict"] == "FAIL"
  # The rules' `baseline` is the switch: one rule, the localization network.
  study = ml_collections.ConfigDict(STUDY.to_dict())
  study.rules = dict(
    vs_unet=dict(
      criterion="utility",
      baseline="localization_network",
      metric="auprc",
      alternative="greater",
      text="vs U-Net",
    )
  )
  only = verdicts.scorecard(records, _manifest(), study, seed=0, protocol=_protocol())
  assert [(r["criterion"], r["baseline_name"]) for r in only] == [
    ("vs_unet", "localization network")
  ]
  study.rules.vs_unet.baseline = "random_pairs"
  with pytest.raises(ValueError, match="not a baseline of utility"):
    verdicts.scorecard(records, _manifest(), study, seed=0, protocol=_protocol())
