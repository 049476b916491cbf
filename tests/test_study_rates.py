"""launch.study_rates: the benchmark's training examples, and the RetinaNet localizer's slice."""

import math

import numpy as np

from configs import synthetic
from launch import study_rates
from saliency_jax import models


def test_examples_boxes_bound_their_masks():
  examples = study_rates._examples(5, 24, seed=0)
  for i, e in enumerate(examples):
    rows, cols = np.nonzero(e["mask"][..., 0])
    assert e["label"] == i % 2 and e["image"].dtype == np.uint8
    if e["label"]:
      expected = [[rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]]
      np.testing.assert_array_equal(e["boxes"], expected)
    else:
      assert rows.size == 0 and e["boxes"].shape == (0, 4)


def test_retinanet_localizer_is_trained_and_mapped(tmp_path):
  config = synthetic.get_config("retinanet")
  loc = config.localization
  loc.train.batch_size = 8  # the tests simulate 8 devices
  module = models.create(loc.arch, **loc.kwargs)
  shape = (32, 32, 1)
  rates, variables, per_image = study_rates.train_rates(
    module,
    shape,
    loc.train,
    config.data.style,
    str(tmp_path),
    steps=1,
    repeats=1,
    kind="detector",
  )
  assert rates.compile_s >= 0 and rates.step_s > 0 and rates.eval_batch_s > 0
  assert math.isclose(per_image, rates.eval_batch_s / 8)
  assert (tmp_path / "done.json").exists() or any(tmp_path.iterdir())  # the real loop ran
  fixed, per_map = study_rates.localizer_map_rates(
    module, variables, shape, 2, detector=True, repeats=1
  )
  assert fixed >= 0 and per_map > 0
