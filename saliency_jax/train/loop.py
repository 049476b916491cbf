"""The training loop shared by every task, as named steps.

  train(task, module, train_source, val_source, workdir=..., seed=..., config=...)

  _plan                   checks the config and the mesh, fixes shapes, settings and dtypes
  _initial_state          seeded (or given) variables -> the replicated train state
  _restore                the latest checkpoint's state, data iterator and best-so-far, if any
  _run_steps              the steps: loss logging, validation, checkpoints, the best variables
  _finish                 the done marker and the best variables as a `TrainResult`

The validation pass is `validation.evaluate`.

A new task is a `tasks.Task`; the loop does not change.
"""

import dataclasses
import logging
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from saliency_jax.models import init_variables
from saliency_jax.train import validation
from saliency_jax.train import workdir as workdir_lib
from saliency_jax.train.steps import DATA_AXIS
from saliency_jax.train.steps import data_parallel_mesh
from saliency_jax.train.steps import global_batch
from saliency_jax.train.steps import make_steps
from saliency_jax.train.steps import model_variables
from saliency_jax.train.steps import optimizer_settings
from saliency_jax.train.steps import Steps
from saliency_jax.train.steps import with_dtype
from saliency_jax.train.tasks import Task
from saliency_jax.train.workdir import TrainResult

REQUIRED_KEYS = (
  "batch_size",
  "num_steps",
  "learning_rate",
  "eval_every",
  "log_every",
  "style",
  "channels",
)


class TrainingInterrupted(RuntimeError):
  """Raised when `stop_after_steps` ends a run early, as a kill would (no done marker)."""


@dataclasses.dataclass
class _Plan:
  """What a run fixes before its first step."""

  task: Task
  module: nn.Module  # in the computation dtype
  init_module: nn.Module  # parameters are float32 whatever the computation dtype
  config: Any
  seed: int
  workdir: str  # absolute: orbax refuses relative checkpoint paths
  mesh: Mesh
  num_steps: int
  batch_size: int
  eval_batch_size: int
  sample: jax.Array  # zeros [1, H, W, C]: the input shape
  abstract_variables: dict
  best_manager: ocp.CheckpointManager

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(DATA_AXIS))


def train(
  task: Task,
  module: nn.Module,
  train_source,
  val_source,
  *,
  workdir: str,
  seed: int,
  config: Any,
  mesh: Mesh | None = None,
  stop_after_steps: int | None = None,
  initial_variables: Any = None,
) -> TrainResult:
  """Trains `module` on `task`, resuming or returning the run in `workdir`."""
  plan = _plan(task, module, train_source, workdir=workdir, seed=seed, config=config, mesh=mesh)
  done = workdir_lib.read_done(plan.workdir)
  if done is not None and done["num_steps"] >= plan.num_steps:
    return workdir_lib.finished_result(
      plan.workdir, done, plan.best_manager, plan.abstract_variables
    )
  steps = make_steps(task, plan.module, optimizer_settings(config), plan.mesh)
  state = _initial_state(plan, steps, initial_variables)
  train_iter = _train_iterator(plan, train_source)
  manager = workdir_lib.checkpoint_manager(
    os.path.join(plan.workdir, "checkpoints"), max_to_keep=int(config.get("keep_checkpoints", 2))
  )
  state, train_iter, best, start_step = _restore(plan, manager, state, train_iter)
  log = workdir_lib.MetricsLog(os.path.join(plan.workdir, "metrics.jsonl"), start_step)
  best = _run_steps(
    plan, steps, manager, log, state, train_iter, best, start_step, val_source, stop_after_steps
  )
  return _finish(plan, best, log)


def _plan(
  task: Task,
  module: nn.Module,
  train_source,
  *,
  workdir: str,
  seed: int,
  config: Any,
  mesh: Mesh | None,
) -> _Plan:
  """Checks the config and the mesh; fixes the run's sizes, dtypes and variable shapes."""
  _check_config(config)
  workdir = os.path.abspath(workdir)
  mesh = data_parallel_mesh() if mesh is None else mesh
  if mesh.axis_names != (DATA_AXIS,):
    raise ValueError(f"The mesh must be 1-D with axis {DATA_AXIS!r}; got {mesh.axis_names}.")
  num_steps = int(config.num_steps)
  batch_size = int(config.batch_size)
  eval_batch_size = int(config.get("eval_batch_size", batch_size))
  for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
    if size % mesh.size or size % jax.process_count():
      raise ValueError(
        f"config.{name}={size} must be divisible by the {mesh.size} devices "
        f"and {jax.process_count()} processes."
      )
  compute_module = with_dtype(module, config.get("dtype", "float32"))
  replicated = NamedSharding(mesh, P())
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.check_same_settings(workdir, config, seed)
  best_manager = workdir_lib.checkpoint_manager(os.path.join(workdir, "best"), max_to_keep=1)

  image = np.asarray(train_source[0]["image"])
  sample = jnp.zeros((1, *image.shape[:2], int(config.channels)), jnp.float32)
  abstract_variables = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
    model_variables(jax.eval_shape(compute_module.init, jax.random.key(0), sample)),
  )
  abstract_variables = {k: v for k, v in abstract_variables.items() if v}
  return _Plan(
    task=task,
    module=compute_module,
    init_module=module,
    config=config,
    seed=seed,
    workdir=workdir,
    mesh=mesh,
    num_steps=num_steps,
    batch_size=batch_size,
    eval_batch_size=eval_batch_size,
    sample=sample,
    abstract_variables=abstract_variables,
    best_manager=best_manager,
  )


def _initial_state(plan: _Plan, steps: Steps, initial_variables: Any) -> dict:
  """The train state before step 1, replicated over the mesh (same seed -> same values on every
  process)."""
  # Initialized apart from the optimizer, so the (slow to compile) initializers are shared by
  # every optimizer and mesh: the values do not depend on either.
  if initial_variables is None:
    variables = init_variables(plan.init_module, jax.random.key(plan.seed), plan.sample.shape[1:])
  else:
    variables = _checked_initial_variables(initial_variables, plan.abstract_variables)
  return steps.init_state(jax.device_put(variables, plan.replicated))


def _train_iterator(plan: _Plan, train_source):
  # The data stack (Grain, TFDS) loads only to train, so benchmarks run without it.
  from saliency_jax.data import make_dataset  # pylint: disable=g-import-not-at-top

  config = plan.config
  return iter(
    make_dataset(
      train_source,
      batch_size=plan.batch_size // jax.process_count(),
      seed=plan.seed,
      style=config.style,
      channels=int(config.channels),
      shuffle=True,
      num_epochs=None,
      drop_remainder=True,
      shard_by_process=True,
      max_boxes=plan.task.max_boxes,
    )
  )


def _restore(plan: _Plan, manager: ocp.CheckpointManager, state: dict, train_iter):
  """(state, data iterator, best so far, step) of the latest checkpoint; the given ones at
  step 0 where there is none."""
  import grain  # pylint: disable=g-import-not-at-top

  best = {"step": -1, "metrics": {}}
  restored = None
  # Newest first: a checkpoint that cannot be read (truncated by a full disk or a kill) is
  # deleted and the previous one still on disk is used.
  for latest in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(
        latest,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(state),
          data=grain.checkpoint.CheckpointRestore(train_iter),
          meta=ocp.args.JsonRestore(),
        ),
      )
      break
    except Exception as e:  # pylint: disable=broad-except  (orbax, JSON and tensorstore errors)
      logging.warning(
        "checkpoint %d in %s cannot be read (%s: %.200s); deleting it and "
        "resuming from the one before",
        latest,
        manager.directory,
        type(e).__name__,
        e,
      )
      manager.delete(latest)
  if restored is None:
    return state, train_iter, best, 0
  state, train_iter, best = restored.state, restored.data, restored.meta["best"]
  # The best checkpoint is written after the train checkpoint of the same step: a kill in
  # between leaves it missing, and the restored state is exactly what it should hold.
  if best["step"] == latest and plan.best_manager.latest_step() != latest:
    workdir_lib.save_best(plan.best_manager, latest, state, best["metrics"])
  return state, train_iter, best, latest


def _run_steps(
  plan: _Plan,
  steps: Steps,
  manager: ocp.CheckpointManager,
  log: workdir_lib.MetricsLog,
  state: dict,
  train_iter,
  best: dict,
  start_step: int,
  val_source,
  stop_after_steps: int | None,
) -> dict:
  """Runs the steps after `start_step`: logs the loss, validates, checkpoints, keeps the best
  variables; returns the best so far."""
  import grain  # pylint: disable=g-import-not-at-top

  task, config, num_steps = plan.task, plan.config, plan.num_steps
  progress = tqdm(
    total=num_steps,
    initial=start_step,
    desc=f"train {os.path.basename(plan.workdir)}",
    disable=not (config.get("progress", True) and jax.process_index() == 0),
    dynamic_ncols=True,
  )
  loss_sum, loss_count = jnp.zeros(()), 0
  start_time = time.perf_counter()
  for step in range(start_step + 1, num_steps + 1):
    batch = global_batch(next(train_iter), task.batch_keys, plan.batch_sharding)
    state, loss = steps.train_step(state, batch)
    loss_sum, loss_count = loss_sum + loss, loss_count + 1
    progress.update(1)
    if step % int(config.log_every) == 0 or step == num_steps:
      mean_loss = float(loss_sum) / loss_count
      loss_sum, loss_count = jnp.zeros(()), 0
      if not math.isfinite(mean_loss):
        raise FloatingPointError(f"Training loss is {mean_loss} at step {step}.")
      log.append(
        {
          "step": step,
          "train_loss": mean_loss,
          "seconds": round(time.perf_counter() - start_time, 3),
        }
      )
      progress.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
    if step % int(config.eval_every) == 0 or step == num_steps:
      metrics = validation.evaluate(
        task,
        steps.eval_step,
        model_variables(state),
        val_source,
        config,
        plan.eval_batch_size // jax.process_count(),
        plan.batch_sharding,
      )
      log.append({"step": step, **metrics})
      progress.set_postfix({task.select: f"{metrics[task.select]:.4f}"}, refresh=False)
      improved = _better(metrics[task.select], best["metrics"].get(task.select))
      if improved:
        best = {"step": step, "metrics": metrics}
      manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(train_iter),
          meta=ocp.args.JsonSave({"best": best}),
        ),
      )
      if improved:
        workdir_lib.save_best(plan.best_manager, step, state, metrics)
    if stop_after_steps is not None and step >= stop_after_steps and step < num_steps:
      progress.close()
      manager.close()
      plan.best_manager.close()
      log.events.close()
      raise TrainingInterrupted(f"Stopped after step {step} of {num_steps}.")
  progress.close()
  manager.close()
  log.events.close()
  return best


def _finish(plan: _Plan, best: dict, log: workdir_lib.MetricsLog) -> TrainResult:
  """Writes the done marker; returns the best validation variables."""
  if best["step"] < 0:
    raise RuntimeError(f"No validation step produced a finite {plan.task.select}; see {log.path}.")
  done = {"num_steps": plan.num_steps, "best_step": best["step"], "val_metrics": best["metrics"]}
  workdir_lib.write_done(plan.workdir, done)
  return workdir_lib.finished_result(plan.workdir, done, plan.best_manager, plan.abstract_variables)


def _check_config(config: Any) -> None:
  missing = [k for k in REQUIRED_KEYS if k not in config]
  if missing:
    raise KeyError(f"The training config lacks {missing}; required keys: {REQUIRED_KEYS}.")
  for key in ("batch_size", "num_steps", "eval_every", "log_every"):
    if int(config[key]) < 1:
      raise ValueError(f"config.{key} must be >= 1, got {config[key]}.")


def _checked_initial_variables(variables: Any, abstract: Any) -> Any:
  """`variables` (e.g. imported ImageNet weights) if they fit the model, else a clear error."""
  variables = {k: v for k, v in model_variables(variables).items() if v}
  want = jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), abstract)
  got = jax.tree.map(lambda a: (tuple(np.shape(a)), jnp.dtype(np.asarray(a).dtype)), variables)
  if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
    raise ValueError(
      "initial_variables do not fit the model (different parameter tree, "
      "shapes or dtypes); were they imported for another architecture, "
      "input channel count or num_classes?"
    )
  return variables


def _better(value: float, incumbent: float | None) -> bool:
  if value is None or not math.isfinite(value):
    return False
  return incumbent is None or value > incumbent
