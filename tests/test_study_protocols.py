"""A paper-protocol run and a run with every protocol choice flipped, end to end at tiny sizes:
each gives its own verdicts, labelled with the choices it ran with."""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from configs import tiny
from saliency_jax import maps as maps_lib
from saliency_jax import trust
from saliency_jax.trust import map_reader
from saliency_jax.trust import protocol
from saliency_jax.trust.maps_stage import MapsStage
from saliency_jax.trust.names import SetName

# Every choice a synthetic run can make otherwise (cohort and init have no alternative there;
# map_dtype has none).
FLIPPED = dict(
  randomized_target="trained",
  cascade_keep=0,
  randomization_pooling="pooled",
  random_pairs="per_image",
  localization_agreement="probability",
  agreement_images="eval",
  utility_images="sampled",
  minmax_maps=False,
  ig_baseline="black",
  xrai_grayscale="shifted",
)


def _config(flipped: bool):
  config = tiny.get_config()
  config.methods.names = ("GRAD", "GGCAM")
  config.methods.settings = ml_collections.ConfigDict()
  config.sanity.smooth_mprt.methods = ("GRAD",)
  config.study.independent_randomization = ()
  if flipped:
    config.protocol.update(FLIPPED)
    config.study.rules = ml_collections.ConfigDict(
      {k: v for k, v in config.study.rules.to_dict().items() if k != "utility_localization"}
    )
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("protocols")
  paper = trust.Study(_config(False), str(root / "paper"))
  paper.run()
  # The same data and trained models (training does not depend on the protocol): reused.
  for part in ("data", "models"):
    shutil.copytree(root / "paper" / part, root / "flipped" / part)
  flipped = trust.Study(_config(True), str(root / "flipped"))
  flipped.run()
  return paper, flipped


def _summary(study):
  with open(os.path.join(study.workdir, "summary.json")) as f:
    return json.load(f)


def _records(study, criterion):
  with open(os.path.join(study.workdir, "results.json")) as f:
    return [r for r in json.load(f) if r["criterion"] == criterion]


def test_each_summary_records_the_protocol_it_ran_with(runs):
  paper, flipped = runs
  assert _summary(paper)["protocol"] == paper.config.protocol.to_dict()
  assert _summary(flipped)["protocol"] == flipped.config.protocol.to_dict()
  assert protocol.differs(flipped.config) == sorted(
    ["study.rules", "protocol.cohort", "protocol.init"] + [f"protocol.{k}" for k in FLIPPED],
    key=[c.field for c in protocol.CHOICES].index,
  )


def test_randomization_verdicts_are_labelled_with_their_choices(runs):
  paper, flipped = runs
  rows = [r for r in _summary(paper)["scorecard"] if r["criterion"] == "randomization"]
  assert {r["architecture"] for r in rows} == {"small_vgg", "small_densenet"}
  for r in rows:  # logits, block2 randomized; block1 and the stem kept, as the authors did
    assert r["step"] == "block2" and r["baseline_kind"] == "scalar"
    assert "one-sample" in r["test"] and r["pairs"] == len(paper.data.image_set("eval").ids)
  vgg = {r["method"]: r for r in rows if r["architecture"] == "small_vgg"}
  assert vgg["GRAD"]["replicates"] == ["A1", "A2"]
  assert vgg["GRAD"]["baseline_name"] == "random pairs (A1, one number)"
  rows = [r for r in _summary(flipped)["scorecard"] if r["criterion"] == "randomization"]
  assert {r["architecture"] for r in rows} == {None} and len(rows) == 2
  for r in rows:
    assert r["step"] == "stem" and r["baseline_kind"] == "per_image"
    assert "one-sample" not in r["test"] and r["replicates"] == ["A1", "A2", "B1"]
  states = {r["state"] for r in _records(paper, "cascading_randomization")}
  assert states == {"original", "cascade_logits", "cascade_block2"}
  states = {r["state"] for r in _records(flipped, "cascading_randomization")}
  assert states == {
    "original",
    "cascade_logits",
    "cascade_block2",
    "cascade_block1",
    "cascade_stem",
  }


def test_utility_rules_and_image_sets_follow_the_protocol(runs):
  paper, flipped = runs
  assert {r["criterion"] for r in _summary(paper)["scorecard"]} >= {"utility_localization"}
  assert "utility_localization" not in {r["criterion"] for r in _summary(flipped)["scorecard"]}
  test = paper.data.sources()["test"]
  positives = [
    str(test[i]["id"].decode() if isinstance(test[i]["id"], bytes) else test[i]["id"])
    for i in range(len(test))
    if int(test[i]["label"]) == 1
  ]
  assert list(paper.data.image_set(SetName.UTILITY).ids) == positives[:8]  # the first ones
  assert list(flipped.data.image_set(SetName.UTILITY).ids) != positives[:8]
  # Agreement on the utility set (paper) or the evaluation set.
  for study, set_name in ((paper, SetName.UTILITY), (flipped, SetName.EVAL)):
    ids = {r["image_id"] for r in _records(study, "repeatability")}
    assert ids == set(study.data.image_set(set_name).ids)


def test_localization_agreement_binary_or_probability(runs):
  paper, flipped = runs
  values = {}
  for name, study in (("paper", paper), ("flipped", flipped)):
    values[name] = {
      r["image_id"]: r["value"]
      for r in _records(study, "localization_agreement")
      if r["metric"] == "ssim"
    }
  common = sorted(set(values["paper"]) & set(values["flipped"]))
  assert common  # the eval set is part of the positives both sets draw from
  assert [values["paper"][i] for i in common] != [values["flipped"][i] for i in common]


def test_randomized_states_explain_their_own_prediction_or_the_trained_class(runs):
  paper, flipped = runs
  stage = MapsStage(paper.config, paper.workdir, paper.data, paper.models)
  eval_set = paper.data.image_set(SetName.EVAL)
  flips = 0
  for clf in paper.models.classifiers():
    trained = stage.targets(clf, eval_set)
    for set_name, state, variables in stage.states(clf):
      if set_name != SetName.EVAL or not state.startswith("cascade_"):
        continue
      own = stage.targets(clf, eval_set, variables)
      flips += int((own != trained).sum())
      # Paper: the state's own prediction; flipped: the trained model's class. The maps
      # differ exactly on the images whose prediction the randomization flipped.
      maps = [
        maps_lib.MapStore.open(
          map_reader.store_path(s.workdir, SetName.EVAL, clf.name, state, "GRAD")
        ).read_all()
        for s in (paper, flipped)
      ]
      differs = np.abs(maps[0] - maps[1]).reshape(len(own), -1).max(axis=1) > 0
      np.testing.assert_array_equal(differs, own != trained, err_msg=f"{clf.name} {state}")
  assert flips > 0, "no prediction flips: the test cannot tell the modes apart"


def test_each_report_prints_its_protocol_table(runs):
  for study in runs:
    with open(os.path.join(study.workdir, "report.md")) as f:
      md = f.read()
    assert "## Protocol" in md
    for row in protocol.table(study.config):
      assert "| " + " | ".join(row) + " |" in md
