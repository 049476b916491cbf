"""Scoring and reporting from a hand-made workdir: manifest, map stores and ground truth only.

No Study and no training code: the scoring runs in a subprocess in which `saliency_jax.train`
cannot be imported.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scoring_inputs import MODELS
from scoring_inputs import write_store
from sklearn import metrics as skm

from saliency_jax.trust import map_reader
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import cascade_state
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, H, W = 5, 9, 11  # odd sizes


def _workdir(path):
  """Two replicates of one architecture, one of another, two U-Nets; method M everywhere."""
  rng = np.random.default_rng(0)
  ids = [f"img{i}" for i in range(N)]
  masks = np.zeros((N, H, W), bool)
  for i in range(N):
    masks[i, 2 + i % 3 : 6, 3 : 7 + i % 2] = True
  raw = rng.integers(0, 255, (N, H, W, 1), dtype=np.uint8)
  boxes = [np.array([[2, 3, 6, 7]])] * (N - 1) + [np.zeros((0, 4))]
  for set_name in (SetName.UTILITY, SetName.EVAL):
    map_reader.write_ground_truth(path, set_name, ids, raw, masks, boxes)
  map_reader.write_average_mask(path, masks.mean(0).astype(np.float32))
  trained = rng.uniform(0, 1, (N, H, W)).astype(np.float32)
  for m in MODELS[:3]:
    states = [State.ORIGINAL, State.UNTRAINED] + [cascade_state(b) for b in m.block_names]
    for state in states:
      maps = trained if state == State.ORIGINAL else rng.uniform(0, 1, (N, H, W))
      for set_name in (SetName.UTILITY, SetName.EVAL):
        write_store(path, set_name, m.name, state, "M", maps.astype(np.float32), ids)
  for m in MODELS[3:]:
    for set_name in (SetName.UTILITY, SetName.EVAL):
      write_store(
        path, set_name, m.name, State.ORIGINAL, Baseline.LOCALIZATION, masks.astype(np.float32), ids
      )
  manifest = Manifest.load(path)
  manifest.record_run(
    models=list(MODELS),
    image_ids={s: ids for s in SetName},
    methods=["M"],
    computed_methods=["M"],
    utility_models=["A1"],
    independent_models=[],
  )
  manifest.record_stage("maps", {"seed": 3})
  manifest.save()
  return trained, masks


_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["saliency_jax.train"] = None  # importing training code fails from here on
    import json
    import ml_collections
    from saliency_jax.trust import evaluation, report
    from saliency_jax.trust.manifest import Manifest
    from saliency_jax.trust.map_reader import MapReader
    workdir = sys.argv[1]
    config = ml_collections.ConfigDict(dict(
        seed=0, data=dict(name="handmade", image_size=9),
        study=dict(ssim_data_range=1.0, random_pairs=2, bootstrap_resamples=50, alpha=0.05,
                   correction="holm", target="predicted", num_example_images=2)))
    manifest = Manifest.load(workdir)
    reader = MapReader(workdir, manifest.computed_methods)
    evaluation.evaluate(manifest, reader, config.study, seed=config.seed, workdir=workdir)
    report.write_report(manifest, reader, config, workdir)
    loaded = [m for m in sys.modules if m.startswith("saliency_jax.trust.study")
              or m.startswith("saliency_jax.trust.maps_stage")
              or m.startswith("tensorflow_datasets") or m.startswith("optax")]
    print(json.dumps(loaded))
""")


def test_scoring_and_report_run_without_study_or_training_code(tmp_path):
  workdir = str(tmp_path)
  trained, masks = _workdir(workdir)
  env = dict(os.environ, PYTHONPATH=_ROOT)
  out = subprocess.run(
    [sys.executable, "-c", _SCRIPT, workdir],
    env=env,
    cwd=_ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == []
  with open(os.path.join(workdir, "results.json")) as f:
    records = json.load(f)
  auprc = {
    r["image_id"]: r["value"]
    for r in records
    if (r["criterion"], r["metric"], r["method"], r["model"], r["state"])
    == ("utility", "auprc", "M", "A1", "original")
  }
  for i in range(N):  # the paper's AUPRC, against scikit-learn on the same map and mask
    precision, recall, _ = skm.precision_recall_curve(masks[i].ravel(), trained[i].ravel())
    assert auprc[f"img{i}"] == pytest.approx(skm.auc(recall, precision), abs=1e-6)
  # A1 and A2 hold the same trained maps: repeatability SSIM 1; U1 and U2 the same masks.
  for criterion, model in (("repeatability", "A1-A2"), ("localization_agreement", "U1-U2")):
    values = [
      r["value"]
      for r in records
      if r["criterion"] == criterion and r["model"] == model and r["metric"] == "ssim"
    ]
    assert len(values) == N and values == pytest.approx([1.0] * N, abs=1e-6)
  states = {r["state"] for r in records if r["criterion"] == "cascading_randomization"}
  assert states == {"original", "cascade_logits", "cascade_stem", "cascade_head"}
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert {(r["method"], r["criterion"]) for r in summary["scorecard"]} == {
    ("M", c)
    for c in (
      "utility",
      "utility_localization",
      "randomization",
      "repeatability",
      "reproducibility",
    )
  }
  with open(os.path.join(workdir, "report.md")) as f:
    md = f.read()
  assert "handmade" in md and "figures/examples.png" in md


def test_manifest_records_stage_configs_and_the_run(tmp_path):
  _workdir(str(tmp_path))
  manifest = Manifest.load(str(tmp_path))
  assert manifest.stage_config("maps") == {"seed": 3}
  assert manifest.stage_config("train") is None
  assert [m.name for m in manifest.classifiers] == ["A1", "A2", "B1"]
  assert [m.name for m in manifest.localizers] == ["U1", "U2"]
  assert manifest.cascade_steps("A1") == ["original", "cascade_logits", "cascade_stem"]
  assert manifest.image_ids(SetName.EVAL) == [f"img{i}" for i in range(N)]
  truth = map_reader.MapReader(str(tmp_path), ["M"]).ground_truth(SetName.UTILITY)
  assert [len(b) for b in truth.boxes] == [1] * (N - 1) + [0]
  with pytest.raises(FileNotFoundError, match="run the maps stage first"):
    Manifest.load(str(tmp_path / "empty")).models
