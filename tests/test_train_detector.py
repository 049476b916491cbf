"""The RetinaNet baseline in the trainer: padded boxes in batches, training, resuming."""

import os

import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np
import pytest

from saliency_jax import data as data_lib
from saliency_jax import models
from saliency_jax import train
from saliency_jax.detection import metrics

SHAPE = (32, 32)


def _source(n, seed):
  """Positives carry 1-2 bright squares (their boxes); negatives none."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(n):
    image = rng.normal(90, 15, (*SHAPE, 1)).clip(0, 255)
    mask = np.zeros((*SHAPE, 1), np.uint8)
    boxes = []
    for _ in range(i % 3):  # 0, 1 or 2 boxes
      size = int(rng.integers(6, 12))
      y, x = rng.integers(0, SHAPE[0] - size, 2)
      mask[y : y + size, x : x + size] = 1
      boxes.append((y, x, y + size, x + size))
    image = np.where(mask, 230.0, image)
    examples.append(
      {
        "id": f"ex{i}",
        "image": image.astype(np.uint8),
        "label": int(bool(boxes)),
        "mask": mask,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
      }
    )
  return examples


TRAIN, VAL = _source(32, 0), _source(12, 1)


def _module():
  return models.create(
    "retinanet",
    stem_width=4,
    widths=(4, 4, 8, 8),
    blocks=(1, 1, 1, 1),
    fpn_width=8,
    head_depth=1,
    anchor_sizes=(8, 16, 32, 64, 128),
  )


def _config(**overrides):
  config = ml_collections.ConfigDict(
    {
      "batch_size": 8,
      "num_steps": 4,
      "learning_rate": 1e-3,
      "eval_every": 2,
      "log_every": 1,
      "style": "inception",
      "channels": 1,
      "progress": False,
      "max_boxes": 3,
      "box_loss": "smooth_l1",
    }
  )
  config.update(overrides)
  return config


def test_batches_carry_padded_boxes():
  batch = next(iter(data_lib.make_dataset(TRAIN[:6], batch_size=6, shuffle=False, max_boxes=3)))
  assert batch["boxes"].shape == (6, 3, 4)
  np.testing.assert_array_equal(batch["num_boxes"], [0, 1, 2, 0, 1, 2])
  np.testing.assert_array_equal(batch["boxes"][2, :2], TRAIN[2]["boxes"])
  assert not batch["boxes"][2, 2:].any() and not batch["boxes"][0].any()
  assert "boxes" not in next(iter(data_lib.make_dataset(TRAIN[:2], batch_size=2)))
  with pytest.raises(ValueError, match="max_boxes=1"):
    next(iter(data_lib.make_dataset(TRAIN[:3], batch_size=3, shuffle=False, max_boxes=1)))


def test_detector_summary_slices_real_boxes_and_detections():
  task = train.tasks.detector_task((8.0, 16.0, 32.0, 64.0, 128.0), SHAPE, 2, "l1")
  out = {
    "det_boxes": np.array([[[0.0, 0, 10, 10], [5.0, 5, 9, 9]], [[1.0, 1, 4, 4], [0, 0, 0, 0]]]),
    "det_scores": np.array([[0.9, 0.3], [0.6, 0.0]]),
    "boxes": np.array([[[0.0, 0, 10, 12], [0, 0, 0, 0]], [[20.0, 20, 30, 30], [0, 0, 0, 0]]]),
    "num_boxes": np.array([1, 0]),
    "loss": np.array([1.0, 3.0]),
  }
  summary = task.summarize(out)
  preds = [out["det_boxes"][0], out["det_boxes"][1, :1]]
  truth = [out["boxes"][0, :1], np.zeros((0, 4))]
  assert summary["val_map"] == metrics.mean_ap(preds, [[0.9, 0.3], [0.6]], truth)
  # The challenge score counts detections scoring >= 0.5 only.
  assert summary["val_rsna_score"] == metrics.rsna_score(
    [preds[0][:1], preds[1]], [[0.9], [0.6]], truth
  )
  assert summary["val_loss"] == 2.0


def test_detector_trains_resumes_and_shards(tmp_path):
  mesh = Mesh(np.asarray(jax.devices()[:2]), ("data",))
  config = _config()
  straight = train.train_detector(
    _module(), TRAIN, VAL, workdir=str(tmp_path / "a"), seed=0, config=config, mesh=mesh
  )
  assert straight.val_auc is None
  assert 0.0 <= straight.val_metrics["val_map"] <= 1.0
  assert np.isfinite(straight.val_metrics["val_loss"])
  losses = [r["train_loss"] for r in straight.history if "train_loss" in r]
  assert len(losses) == 4 and all(np.isfinite(losses))
  with pytest.raises(train.TrainingInterrupted):
    train.train_detector(
      _module(),
      TRAIN,
      VAL,
      workdir=str(tmp_path / "b"),
      seed=0,
      config=config,
      mesh=mesh,
      stop_after_steps=3,
    )
  resumed = train.train_detector(
    _module(), TRAIN, VAL, workdir=str(tmp_path / "b"), seed=0, config=config, mesh=mesh
  )
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6),
    straight.variables,
    resumed.variables,
  )
  assert os.path.exists(tmp_path / "b" / "done.json")
  # The box loss is a training setting: resuming with another is refused.
  with pytest.raises(ValueError, match="box_loss"):
    train.train_detector(
      _module(),
      TRAIN,
      VAL,
      workdir=str(tmp_path / "a"),
      seed=0,
      config=_config(box_loss="l1", num_steps=6),
      mesh=mesh,
    )
