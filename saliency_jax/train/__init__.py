"""Training loops: classifiers (validation ROC AUC), the U-Net baseline (validation Dice) and
the RetinaNet baseline (validation mAP at IoU 0.40-0.75).

  result = train_classifier(module, train_source, val_source, workdir=..., seed=0,
                            config=config.train)
  result.variables, result.val_auc, result.history

Sources are random-access sequences of dataset examples (`tfds.data_source(...)[split]`); they
are turned into batches by `saliency_jax.data.make_dataset`.

Modules: `tasks` (what differs between models: loss, validation outputs and metric; a new kind
of model is a new `Task`), `steps` (mesh, optimizer, jitted train/eval steps), `workdir` (the
run's files: metrics, checkpoints, settings, done marker), `loop` (the loop, as named steps).

Config section (an ml_collections ConfigDict):
  batch_size       global batch (all processes together); divisible by the number of devices.
  num_steps        optimizer steps of the whole run.
  learning_rate    Adam learning rate (peak rate when `lr_schedule` is "cosine").
  eval_every       validate (and checkpoint) every this many steps, and at the last step.
  log_every        append the mean training loss to metrics.jsonl every this many steps.
  style, channels  preprocessing of `make_dataset` ("inception" or "imagenet"; channels C).
optional:
  weight_decay     decoupled weight decay (AdamW) on kernels only (default 0: plain Adam).
  lr_schedule      "constant" (default) or "cosine" (linear warm-up, then cosine decay to 0).
  warmup_steps     warm-up steps of the cosine schedule (default 0).
  eval_batch_size  global validation batch (default batch_size).
  dtype            "float32" (default) or "bfloat16": computation dtype (the module needs a
                   `dtype` field); parameters, optimizer state and losses stay float32.
  keep_checkpoints latest checkpoints kept for resuming (default 2).
  progress         show a tqdm progress bar on process 0 (default True).
detector only (`train_detector`):
  max_boxes        boxes per image the batches hold (default 8; more in an example is an error).
  box_loss         "smooth_l1" (default, beta 1/9) or "l1" on the box deltas.

Workdir layout: checkpoints/<step>/ (train state, the Grain iterator state, bookkeeping),
best/<step>/ (the variables with the best validation score so far), metrics.jsonl (one JSON
record per log or evaluation step; the same as TensorBoard events in tensorboard/ where
tensorboardX or PyTorch is installed), train_settings.json (seed and settings: resuming with other
settings is an error; num_steps may grow), done.json (written last: a finished run returns at
once; a larger num_steps continues it).
A killed run resumes from its latest checkpoint at the same step with the same data order, and
ends with the same weights as an uninterrupted one.

Devices: the step is jitted with NamedSharding over a 1-D mesh of all devices (axis "data"):
the batch is split over the devices and the state replicated. Because the loss is written for
the global batch, XLA inserts the cross-device reductions itself: gradients are averaged and
batch-norm statistics are computed over the global batch, exactly as on one device.
Multi-host runs call `jax.distributed.initialize()` before anything else (the launcher's job);
each process then reads its own shard of the data and `batch_size` stays the global batch.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
from jax.sharding import Mesh
import numpy as np

from saliency_jax.train import loop
from saliency_jax.train import tasks
from saliency_jax.train.loop import REQUIRED_KEYS
from saliency_jax.train.loop import TrainingInterrupted
from saliency_jax.train.steps import DATA_AXIS
from saliency_jax.train.steps import data_parallel_mesh
from saliency_jax.train.steps import make_optimizer
from saliency_jax.train.tasks import roc_auc_score
from saliency_jax.train.tasks import RSNA_SCORE_THRESHOLD
from saliency_jax.train.workdir import TrainResult

__all__ = [
  "DATA_AXIS",
  "REQUIRED_KEYS",
  "RSNA_SCORE_THRESHOLD",
  "TrainResult",
  "TrainingInterrupted",
  "data_parallel_mesh",
  "make_optimizer",
  "roc_auc_score",
  "train_classifier",
  "train_detector",
  "train_segmenter",
]


def train_classifier(
  module: nn.Module,
  train_source: Sequence[dict],
  val_source: Sequence[dict],
  *,
  workdir: str,
  seed: int,
  config: Any,
  mesh: Mesh | None = None,
  stop_after_steps: int | None = None,
  initial_variables: Any = None,
) -> TrainResult:
  """Trains a classifier with softmax cross-entropy; selects the best validation ROC AUC.

  Args:
    module: a Flax classifier (`__call__(x, train)` -> logits [B, K]; the AUC scores class 1).
    train_source, val_source: random-access sources of dataset examples.
    workdir: where checkpoints and metrics go; an existing run there is resumed or returned.
    seed: initialization and data-order seed.
    config: the training section (see the module docstring).
    mesh: a 1-D device mesh with axis "data" (default: all devices).
    stop_after_steps: end the run after this many steps in total by raising
      `TrainingInterrupted`, as a kill would (for resume tests and preemption drills).
    initial_variables: start from these variables (e.g. ImageNet weights from
      `models.import_keras_weights`) instead of a seeded initialization; a resumed run
      ignores them.
  """
  return loop.train(
    tasks.CLASSIFIER,
    module,
    train_source,
    val_source,
    workdir=workdir,
    seed=seed,
    config=config,
    mesh=mesh,
    stop_after_steps=stop_after_steps,
    initial_variables=initial_variables,
  )


def train_segmenter(
  module: nn.Module,
  train_source: Sequence[dict],
  val_source: Sequence[dict],
  *,
  workdir: str,
  seed: int,
  config: Any,
  mesh: Mesh | None = None,
  stop_after_steps: int | None = None,
) -> TrainResult:
  """Trains a per-pixel model (the U-Net: logits [B, H, W]) with sigmoid cross-entropy on the
  masks; selects the best validation Dice (mean over images with a finding). As
  `train_classifier` otherwise; `TrainResult.val_auc` is None."""
  return loop.train(
    tasks.SEGMENTER,
    module,
    train_source,
    val_source,
    workdir=workdir,
    seed=seed,
    config=config,
    mesh=mesh,
    stop_after_steps=stop_after_steps,
  )


def train_detector(
  module: nn.Module,
  train_source: Sequence[dict],
  val_source: Sequence[dict],
  *,
  workdir: str,
  seed: int,
  config: Any,
  mesh: Mesh | None = None,
  stop_after_steps: int | None = None,
  initial_variables: Any = None,
) -> TrainResult:
  """Trains a RetinaNet (`models.retinanet`: (class logits [B, N], box deltas [B, N, 4])) with
  focal loss and the config's `box_loss` ("smooth_l1" or "l1") on the examples' boxes, padded
  to the config's `max_boxes` per image; images without boxes are all negatives. Selects the
  best validation mAP at IoU 0.40-0.75 ("val_map"; also "val_rsna_score", the challenge's
  score of detections scoring >= RSNA_SCORE_THRESHOLD). As `train_classifier` otherwise
  (`initial_variables`: e.g. a RetinaNet init whose "backbone" holds imported ImageNet
  weights); `val_auc` is None."""
  image_shape = tuple(np.asarray(train_source[0]["image"]).shape[:2])
  task = tasks.detector_task(
    tuple(float(s) for s in module.anchor_sizes),
    image_shape,
    int(config.get("max_boxes", 8)),
    config.get("box_loss", "smooth_l1"),
  )
  return loop.train(
    task,
    module,
    train_source,
    val_source,
    workdir=workdir,
    seed=seed,
    config=config,
    mesh=mesh,
    stop_after_steps=stop_after_steps,
    initial_variables=initial_variables,
  )
