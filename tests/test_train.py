"""The training loop: AUC, learning, resuming, finished runs, data parallelism, the U-Net."""

import json
import os
import sys
import types

import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from sklearn.metrics import roc_auc_score

from saliency_jax import models
from saliency_jax import train

SHAPE = (24, 16)  # as in test_models_small: the tiny models compile once per session


def _synthetic_source(n, seed):
  """Contract examples: positives carry a bright 5x5 square (their mask), negatives none."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(n):
    label = i % 2
    image = rng.normal(100, 20, (*SHAPE, 1)).clip(0, 255)
    mask = np.zeros((*SHAPE, 1), np.uint8)
    if label:
      y, x = rng.integers(0, SHAPE[0] - 5), rng.integers(0, SHAPE[1] - 5)
      mask[y : y + 5, x : x + 5] = 1
      image = np.where(mask, 220.0, image)
    examples.append(
      {
        "id": f"ex{i}",
        "image": image.astype(np.uint8),
        "label": label,
        "mask": mask,
        "boxes": np.zeros((0, 4), np.float32),
      }
    )
  return examples


class _CountingSource:
  """A source that counts reads, to tell whether a run touched the data."""

  def __init__(self, examples):
    self.examples, self.reads = examples, 0

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    self.reads += 1
    return self.examples[i]


TRAIN = _synthetic_source(64, seed=0)
VAL = _synthetic_source(20, seed=1)  # not a multiple of the eval batch: padding is exercised


def _config(**overrides):
  config = ml_collections.ConfigDict(
    dict(
      batch_size=8,
      eval_batch_size=16,
      num_steps=6,
      learning_rate=1e-2,
      eval_every=2,
      log_every=1,
      style="inception",
      channels=1,
      progress=False,
    )
  )
  config.update(overrides)
  return config


def _classifier():
  return models.create("small_vgg", stem_width=4, widths=(4, 8))


def _mesh(n):
  return Mesh(np.asarray(jax.devices()[:n]), ("data",))


def _final_state(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored.state


def _assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def test_roc_auc_matches_sklearn_with_ties():
  rng = np.random.default_rng(0)
  for n in (2, 7, 50, 333):
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    for scores in (
      rng.integers(0, 4, n).astype(float),  # many ties
      rng.normal(size=n),
      np.where(labels == 1, 1.0, 0.0),  # perfect
      np.ones(n),
    ):  # constant: 0.5
      assert train.roc_auc_score(labels, scores) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
      )
  assert train.roc_auc_score([1, 0], [0.2, 0.9]) == 0.0
  assert np.isnan(train.roc_auc_score([1, 1, 1], [0.1, 0.2, 0.3]))
  with pytest.raises(ValueError, match="0 or 1"):
    train.roc_auc_score([0, 2], [0.1, 0.2])
  with pytest.raises(ValueError, match="NaN"):
    train.roc_auc_score([0, 1], [0.1, np.nan])


class _FakeSummaryWriter:
  """Stands in for tensorboardX.SummaryWriter (not installed here)."""

  scalars = []

  def __init__(self, logdir):
    self.logdir = logdir

  def add_scalar(self, name, value, step):
    self.scalars.append((os.path.basename(os.path.dirname(self.logdir)), name, value, step))

  def flush(self):
    pass

  def close(self):
    pass


def test_training_reduces_the_loss_and_learns(tmp_path, monkeypatch):
  monkeypatch.setitem(
    sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=_FakeSummaryWriter)
  )
  result = train.train_classifier(
    _classifier(),
    TRAIN,
    VAL,
    workdir=str(tmp_path),
    seed=0,
    config=_config(num_steps=24, eval_every=12),
  )
  losses = [r["train_loss"] for r in result.history if "train_loss" in r]
  assert len(losses) == 24
  assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
  evals = [r for r in result.history if "val_auc" in r]
  assert [r["step"] for r in evals] == [12, 24]
  best = max(evals, key=lambda r: r["val_auc"])
  assert result.best_step == best["step"] and result.val_auc == best["val_auc"]
  assert result.val_auc > 0.9
  # The returned variables are the best checkpoint's: their AUC on the validation set is the
  # reported one (recomputed here independently of the loop's evaluation).
  images = np.stack([e["image"] for e in VAL]).astype(np.float32) / 127.5 - 1
  logits = _classifier().apply(result.variables, images)
  scores = jax.nn.softmax(logits)[:, 1]
  labels = [e["label"] for e in VAL]
  assert roc_auc_score(labels, scores) == pytest.approx(result.val_auc, abs=1e-6)
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line) for line in f] == result.history
  # The same records went to the TensorBoard writer.
  assert [(name, value, step) for _, name, value, step in _FakeSummaryWriter.scalars] == [
    (k, v, r["step"]) for r in result.history for k, v in r.items() if k != "step"
  ]


def _resume_test_run(workdir, config, source=TRAIN, **kwargs):
  """The resume tests' run: seed 3 on one device."""
  return train.train_classifier(
    _classifier(), source, VAL, workdir=str(workdir), seed=3, config=config, mesh=_mesh(1), **kwargs
  )


def test_killed_run_resumes_to_the_same_weights_and_finished_run_returns(tmp_path):
  config = _config(num_steps=6, eval_every=2)
  straight = _resume_test_run(tmp_path / "a", config)
  # Killed after step 3: the last checkpoint is step 2, so step 3 is redone after the restart.
  with pytest.raises(train.TrainingInterrupted):
    _resume_test_run(tmp_path / "b", config, stop_after_steps=3)
  assert not os.path.exists(tmp_path / "b" / "done.json")
  resumed = _resume_test_run(tmp_path / "b", config)
  _assert_trees_close(
    _final_state(tmp_path / "a", 6), _final_state(tmp_path / "b", 6), rtol=1e-6, atol=1e-6
  )
  _assert_trees_close(straight.variables, resumed.variables, rtol=1e-6, atol=1e-6)
  # The same records (losses, AUCs) step by step, without duplicates from the redone step.
  assert len(resumed.history) == len(straight.history)
  for r, s in zip(resumed.history, straight.history):
    r, s = ({k: v for k, v in d.items() if k != "seconds"} for d in (r, s))
    assert r == pytest.approx(s, abs=1e-6)
  # Finished: a second call returns the same result without reading the training data.
  source = _CountingSource(TRAIN)
  again = _resume_test_run(tmp_path / "a", config, source=source)
  assert source.reads <= 1  # the shape of one example
  _assert_trees_close(again.variables, straight.variables, rtol=0, atol=0)
  assert again.history == straight.history and again.best_step == straight.best_step
  # Resuming with other settings would mix two runs: refused.
  with pytest.raises(ValueError, match="learning_rate"):
    _resume_test_run(tmp_path / "a", _config(num_steps=6, eval_every=2, learning_rate=0.5))


def test_eight_devices_match_one(tmp_path):
  # Same global batch on 1 and 8 devices: gradients and batch-norm statistics are reduced over
  # the global batch in both, so only the summation order differs (float32 rounding).
  config = _config(num_steps=3, eval_every=3)
  one = train.train_classifier(
    _classifier(), TRAIN, VAL, workdir=str(tmp_path / "one"), seed=1, config=config, mesh=_mesh(1)
  )
  eight = train.train_classifier(
    _classifier(), TRAIN, VAL, workdir=str(tmp_path / "eight"), seed=1, config=config, mesh=_mesh(8)
  )
  assert len(jax.devices()) == 8
  _assert_trees_close(
    _final_state(tmp_path / "one", 3), _final_state(tmp_path / "eight", 3), rtol=1e-4, atol=1e-5
  )
  assert one.val_auc == pytest.approx(eight.val_auc, abs=1e-6)


def test_segmenter_trains_and_reports_dice(tmp_path):
  module = models.create("unet", depth=1, base_width=4)
  result = train.train_segmenter(
    module,
    TRAIN,
    VAL,
    workdir=str(tmp_path),
    seed=0,
    config=_config(num_steps=4, eval_every=4, log_every=2),
  )
  assert result.val_auc is None
  assert 0 <= result.val_metrics["val_dice"] <= 1
  assert result.val_metrics["val_dice_excluded_empty"] == 10  # the 10 negatives
  out = module.apply(result.variables, np.zeros((1, *SHAPE, 1), np.float32))
  assert out.shape == (1, *SHAPE)


def test_dice_summary_by_hand():
  summary = train.tasks.SEGMENTER.summarize(
    {
      "intersection": np.array([2.0, 0.0, 0.0]),
      "predicted": np.array([3.0, 4.0, 0.0]),
      "true": np.array([5.0, 0.0, 2.0]),
      "loss": np.array([0.5, 0.1, 0.3]),
    }
  )
  # Images with a finding: 2*2/(3+5) = 0.5 and 0/(0+2) = 0; the empty-mask image is excluded.
  assert summary == {"val_dice": 0.25, "val_dice_excluded_empty": 1, "val_loss": pytest.approx(0.3)}


def test_bfloat16_compute_and_config_errors(tmp_path):
  result = train.train_classifier(
    _classifier(),
    TRAIN,
    VAL,
    workdir=str(tmp_path / "bf16"),
    seed=0,
    config=_config(num_steps=2, eval_every=2, dtype="bfloat16"),
  )
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(result.variables))
  assert np.isfinite(result.val_auc)
  with pytest.raises(KeyError, match="learning_rate"):
    config = _config()
    del config["learning_rate"]
    train.train_classifier(
      _classifier(), TRAIN, VAL, workdir=str(tmp_path / "x"), seed=0, config=config
    )
  with pytest.raises(ValueError, match="divisible"):
    train.train_classifier(
      _classifier(),
      TRAIN,
      VAL,
      workdir=str(tmp_path / "y"),
      seed=0,
      config=_config(batch_size=12),
      mesh=_mesh(8),
    )


def test_training_starts_from_given_variables(tmp_path):
  module = _classifier()
  start = models.init_variables(module, jax.random.key(123), (*SHAPE, 1))
  # A zero learning rate keeps the parameters where they started: the run began from `start`,
  # not from its own seeded initialization.
  result = train.train_classifier(
    module,
    TRAIN,
    VAL,
    workdir=str(tmp_path / "given"),
    seed=0,
    config=_config(num_steps=2, learning_rate=0.0),
    initial_variables=start,
  )
  _assert_trees_close(result.variables["params"], start["params"], rtol=0, atol=0)
  seeded = models.init_variables(module, jax.random.key(0), (*SHAPE, 1))
  assert any(
    not np.allclose(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(seeded["params"]), jax.tree.leaves(start["params"]))
  )
  wrong = models.init_variables(module, jax.random.key(0), (*SHAPE, 3))
  with pytest.raises(ValueError, match="do not fit the model"):
    train.train_classifier(
      module,
      TRAIN,
      VAL,
      workdir=str(tmp_path / "wrong"),
      seed=0,
      config=_config(num_steps=2),
      initial_variables=wrong,
    )


def test_a_relative_workdir_works(tmp_path, monkeypatch):
  # The README's quick start uses the relative runs/synthetic: orbax needs absolute paths.
  monkeypatch.chdir(tmp_path)
  result = train.train_classifier(
    _classifier(), TRAIN, VAL, workdir="runs/rel", seed=0, config=_config(num_steps=2)
  )
  assert os.path.exists(tmp_path / "runs" / "rel" / "done.json")
  assert np.isfinite(result.val_auc)


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  config = _config(num_steps=6, eval_every=2)
  straight = _resume_test_run(tmp_path / "a", config)
  with pytest.raises(train.TrainingInterrupted):  # checkpoints at steps 2 and 4
    _resume_test_run(tmp_path / "b", config, stop_after_steps=5)
  latest = tmp_path / "b" / "checkpoints" / "4"
  truncated = 0
  for root, _, files in os.walk(latest / "state"):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
        truncated += 1
  assert truncated
  resumed = _resume_test_run(tmp_path / "b", config)
  _assert_trees_close(straight.variables, resumed.variables, rtol=1e-6, atol=1e-6)
