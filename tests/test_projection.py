"""The whole-study projection's arithmetic, against counts and seconds worked out by hand."""

import ml_collections
import pytest

from saliency_jax import projection


def _config():
  c = ml_collections.ConfigDict()
  c.data = dict(style="inception")
  c.models = [
    dict(name="A1", arch="a"),
    dict(name="A2", arch="a"),
    dict(name="B1", arch="b", style="imagenet"),
  ]
  c.methods = dict(names=("GRAD", "XRAI"))
  c.train = dict(batch_size=8, num_steps=10, eval_every=4)
  c.localization = dict(seeds=(1, 2), train=dict(batch_size=4, num_steps=6, eval_every=6))
  c.study = dict(
    num_eval_images=5,
    num_utility_images=0,
    chunk_size=4,
    utility_models=("A1",),
    independent_randomization=("A1",),
    random_pairs=3,
  )
  return c


SPLITS = projection.Splits(train=100, val=20, test=30, positive_test=7)
BLOCKS = {"A1": 2, "A2": 2, "B1": 3}


def test_counts_by_hand():
  w = projection.count_work(_config(), SPLITS, BLOCKS)
  # 5 eval images and 7 utility images, each padded to chunks of 4: 8 and 8.
  # Evaluations at steps 4, 8 and 10, each ceil(20 / 8) = 3 batches.
  a1, a2, b1 = w.classifiers
  assert (a1.eval_states, a1.map_states, a1.maps_per_method, a1.eval_batches) == (5, 7, 56, 9)
  assert (a2.eval_states, a2.map_states, a2.maps_per_method) == (3, 3, 24)
  assert (b1.eval_states, b1.map_states, b1.maps_per_method) == (4, 4, 32)
  assert [(m.steps, m.eval_batches, m.maps_per_method) for m in w.localizers] == [(6, 5, 16)] * 2
  assert w.localizer_maps == 16
  assert w.segmentations == 2 * 5 + 1 * 7  # eval set in two styles, utility in one
  assert w.utility_maps == 7 * (1 * 2 * 2 + 1 + 2)  # A1 x 2 states x 2 methods + baselines
  assert w.similarity_pairs == 5 * ((5 + 3 + 4) * 2 + 3 * 2 + 1)
  assert w.random_pairs == 5 * 3 * 3 * 2


def test_projection_by_hand():
  w = projection.count_work(_config(), SPLITS, BLOCKS)
  clf = projection.TrainRates(compile_s=2, step_s=0.5, eval_batch_s=0.1)
  loc = projection.TrainRates(compile_s=1, step_s=0.25, eval_batch_s=0.2)
  grad = projection.MapRates(compile_s=3, state_s=0.5, per_map_s=0.01)
  xrai = projection.MapRates(compile_s=4, state_s=1, per_map_s=0.1)
  rates = projection.Rates(
    train={"A1": clf, "A2": clf, "B1": clf, "localizer1": loc, "localizer2": loc},
    maps={(m, "GRAD"): grad for m in BLOCKS} | {(m, "XRAI"): xrai for m in BLOCKS},
    localizer_map_s=0.05,
    segmentation_s=0.5,
    utility_map_s=0.02,
    similarity_pair_s=0.01,
    random_pair_s=0.005,
    fixed_s={"maps": 2, "criteria": 1},
  )
  p = projection.project(w, rates)
  assert p["train"]["A1"] == pytest.approx(2 + 10 * 0.5 + 9 * 0.1)
  assert p["train"]["localizer2"] == pytest.approx(1 + 6 * 0.25 + 5 * 0.2)
  assert p["train_s"] == pytest.approx(3 * 7.9 + 2 * 3.5)
  assert p["maps"][("A1", "XRAI")] == pytest.approx(4 + 6 * 1 + 56 * 0.1)
  assert p["maps"][("B1", "GRAD")] == pytest.approx(3 + 3 * 0.5 + 32 * 0.01)
  assert p["maps_s"] == pytest.approx(
    6.56 + 15.6 + 4.24 + 8.4 + 4.82 + 10.2 + 17 * 0.5 + 2 * 16 * 0.05 + 2
  )
  assert p["criteria_s"] == pytest.approx(49 * 0.02 + 155 * 0.01 + 90 * 0.005 + 1)
  assert p["total_s"] == pytest.approx(30.7 + 61.92 + 3.98)


def test_paper_splits_and_peak_table():
  assert projection.PAPER_SPLITS["siim"] == projection.Splits(8646, 961, 1068, 238)
  assert projection.PAPER_SPLITS["rsna"] == projection.Splits(12039, 1338, 1486, 601)
  table = {"H100": 1.0, "A100": 2.0}
  assert projection.peak_flops("NVIDIA A100-SXM4-80GB", table) == 2.0
  assert projection.peak_flops("cpu", table) is None
