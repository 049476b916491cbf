"""A training run's files in its workdir: metrics, checkpoints, settings and the done marker.

metrics.jsonl, tensorboard/   `MetricsLog` (and `EventWriter` where a writer library exists)
checkpoints/<step>/           train state, Grain iterator state, best so far
                              (`checkpoint_manager`)
best/<step>/                  the best validation variables (`save_best`, `finished_result`)
train_settings.json           `check_same_settings`: resuming with other settings is an error
done.json                     `write_done` / `read_done`: a finished run returns at once
"""

import dataclasses
import importlib
import json
import math
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from saliency_jax import multihost
from saliency_jax.train.steps import model_variables
from saliency_jax.train.steps import to_host


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


class MetricsLog:
  """metrics.jsonl: one JSON record per line; records past a resumed step are dropped."""

  def __init__(self, path: str, resume_step: int):
    self.path = path
    self.records = []
    self.events = EventWriter(os.path.join(os.path.dirname(path), "tensorboard"))
    if os.path.exists(path):
      with open(path) as f:
        self.records = [
          r for r in map(json.loads, filter(str.strip, f)) if r["step"] <= resume_step
        ]
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


class EventWriter:
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


def checkpoint_manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
  import grain  # pylint: disable=g-import-not-at-top

  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    ),
    item_handlers={
      "state": ocp.StandardCheckpointHandler(),
      "data": grain.checkpoint.CheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler(),
    },
  )


# Settings that may change between a run and its resumption without changing its result.
_RESUMABLE_CHANGES = (
  "num_steps",
  "progress",
  "log_every",
  "eval_every",
  "keep_checkpoints",
  "eval_batch_size",
)


def check_same_settings(workdir: str, config: Any, seed: int) -> None:
  """Refuses to resume a workdir written with other training settings (a silent mix)."""
  items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  resumable = set(_RESUMABLE_CHANGES)
  if items.get("lr_schedule", "constant") == "cosine":
    resumable.discard("num_steps")  # the schedule depends on the run's length
  settings = {k: v for k, v in items.items() if k not in resumable}
  settings = json.loads(json.dumps({"seed": seed, **settings}, sort_keys=True, default=str))
  path = os.path.join(workdir, "train_settings.json")
  # Host 0 writes a fresh run's settings (atomically); every host reads them after the barrier,
  # so all see the whole file and agree on refusing.
  if multihost.is_writer() and not os.path.exists(path):
    multihost.write_json(path, settings)
  multihost.barrier(f"train settings {os.path.basename(workdir)}")
  with open(path) as f:
    saved = json.load(f)
  if saved != settings:
    changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    raise ValueError(
      f"{workdir} holds a run with other training settings ({changed}: "
      f"{ {k: saved.get(k) for k in changed} } there, "
      f"{ {k: settings.get(k) for k in changed} } now); use another workdir."
    )


def save_best(best_manager: ocp.CheckpointManager, step: int, state: dict, metrics: dict) -> None:
  best_manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(model_variables(state)),
      meta=ocp.args.JsonSave({"step": step, "metrics": metrics}),
    ),
  )
  best_manager.wait_until_finished()


def finished_result(
  workdir: str, done: dict, best_manager: ocp.CheckpointManager, abstract_variables: dict
) -> TrainResult:
  step = done["best_step"]
  if best_manager.latest_step() != step:
    raise RuntimeError(
      f"{workdir}: done.json names best step {step}, but best/ holds {best_manager.all_steps()}."
    )
  restored = best_manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_variables))
  )
  # Host arrays: the caller may place them on any mesh (map generation uses its own).
  variables = to_host(dict(restored.state))
  best_manager.close()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    history = [json.loads(line) for line in f if line.strip()]
  metrics = done["val_metrics"]
  return TrainResult(
    variables=variables,
    val_auc=metrics.get("val_auc"),
    history=history,
    best_step=step,
    val_metrics=metrics,
  )


def read_done(workdir: str) -> dict | None:
  """The done marker of a finished run, None where the run has not finished."""
  path = os.path.join(workdir, "done.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_done(workdir: str, done: dict) -> None:
  """Writes the done marker (process 0), last of all the run's files."""
  if jax.process_index() == 0:
    path = os.path.join(workdir, "done.json")
    with open(path + ".tmp", "w") as f:
      json.dump(done, f, indent=1)
    os.replace(path + ".tmp", path)
