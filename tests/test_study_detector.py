"""The tiny study with the RetinaNet localization baseline, through every stage."""

import json
import os

import numpy as np
import pytest

from configs import tiny
from saliency_jax import trust
from saliency_jax.maps import MapStore


@pytest.fixture(scope="module")
def detector_study(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny_detector"))
  config = tiny.get_config("retinanet")
  # Two replicates of one classifier and two methods: the baseline is what is tested here.
  config.models = config.models[:2]
  config.methods.names = ("GRAD", "GCAM")
  config.methods.settings = {}  # the other methods' settings would act on nothing
  config.sanity.input_invariance.models = ("A1",)  # B1 is left out
  config.sanity.smooth_mprt.methods = ("GRAD",)
  config.study.independent_randomization = ()
  study = trust.Study(config, workdir)
  study.run()
  return study, workdir


def test_detectors_train_and_report_their_map(detector_study):
  _, workdir = detector_study
  with open(os.path.join(workdir, "models", "summary.json")) as f:
    trained = json.load(f)
  for name in ("UNET1", "UNET2"):
    assert trained[name]["arch"] == "retinanet"
    assert 0.0 <= trained[name]["val_map"] <= 1.0
    assert 0.0 <= trained[name]["val_rsna_score"] <= 1.0
  with open(os.path.join(workdir, "report.md")) as f:
    report = f.read()
  assert "RetinaNet (baseline)" in report and "RetinaNet replicates" in report
  assert "| UNET1 | retinanet | val_map |" in report
  assert "U-Net" not in report


def test_score_maps_are_the_baseline_of_utility_and_agreement(detector_study):
  _, workdir = detector_study
  for replicate in ("UNET1", "UNET2"):
    maps = MapStore.open(
      os.path.join(workdir, "maps", "utility", replicate, "original", "UNET")
    ).read_all()
    assert maps.shape[1:] == (32, 32)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
  with open(os.path.join(workdir, "results.json")) as f:
    records = json.load(f)
  utility = {r["model"] for r in records if r["criterion"] == "utility" and r["method"] == "UNET"}
  assert utility == {"UNET1", "UNET2"}
  agreement = [r for r in records if r["criterion"] == "localization_agreement"]
  assert {r["model"] for r in agreement} == {"UNET1-UNET2"}
  assert any(r["value"] is not None and np.isfinite(r["value"]) for r in agreement)
