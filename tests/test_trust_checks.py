"""The checks beyond the paper's criteria, scored from a hand-made workdir (no training):
control maps, CheXlocalize's metrics and the verdict-robustness grid."""

import json
import os

import ml_collections
import numpy as np
import pytest
from scoring_inputs import MODELS
from scoring_inputs import write_store
from skimage import filters
from sklearn import metrics as skm

from saliency_jax.metrics import chexlocalize
from saliency_jax.trust import evaluation
from saliency_jax.trust import map_reader
from saliency_jax.trust import robustness
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import cascade_state
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State

N, H, W = 8, 25, 27  # HOG needs 24 pixels a side; odd sizes


def _blur(x):
  from scipy import ndimage

  return ndimage.gaussian_filter(x, (0, 2, 2))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """GOOD: a blurred mask (localizes, the same in every replicate); its maps at the last
  cascading step are the trained maps (insensitive), but noise in the "diverging" variant
  (sensitive). EDGES: the image's Sobel edges, i.e. the SOBEL control itself."""
  workdir = str(tmp_path_factory.mktemp("checks"))
  rng = np.random.default_rng(0)
  ids = [f"img{i}" for i in range(N)]
  masks = np.zeros((N, H, W), bool)
  for i in range(N):
    masks[i, 5 + i % 4 : 14 + i % 3, 6 + i % 5 : 16] = True
  raw = rng.integers(0, 255, (N, H, W, 1), dtype=np.uint8)
  for set_name in SetName:
    map_reader.write_ground_truth(workdir, set_name, ids, raw, masks, [np.zeros((0, 4))] * N)
  map_reader.write_average_mask(workdir, masks.mean(0).astype(np.float32))
  good = _blur(masks.astype(np.float64)) + 0.05 * rng.random((N, H, W))
  good /= good.max(axis=(1, 2), keepdims=True)
  edges = np.stack([filters.sobel(im.astype(np.float64)) for im in raw[..., 0]])
  edges /= edges.max(axis=(1, 2), keepdims=True)
  for m in MODELS[:3]:
    last = cascade_state(m.block_names[-1])
    for state in [State.ORIGINAL, State.UNTRAINED] + [cascade_state(b) for b in m.block_names]:
      for method, maps in (("GOOD", good), ("EDGES", edges)):
        for set_name in SetName:
          write_store(workdir, set_name, m.name, state, method, maps, ids)
          if state in (State.ORIGINAL, last) and set_name != SetName.VALIDATION:
            for variant in ("no_clip", "diverging"):
              noisy = variant == "diverging" and state == last
              write_store(
                workdir,
                set_name,
                m.name,
                state,
                f"{method}@{variant}",
                rng.random((N, H, W)) if noisy else maps,
                ids,
              )
  for m in MODELS[3:]:
    for set_name in SetName:
      write_store(
        workdir, set_name, m.name, State.ORIGINAL, Baseline.LOCALIZATION, 0.2 + 0.6 * masks, ids
      )
  manifest = Manifest.load(workdir)
  manifest.record_run(
    models=list(MODELS),
    image_ids={s: ids for s in SetName},
    methods=["GOOD", "EDGES"],
    computed_methods=["GOOD", "EDGES"],
    utility_models=["A1"],
    independent_models=[],
  )
  manifest.save()
  config = ml_collections.ConfigDict(
    dict(
      ssim_data_range=1.0,
      random_pairs=3,
      bootstrap_resamples=200,
      alpha=0.05,
      correction="holm",
      controls=dict(
        enabled=True, names=("NOISE", "SOBEL", "BLOB", "AVERAGE_MASK"), blob_sigma=0.25
      ),
      chexlocalize=dict(
        enabled=True, validation_images=0, thresholds=chexlocalize.TUNING_THRESHOLDS
      ),
      robustness=dict(
        enabled=True,
        grayscale=("configured", "no_clip", "diverging"),
        similarity=("ssim", "spearman", "hog", "top_k_iou"),
        ssim_data_ranges=(1.0, 2.0),
        top_k_fraction=0.1,
      ),
    )
  )
  reader = map_reader.MapReader(workdir, manifest.computed_methods)
  summary = evaluation.evaluate(manifest, reader, config, seed=0, workdir=workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    records = json.load(f)
  return dict(
    workdir=workdir, summary=summary, records=records, masks=masks, raw=raw, good=good, edges=edges
  )


def _values(records, **key):
  return [r["value"] for r in records if all(r[k] == v for k, v in key.items())]


def test_controls_are_scored_like_methods(run):
  records, masks = run["records"], run["masks"]
  blob = _values(
    records,
    criterion="utility",
    metric="auprc",
    method="control:BLOB",
    model="A1",
    state="original",
  )
  from saliency_jax.trust import controls

  b = controls.gaussian_blob((H, W), sigma=0.25)
  expected = []
  for m in masks:  # the paper's AUPRC, scikit-learn on the same map and mask
    precision, recall, _ = skm.precision_recall_curve(m.ravel(), b.ravel())
    expected.append(skm.auc(recall, precision))
  assert blob == pytest.approx(expected, abs=1e-6)
  # A model-independent control is the same map before and after randomization: SSIM 1.
  for control in ("SOBEL", "BLOB", "AVERAGE_MASK"):
    ssim = _values(
      records,
      criterion="cascading_randomization",
      metric="ssim",
      method=f"control:{control}",
      model="A1",
      state="cascade_stem",
    )
    assert ssim == pytest.approx([1.0] * N, abs=1e-6)
  noise = _values(
    records, criterion="repeatability", metric="ssim", method="control:NOISE", model="A1-A2"
  )
  assert len(noise) == N and max(noise) < 0.2  # independent noise per model


def test_a_method_that_is_a_control_does_not_beat_it(run):
  table = run["summary"]["controls"]
  beats = {(c["criterion"], c["control"], c["method"]): c["beats"] for c in table["comparisons"]}
  assert beats[("utility", "NOISE", "GOOD")] and beats[("utility", "SOBEL", "GOOD")]
  assert not beats[("utility", "SOBEL", "EDGES")]
  assert "utility: SOBEL" in table["flags"]["EDGES"]
  # GOOD's randomized maps equal its trained ones: it does not beat the insensitive controls.
  assert "randomization: SOBEL" in table["flags"]["GOOD"]
  scores = {(s["criterion"], s["control"]): s for s in table["scores"]}
  assert scores[("randomization", "NOISE")]["applicable"] is False
  assert scores[("repeatability", "BLOB")]["value"] == pytest.approx(1.0, abs=1e-6)


def test_chexlocalize_against_references(run):
  records, masks, good = run["records"], run["masks"], run["good"]
  otsu = _values(records, criterion="chexlocalize", metric="iou_otsu", method="GOOD", model="A1")
  expected = []
  for m, mask in zip(good.astype(np.float32), masks):
    levels = (255 * (m - m.min()) / (m.max() - m.min())).astype(np.uint8)
    predicted = levels > filters.threshold_otsu(levels)
    expected.append((predicted & mask).sum() / (predicted | mask).sum())
  assert otsu == pytest.approx(expected)
  rows = {r["method"]: r for r in run["summary"]["chexlocalize"]["rows"]}
  # The localization network's maps are the masks (0.2 / 0.8): IoU 1 and hit 1 everywhere,
  # so the decrease of a method is 100 (1 - its mean of resample means).
  assert rows["UNET"]["iou_otsu"]["mean"] == 1.0 and rows["UNET"]["hit"]["mean"] == 1.0
  for metric in ("iou_otsu", "iou_tuned", "hit"):
    decrease = rows["GOOD"][f"{metric}_decrease"]
    assert decrease["low"] <= decrease["decrease"] <= decrease["high"]
  assert rows["GOOD"]["iou_otsu_decrease"]["decrease"] == pytest.approx(
    100 * (1 - rows["GOOD"]["iou_otsu"]["mean"]), abs=2.0
  )
  thresholds = {(t["method"], t["model"]): t for t in run["summary"]["chexlocalize"]["thresholds"]}
  tuned = thresholds[("GOOD", "A1")]
  assert tuned["threshold"] == tuned["thresholds"][int(np.nanargmax(tuned["miou"]))]
  assert "control:BLOB" in rows


def test_robustness_grid_finds_the_flip(run):
  grid = run["summary"]["robustness"]
  # The run first; 3 grayscales x (SSIM at two ranges, Spearman, HOG, top-k IoU).
  assert grid["choices"][0] == "as configured" and len(grid["choices"]) == 1 + 3 * 5
  summary = {(r["method"], r["criterion"]): r for r in grid["summary"]}
  good = summary[("GOOD", "randomization a")]  # one verdict per architecture (the paper's)
  assert good["verdict"] == "FAIL" and good["status"] == "flips"
  assert good["flips"] and all("diverging" in c for c in good["flips"])
  assert summary[("GOOD", "utility")]["status"] == "holds"
  configured = [r for r in grid["rows"] if r["choice"] == "as configured"]
  card = {
    (r["method"], robustness._rule_key(r)): r["verdict"]  # pylint: disable=protected-access
    for r in run["summary"]["scorecard"]
  }
  assert {(r["method"], r["criterion"]): r["verdict"] for r in configured} == card
  with open(os.path.join(run["workdir"], "robustness.json")) as f:
    assert len(json.load(f)) == len(grid["rows"])
  assert robustness.variant_method("GOOD", "no_clip") == "GOOD@no_clip"


def test_report_has_a_section_figure_and_rule_per_check(run):
  from saliency_jax.trust import report

  workdir = run["workdir"]
  manifest = Manifest.load(workdir)
  config = ml_collections.ConfigDict(
    dict(
      seed=0,
      data=dict(name="handmade", image_size=H),
      study=dict(
        ssim_data_range=1.0,
        random_pairs=3,
        bootstrap_resamples=200,
        alpha=0.05,
        correction="holm",
        target="predicted",
        num_example_images=2,
      ),
    )
  )
  report.write_report(
    manifest, map_reader.MapReader(workdir, manifest.computed_methods), config, workdir
  )
  with open(os.path.join(workdir, "report.md")) as f:
    md = f.read()
  for heading, figure in (
    ("Control maps", "controls.png"),
    ("CheXlocalize localization metrics", "chexlocalize.png"),
    ("Verdict robustness", "robustness.png"),
  ):
    assert f"## {heading}" in md and f"figures/{figure}" in md
    assert os.path.getsize(os.path.join(workdir, "figures", figure)) > 5_000
  assert md.count("**Rule**") >= 2
  assert "EDGES | utility: SOBEL" in md or "utility: SOBEL" in md
  assert "flips under:" in md and "U-Net (baseline)" in md  # the localizers are "unet"
