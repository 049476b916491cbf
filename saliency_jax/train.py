"""Training loops: classifiers (validation ROC AUC), the U-Net baseline (validation Dice) and
the RetinaNet baseline (validation mAP at IoU 0.40-0.75).

  result = train_classifier(module, train_source, val_source, workdir=..., seed=0,
                            config=config.train)
  result.variables, result.val_auc, result.history

Sources are random-access sequences of dataset examples (`tfds.data_source(...)[split]`); they
are turned into batches by `saliency_jax.data.make_dataset`.

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
import dataclasses
import functools
import importlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from saliency_jax.models import init_variables

REQUIRED_KEYS = ("batch_size", "num_steps", "learning_rate", "eval_every", "log_every",
                 "style", "channels")
DATA_AXIS = "data"


@dataclasses.dataclass
class TrainResult:
  """What a training run returns.

  Attributes:
    variables: {"params", "batch_stats"?} of the selected (best validation) checkpoint, as host
      NumPy arrays.
    val_auc: classifier: validation ROC AUC of the selected checkpoint; segmenter: None (see
      `val_metrics`).
    history: every record of metrics.jsonl, in step order.
    best_step: the step of the selected checkpoint.
    val_metrics: all validation metrics of the selected checkpoint.
  """
  variables: dict
  val_auc: float | None
  history: list[dict]
  best_step: int
  val_metrics: dict


class TrainingInterrupted(RuntimeError):
  """Raised when `stop_after_steps` ends a run early, as a kill would (no done marker)."""


def roc_auc(labels: Any, scores: Any) -> float:
  """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; ties count one half.

  Args:
    labels: [N] in {0, 1} (or bool).
    scores: [N] real scores, higher meaning more likely positive.

  Returns:
    The AUC, or NaN when only one class is present (undefined).
  """
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if labels.shape != scores.shape:
    raise ValueError(f"labels and scores differ in size: {labels.shape} vs {scores.shape}.")
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("labels must be 0 or 1.")
  if np.isnan(scores).any():
    raise ValueError("scores contain NaN.")
  positive = labels == 1
  n_pos = int(positive.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  # 1-based average rank of each distinct value: the middle of its run in sorted order.
  ends = np.cumsum(counts)
  average_rank = ends - (counts - 1) / 2.0
  rank_sum = average_rank[inverse][positive].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ----------------------------------------------------------------------------------------------
# Tasks: what differs between the classifier and the segmenter.


@dataclasses.dataclass(frozen=True)
class _Task:
  """Loss, per-example validation outputs and the host-side validation summary of one task."""
  batch_keys: tuple[str, ...]                        # batch fields the step needs
  loss: Callable[[jax.Array, dict], jax.Array]       # (model output, batch) -> mean loss
  eval_outputs: Callable[[jax.Array, dict], dict]    # -> per-example arrays [B, ...]
  summarize: Callable[[dict], dict]                  # host arrays of valid examples -> metrics
  select: str                                        # the metric maximized for "best"
  max_boxes: int = 0                                 # batches carry padded boxes when > 0


def _classifier_loss(logits, batch):
  # Dense(K) + softmax + cross-entropy: for K=2, the paper's Dense(2)+softmax+binary CE.
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch["label"]).mean()


def _classifier_outputs(logits, batch):
  logits = logits.astype(jnp.float32)
  return {
      "score": jax.nn.softmax(logits)[:, 1],
      "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
      "label": batch["label"],
  }


def _classifier_summary(out):
  return {"val_auc": roc_auc(out["label"], out["score"]),
          "val_loss": float(np.mean(out["loss"])),
          "val_accuracy": float(np.mean((out["score"] > 0.5) == (out["label"] == 1)))}


def _segmenter_loss(logits, batch):
  return optax.sigmoid_binary_cross_entropy(
      logits.astype(jnp.float32), batch["mask"].astype(jnp.float32)).mean()


def _segmenter_outputs(logits, batch):
  logits = logits.astype(jnp.float32)
  mask = batch["mask"].astype(jnp.float32)
  predicted = (logits > 0).astype(jnp.float32)  # probability > 0.5
  return {
      "intersection": jnp.sum(predicted * mask, axis=(1, 2)),
      "predicted": jnp.sum(predicted, axis=(1, 2)),
      "true": jnp.sum(mask, axis=(1, 2)),
      "loss": optax.sigmoid_binary_cross_entropy(logits, mask).mean(axis=(1, 2)),
  }


def _segmenter_summary(out):
  # Dice at threshold 0.5, averaged over the images that have a finding (empty masks have no
  # Dice worth averaging); how many were left out is recorded.
  has_finding = out["true"] > 0
  dice = 2 * out["intersection"][has_finding] / (out["predicted"] + out["true"])[has_finding]
  return {"val_dice": float(np.mean(dice)) if dice.size else float("nan"),
          "val_dice_excluded_empty": int((~has_finding).sum()),
          "val_loss": float(np.mean(out["loss"]))}


_CLASSIFIER = _Task(("image", "label"), _classifier_loss, _classifier_outputs,
                    _classifier_summary, "val_auc")
_SEGMENTER = _Task(("image", "mask"), _segmenter_loss, _segmenter_outputs,
                   _segmenter_summary, "val_dice")


@functools.lru_cache(maxsize=8)
def _detector_task(anchors_key: tuple, image_shape: tuple[int, int], max_boxes: int,
                   box_loss: str) -> _Task:
  """The RetinaNet task for one anchor set and image size (cached: one object per setting, so
  the jitted steps are shared by replicates)."""
  # pylint: disable=g-import-not-at-top
  from saliency_jax.detection import boxes as boxes_lib
  from saliency_jax.detection import losses, metrics, postprocess
  if box_loss not in losses.BOX_LOSSES:
    raise ValueError(f"Unknown box loss {box_loss!r}; expected one of {losses.BOX_LOSSES}.")
  anchors = boxes_lib.anchors(*image_shape, anchors_key)

  def loss(out, batch):
    logits, deltas = out
    return losses.detection_loss(logits, deltas, jnp.asarray(anchors), batch["boxes"],
                                 batch["num_boxes"], box_loss_kind=box_loss)[0]

  def outputs(out, batch):
    logits, deltas = out
    per_image = jax.vmap(lambda lg, d, b, n: loss((lg[None], d[None]),
                                                 {"boxes": b[None], "num_boxes": n[None]}))
    det_boxes, det_scores = postprocess.detect(logits, deltas, jnp.asarray(anchors),
                                               image_shape=tuple(image_shape))
    return {"det_boxes": det_boxes, "det_scores": det_scores, "boxes": batch["boxes"],
            "num_boxes": batch["num_boxes"],
            "loss": per_image(logits, deltas, batch["boxes"], batch["num_boxes"])}

  def summary(out):
    preds = [b[s > 0] for b, s in zip(out["det_boxes"], out["det_scores"])]
    scores = [s[s > 0] for s in out["det_scores"]]
    truth = [b[:n] for b, n in zip(out["boxes"], out["num_boxes"])]
    confident = [s * (s >= RSNA_SCORE_THRESHOLD) for s in scores]
    return {"val_map": metrics.mean_ap(preds, scores, truth),
            "val_rsna_score": metrics.rsna_score(preds, confident, truth),
            "val_loss": float(np.mean(out["loss"]))}

  return _Task(("image", "boxes", "num_boxes"), loss, outputs, summary, "val_map",
               max_boxes=max_boxes)


# Detections scoring at least this count for the RSNA challenge score (which, unlike mAP,
# punishes every false positive); mAP uses all detections.
RSNA_SCORE_THRESHOLD = 0.5


def train_classifier(module: nn.Module, train_source: Sequence[dict],
                     val_source: Sequence[dict], *, workdir: str, seed: int, config: Any,
                     mesh: Mesh | None = None, stop_after_steps: int | None = None,
                     initial_variables: Any = None) -> TrainResult:
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
  return _train(_CLASSIFIER, module, train_source, val_source, workdir=workdir, seed=seed,
                config=config, mesh=mesh, stop_after_steps=stop_after_steps,
                initial_variables=initial_variables)


def train_segmenter(module: nn.Module, train_source: Sequence[dict],
                    val_source: Sequence[dict], *, workdir: str, seed: int, config: Any,
                    mesh: Mesh | None = None,
                    stop_after_steps: int | None = None) -> TrainResult:
  """Trains a per-pixel model (the U-Net: logits [B, H, W]) with sigmoid cross-entropy on the
  masks; selects the best validation Dice (mean over images with a finding). As
  `train_classifier` otherwise; `TrainResult.val_auc` is None."""
  return _train(_SEGMENTER, module, train_source, val_source, workdir=workdir, seed=seed,
                config=config, mesh=mesh, stop_after_steps=stop_after_steps)


def train_detector(module: nn.Module, train_source: Sequence[dict],
                   val_source: Sequence[dict], *, workdir: str, seed: int, config: Any,
                   mesh: Mesh | None = None, stop_after_steps: int | None = None,
                   initial_variables: Any = None) -> TrainResult:
  """Trains a RetinaNet (`models.retinanet`: (class logits [B, N], box deltas [B, N, 4])) with
  focal loss and the config's `box_loss` ("smooth_l1" or "l1") on the examples' boxes, padded
  to the config's `max_boxes` per image; images without boxes are all negatives. Selects the
  best validation mAP at IoU 0.40-0.75 ("val_map"; also "val_rsna_score", the challenge's
  score of detections scoring >= RSNA_SCORE_THRESHOLD). As `train_classifier` otherwise
  (`initial_variables`: e.g. a RetinaNet init whose "backbone" holds imported ImageNet
  weights); `val_auc` is None."""
  image_shape = tuple(np.asarray(train_source[0]["image"]).shape[:2])
  task = _detector_task(tuple(float(s) for s in module.anchor_sizes), image_shape,
                        int(config.get("max_boxes", 8)), config.get("box_loss", "smooth_l1"))
  return _train(task, module, train_source, val_source, workdir=workdir, seed=seed,
                config=config, mesh=mesh, stop_after_steps=stop_after_steps,
                initial_variables=initial_variables)


# ----------------------------------------------------------------------------------------------
# The shared loop.


def default_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def _optimizer_settings(config: Any) -> tuple:
  """The optimizer's hyper-parameters as a hashable tuple (a cache key for the steps)."""
  schedule = config.get("lr_schedule", "constant")
  # The run length matters to the cosine schedule only; leaving it out of the constant one's
  # key lets runs of different lengths share their compiled steps.
  num_steps = int(config.num_steps) if schedule == "cosine" else 0
  return (float(config.learning_rate), schedule, int(config.get("warmup_steps", 0)), num_steps,
          float(config.get("weight_decay", 0.0)))


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """Adam (AdamW on kernels when weight_decay > 0) with the configured schedule."""
  return _optimizer(*_optimizer_settings(config))


def _optimizer(lr: float, schedule_name: str, warmup_steps: int, num_steps: int,
               weight_decay: float) -> optax.GradientTransformation:
  if schedule_name == "constant":
    schedule = lr
  elif schedule_name == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, num_steps)
  else:
    raise ValueError(f"Unknown lr_schedule {schedule_name!r}: 'constant' or 'cosine'.")
  if weight_decay:
    # Decay kernels only: decaying batch-norm scales and biases is not what Keras/Adam did.
    return optax.adamw(schedule, weight_decay=weight_decay,
                       mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params))
  return optax.adam(schedule)


@dataclasses.dataclass(frozen=True)
class _Steps:
  init_state: Callable   # variables -> replicated train state
  train_step: Callable   # (state, batch) -> (state, loss); donates the state
  eval_step: Callable    # (variables, batch) -> per-example outputs, split over the mesh


@functools.lru_cache(maxsize=8)
def _steps(task: _Task, module: nn.Module, optimizer_settings: tuple, mesh: Mesh) -> _Steps:
  """The jitted functions of one (task, model, optimizer, mesh), cached so that replicates and
  resumed runs in one process compile them once (Flax modules hash by their fields)."""
  tx = _optimizer(*optimizer_settings)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

  def init_state(variables):
    state = {"step": jnp.zeros((), jnp.int32), "params": variables["params"],
             "opt_state": tx.init(variables["params"])}
    if variables.get("batch_stats"):
      state["batch_stats"] = variables["batch_stats"]
    return state

  def loss_and_updates(params, batch_stats, batch):
    if batch_stats is None:
      out = module.apply({"params": params}, batch["image"], train=True)
      return task.loss(out, batch), None
    out, updates = module.apply({"params": params, "batch_stats": batch_stats},
                                batch["image"], train=True, mutable=["batch_stats"])
    return task.loss(out, batch), updates["batch_stats"]

  def train_step(state, batch):
    (loss, batch_stats), grads = jax.value_and_grad(loss_and_updates, has_aux=True)(
        state["params"], state.get("batch_stats"), batch)
    param_updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1,
                 "params": optax.apply_updates(state["params"], param_updates),
                 "opt_state": opt_state}
    if batch_stats is not None:
      new_state["batch_stats"] = batch_stats
    return new_state, loss

  def eval_step(variables, batch):
    out = module.apply(variables, batch["image"], train=False)
    return task.eval_outputs(out, batch)

  return _Steps(
      init_state=jax.jit(init_state, out_shardings=replicated),
      train_step=jax.jit(train_step, in_shardings=(replicated, batch_sharding),
                         out_shardings=(replicated, replicated), donate_argnums=0),
      eval_step=jax.jit(eval_step, in_shardings=(replicated, batch_sharding),
                        out_shardings=batch_sharding))


def _check_config(config: Any) -> None:
  missing = [k for k in REQUIRED_KEYS if k not in config]
  if missing:
    raise KeyError(f"The training config lacks {missing}; required keys: {REQUIRED_KEYS}.")
  for key in ("batch_size", "num_steps", "eval_every", "log_every"):
    if int(config[key]) < 1:
      raise ValueError(f"config.{key} must be >= 1, got {config[key]}.")


def _with_dtype(module: nn.Module, dtype_name: str) -> nn.Module:
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(dtype_name)
  if dtype is None:
    raise ValueError(f"Unknown dtype {dtype_name!r}: 'float32' or 'bfloat16'.")
  if dtype_name == "float32":
    return module
  if "dtype" not in {f.name for f in dataclasses.fields(module)}:
    raise ValueError(f"{type(module).__name__} has no `dtype` field, so it cannot compute in "
                     f"{dtype_name}.")
  return module.clone(dtype=dtype)


def _global_batch(local: Mapping[str, np.ndarray], keys: Sequence[str],
                  sharding: NamedSharding) -> dict:
  """Process-local numpy batch -> global arrays split over the mesh's data axis."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k]))
          for k in keys}


def _to_host(tree: Any) -> Any:
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)


class _MetricsLog:
  """metrics.jsonl: one JSON record per line; records past a resumed step are dropped."""

  def __init__(self, path: str, resume_step: int):
    self.path = path
    self.records = []
    self.events = _EventWriter(os.path.join(os.path.dirname(path), "tensorboard"))
    if os.path.exists(path):
      with open(path) as f:
        self.records = [r for r in map(json.loads, filter(str.strip, f))
                        if r["step"] <= resume_step]
    if jax.process_index() == 0:
      self._rewrite()

  def _rewrite(self):
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in self.records)
    os.replace(tmp, self.path)

  def append(self, record: dict) -> None:
    self.records.append(record)
    if jax.process_index() == 0:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
      self.events.write(record)


class _EventWriter:
  """TensorBoard event files, where a writer library (tensorboardX, or PyTorch's) is installed;
  otherwise nothing (metrics.jsonl holds the same records). TensorFlow is never imported."""

  def __init__(self, logdir: str):
    self._writer = None
    for module_name in ("tensorboardX", "torch.utils.tensorboard"):
      try:
        module = importlib.import_module(module_name)
      except ImportError:
        continue
      self._writer = module.SummaryWriter(logdir)
      break

  def write(self, record: dict) -> None:
    if self._writer is None:
      return
    for name, value in record.items():
      if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self._writer.add_scalar(name, value, record["step"])
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _checkpoint_manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
  import grain  # pylint: disable=g-import-not-at-top
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": grain.checkpoint.CheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()})


def _checked_initial_variables(variables: Any, abstract: Any) -> Any:
  """`variables` (e.g. imported ImageNet weights) if they fit the model, else a clear error."""
  variables = {k: v for k, v in _model_variables(variables).items() if v}
  want = jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), abstract)
  got = jax.tree.map(lambda a: (tuple(np.shape(a)), jnp.dtype(np.asarray(a).dtype)), variables)
  if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
    raise ValueError("initial_variables do not fit the model (different parameter tree, "
                     "shapes or dtypes); were they imported for another architecture, "
                     "input channel count or num_classes?")
  return variables


def _model_variables(state: dict) -> dict:
  return {k: state[k] for k in ("params", "batch_stats") if k in state}


def _train(task: _Task, module: nn.Module, train_source, val_source, *, workdir: str,
           seed: int, config: Any, mesh: Mesh | None,
           stop_after_steps: int | None, initial_variables: Any = None) -> TrainResult:
  # The data stack (Grain, TFDS) loads only to train, so benchmarks run without it.
  import grain  # pylint: disable=g-import-not-at-top
  from saliency_jax.data import make_dataset  # pylint: disable=g-import-not-at-top
  _check_config(config)
  workdir = os.path.abspath(workdir)  # orbax refuses relative checkpoint paths
  mesh = default_mesh() if mesh is None else mesh
  if mesh.axis_names != (DATA_AXIS,):
    raise ValueError(f"The mesh must be 1-D with axis {DATA_AXIS!r}; got {mesh.axis_names}.")
  num_steps = int(config.num_steps)
  batch_size = int(config.batch_size)
  eval_batch_size = int(config.get("eval_batch_size", batch_size))
  for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
    if size % mesh.size or size % jax.process_count():
      raise ValueError(f"config.{name}={size} must be divisible by the {mesh.size} devices "
                       f"and {jax.process_count()} processes.")
  init_module = module  # parameters are float32 whatever the computation dtype
  module = _with_dtype(module, config.get("dtype", "float32"))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  os.makedirs(workdir, exist_ok=True)
  _check_same_settings(workdir, config, seed)
  done_path = os.path.join(workdir, "done.json")
  best_manager = _checkpoint_manager(os.path.join(workdir, "best"), max_to_keep=1)

  image = np.asarray(train_source[0]["image"])
  sample = jnp.zeros((1, *image.shape[:2], int(config.channels)), jnp.float32)
  abstract_variables = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
      _model_variables(jax.eval_shape(module.init, jax.random.key(0), sample)))
  abstract_variables = {k: v for k, v in abstract_variables.items() if v}

  if os.path.exists(done_path):
    with open(done_path) as f:
      done = json.load(f)
    if done["num_steps"] >= num_steps:
      return _finished_result(workdir, done, best_manager, abstract_variables)

  # Initial state, replicated over the mesh (same seed -> same values on every process).
  steps = _steps(task, module, _optimizer_settings(config), mesh)
  # Initialized apart from the optimizer, so the (slow to compile) initializers are shared by
  # every optimizer and mesh: the values do not depend on either.
  if initial_variables is None:
    variables = init_variables(init_module, jax.random.key(seed), sample.shape[1:])
  else:
    variables = _checked_initial_variables(initial_variables, abstract_variables)
  state = steps.init_state(jax.device_put(variables, replicated))

  local_batch = batch_size // jax.process_count()
  train_iter = iter(make_dataset(train_source, batch_size=local_batch, seed=seed,
                                 style=config.style, channels=int(config.channels),
                                 shuffle=True, num_epochs=None, drop_remainder=True,
                                 shard_by_process=True, max_boxes=task.max_boxes))

  manager = _checkpoint_manager(os.path.join(workdir, "checkpoints"),
                                max_to_keep=int(config.get("keep_checkpoints", 2)))
  best = {"step": -1, "metrics": {}}
  start_step = 0
  latest = manager.latest_step()
  if latest is not None:
    restored = manager.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state),
        data=grain.checkpoint.CheckpointRestore(train_iter),
        meta=ocp.args.JsonRestore()))
    state, train_iter, best = restored.state, restored.data, restored.meta["best"]
    start_step = latest
    # The best checkpoint is written after the train checkpoint of the same step: a kill in
    # between leaves it missing, and the restored state is exactly what it should hold.
    if best["step"] == latest and best_manager.latest_step() != latest:
      _save_best(best_manager, latest, state, best["metrics"])
  log = _MetricsLog(os.path.join(workdir, "metrics.jsonl"), start_step)

  def evaluate(state) -> dict:
    return _evaluate(task, steps.eval_step, _model_variables(state), val_source, config,
                     eval_batch_size // jax.process_count(), batch_sharding)

  progress = tqdm(total=num_steps, initial=start_step, desc=f"train {os.path.basename(workdir)}",
                  disable=not (config.get("progress", True) and jax.process_index() == 0),
                  dynamic_ncols=True)
  loss_sum, loss_count = jnp.zeros(()), 0
  start_time = time.perf_counter()
  for step in range(start_step + 1, num_steps + 1):
    batch = _global_batch(next(train_iter), task.batch_keys, batch_sharding)
    state, loss = steps.train_step(state, batch)
    loss_sum, loss_count = loss_sum + loss, loss_count + 1
    progress.update(1)
    if step % int(config.log_every) == 0 or step == num_steps:
      mean_loss = float(loss_sum) / loss_count
      loss_sum, loss_count = jnp.zeros(()), 0
      if not math.isfinite(mean_loss):
        raise FloatingPointError(f"Training loss is {mean_loss} at step {step}.")
      log.append({"step": step, "train_loss": mean_loss,
                  "seconds": round(time.perf_counter() - start_time, 3)})
      progress.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
    if step % int(config.eval_every) == 0 or step == num_steps:
      metrics = evaluate(state)
      log.append({"step": step, **metrics})
      progress.set_postfix({task.select: f"{metrics[task.select]:.4f}"}, refresh=False)
      improved = _better(metrics[task.select], best["metrics"].get(task.select))
      if improved:
        best = {"step": step, "metrics": metrics}
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(train_iter),
          meta=ocp.args.JsonSave({"best": best})))
      if improved:
        _save_best(best_manager, step, state, metrics)
    if stop_after_steps is not None and step >= stop_after_steps and step < num_steps:
      progress.close()
      manager.close()
      best_manager.close()
      log.events.close()
      raise TrainingInterrupted(f"Stopped after step {step} of {num_steps}.")
  progress.close()
  manager.close()
  log.events.close()

  if best["step"] < 0:
    raise RuntimeError(f"No validation step produced a finite {task.select}; see "
                       f"{log.path}.")
  done = {"num_steps": num_steps, "best_step": best["step"], "val_metrics": best["metrics"]}
  if jax.process_index() == 0:
    with open(done_path + ".tmp", "w") as f:
      json.dump(done, f, indent=1)
    os.replace(done_path + ".tmp", done_path)
  return _finished_result(workdir, done, best_manager, abstract_variables)


# Settings that may change between a run and its resumption without changing its result.
_RESUMABLE_CHANGES = ("num_steps", "progress", "log_every", "eval_every", "keep_checkpoints",
                      "eval_batch_size")


def _check_same_settings(workdir: str, config: Any, seed: int) -> None:
  """Refuses to resume a workdir written with other training settings (a silent mix)."""
  items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  resumable = set(_RESUMABLE_CHANGES)
  if items.get("lr_schedule", "constant") == "cosine":
    resumable.discard("num_steps")  # the schedule depends on the run's length
  settings = {k: v for k, v in items.items() if k not in resumable}
  settings = json.loads(json.dumps({"seed": seed, **settings}, sort_keys=True, default=str))
  path = os.path.join(workdir, "train_settings.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != settings:
      changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
      raise ValueError(f"{workdir} holds a run with other training settings ({changed}: "
                       f"{ {k: saved.get(k) for k in changed} } there, "
                       f"{ {k: settings.get(k) for k in changed} } now); use another workdir.")
  elif jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(settings, f, indent=1, sort_keys=True)


def _better(value: float, incumbent: float | None) -> bool:
  if value is None or not math.isfinite(value):
    return False
  return incumbent is None or value > incumbent


def _save_best(best_manager: ocp.CheckpointManager, step: int, state: dict,
               metrics: dict) -> None:
  best_manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_model_variables(state)),
      meta=ocp.args.JsonSave({"step": step, "metrics": metrics})))
  best_manager.wait_until_finished()


def _finished_result(workdir: str, done: dict, best_manager: ocp.CheckpointManager,
                     abstract_variables: dict) -> TrainResult:
  step = done["best_step"]
  if best_manager.latest_step() != step:
    raise RuntimeError(f"{workdir}: done.json names best step {step}, but best/ holds "
                       f"{best_manager.all_steps()}.")
  restored = best_manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_variables)))
  # Host arrays: the caller may place them on any mesh (map generation uses its own).
  variables = _to_host(dict(restored.state))
  best_manager.close()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    history = [json.loads(line) for line in f if line.strip()]
  metrics = done["val_metrics"]
  return TrainResult(variables=variables, val_auc=metrics.get("val_auc"), history=history,
                     best_step=step, val_metrics=metrics)


def _evaluate(task: _Task, eval_step, variables, val_source, config, local_batch: int,
              batch_sharding: NamedSharding) -> dict:
  """Runs `eval_step` over the whole validation split; returns the task's summary."""
  from saliency_jax.data import make_dataset  # pylint: disable=g-import-not-at-top
  dataset = make_dataset(val_source, batch_size=local_batch, seed=0, style=config.style,
                         channels=int(config.channels), shuffle=False, num_epochs=1,
                         drop_remainder=False, shard_by_process=True,
                         max_boxes=task.max_boxes)
  # Every process runs the same number of steps (unequal shards would deadlock multi-host
  # runs): exhausted processes feed batches that are all padding.
  per_process = -(-len(val_source) // jax.process_count())
  num_batches = -(-per_process // local_batch)
  iterator = iter(dataset)
  template = None
  outputs = []
  for _ in range(num_batches):
    local = next(iterator, None)
    if local is None:
      local = jax.tree.map(lambda x: np.zeros_like(x[:0]), template)
    template = local if template is None else template
    size = len(local["image"])
    padded = {k: np.concatenate([np.asarray(local[k]),
                                 np.zeros((local_batch - size, *np.shape(local[k])[1:]),
                                          np.asarray(local[k]).dtype)])
              for k in task.batch_keys}
    out = eval_step(variables, _global_batch(padded, task.batch_keys, batch_sharding))
    valid = np.arange(local_batch) < size
    valid = jax.make_array_from_process_local_data(batch_sharding, valid)
    outputs.append(_to_host({**out, "valid": valid}))
  merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
  valid = merged.pop("valid")
  return task.summarize({k: v[valid] for k, v in merged.items()})


def benchmark_train_step(module: nn.Module, image_shape: tuple[int, int, int], *,
                         batch_size: int, mesh: Mesh | None = None, num_steps: int = 10,
                         dtype: str = "float32", learning_rate: float = 1e-3,
                         segmentation: bool = False) -> dict:
  """Times the jitted training step on random data (no input pipeline).

  Returns {"step_s": median seconds per step, "images_per_s": batch_size / step_s,
  "compile_s": first call, "devices": mesh size}. `batch_size` is the global batch.
  """
  mesh = default_mesh() if mesh is None else mesh
  settings = (float(learning_rate), "constant", 0, 0, 0.0)  # as _optimizer_settings
  task = _SEGMENTER if segmentation else _CLASSIFIER
  steps = _steps(task, _with_dtype(module, dtype), settings, mesh)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  variables = init_variables(module, jax.random.key(0), tuple(image_shape))
  state = steps.init_state(jax.device_put(variables, replicated))
  rng = np.random.default_rng(0)
  local = batch_size // jax.process_count()
  batch = {"image": rng.normal(size=(local, *image_shape)).astype(np.float32),
           "label": (np.arange(local) % 2).astype(np.int32),
           "mask": rng.random((local, *image_shape[:2])) > 0.9}
  batch = _global_batch(batch, task.batch_keys, batch_sharding)
  start = time.perf_counter()
  state, loss = steps.train_step(state, batch)
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    state, loss = steps.train_step(state, batch)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  return {"step_s": step_s, "images_per_s": batch_size / step_s, "compile_s": compile_s,
          "devices": mesh.size}

