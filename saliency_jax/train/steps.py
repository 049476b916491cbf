"""The jitted training pieces: the device mesh, the optimizer and the train/eval steps.

`make_steps(task, module, optimizer_settings(config), mesh)` returns the jitted `init_state`,
`train_step` and `eval_step` of one (task, model, optimizer, mesh), cached per process. The
state is replicated over a 1-D mesh (axis DATA_AXIS) and batches are split over it.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from saliency_jax.train.tasks import Task

DATA_AXIS = "data"


def data_parallel_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def optimizer_settings(config: Any) -> tuple:
  """The optimizer's hyper-parameters as a hashable tuple (a cache key for the steps)."""
  schedule = config.get("lr_schedule", "constant")
  # The run length matters to the cosine schedule only; leaving it out of the constant one's
  # key lets runs of different lengths share their compiled steps.
  num_steps = int(config.num_steps) if schedule == "cosine" else 0
  return (
    float(config.learning_rate),
    schedule,
    int(config.get("warmup_steps", 0)),
    num_steps,
    float(config.get("weight_decay", 0.0)),
  )


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """Adam (AdamW on kernels when weight_decay > 0) with the configured schedule."""
  return _optimizer(*optimizer_settings(config))


def _optimizer(
  lr: float, schedule_name: str, warmup_steps: int, num_steps: int, weight_decay: float
) -> optax.GradientTransformation:
  if schedule_name == "constant":
    schedule = lr
  elif schedule_name == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, num_steps)
  else:
    raise ValueError(f"Unknown lr_schedule {schedule_name!r}: 'constant' or 'cosine'.")
  if weight_decay:
    # Decay kernels only: decaying batch-norm scales and biases is not what Keras/Adam did.
    return optax.adamw(
      schedule,
      weight_decay=weight_decay,
      mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
    )
  return optax.adam(schedule)


@dataclasses.dataclass(frozen=True)
class Steps:
  init_state: Callable  # variables -> replicated train state
  train_step: Callable  # (state, batch) -> (state, loss); donates the state
  eval_step: Callable  # (variables, batch) -> per-example outputs, split over the mesh


@functools.lru_cache(maxsize=8)
def make_steps(task: Task, module: nn.Module, optimizer_key: tuple, mesh: Mesh) -> Steps:
  """The jitted functions of one (task, model, optimizer, mesh), cached so that replicates and
  resumed runs in one process compile them once (Flax modules hash by their fields).
  `optimizer_key`: `optimizer_settings(config)`."""
  tx = _optimizer(*optimizer_key)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

  def init_state(variables):
    state = {
      "step": jnp.zeros((), jnp.int32),
      "params": variables["params"],
      "opt_state": tx.init(variables["params"]),
    }
    if variables.get("batch_stats"):
      state["batch_stats"] = variables["batch_stats"]
    return state

  def loss_and_updates(params, batch_stats, batch):
    if batch_stats is None:
      out = module.apply({"params": params}, batch["image"], train=True)
      return task.loss(out, batch), None
    out, updates = module.apply(
      {"params": params, "batch_stats": batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    return task.loss(out, batch), updates["batch_stats"]

  def train_step(state, batch):
    (loss, batch_stats), grads = jax.value_and_grad(loss_and_updates, has_aux=True)(
      state["params"], state.get("batch_stats"), batch
    )
    param_updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
      "step": state["step"] + 1,
      "params": optax.apply_updates(state["params"], param_updates),
      "opt_state": opt_state,
    }
    if batch_stats is not None:
      new_state["batch_stats"] = batch_stats
    return new_state, loss

  def eval_step(variables, batch):
    out = module.apply(variables, batch["image"], train=False)
    return task.eval_outputs(out, batch)

  return Steps(
    init_state=jax.jit(init_state, out_shardings=replicated),
    train_step=jax.jit(
      train_step,
      in_shardings=(replicated, batch_sharding),
      out_shardings=(replicated, replicated),
      donate_argnums=0,
    ),
    eval_step=jax.jit(
      eval_step, in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding
    ),
  )


def with_dtype(module: nn.Module, dtype_name: str) -> nn.Module:
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(dtype_name)
  if dtype is None:
    raise ValueError(f"Unknown dtype {dtype_name!r}: 'float32' or 'bfloat16'.")
  if dtype_name == "float32":
    return module
  if "dtype" not in {f.name for f in dataclasses.fields(module)}:
    raise ValueError(
      f"{type(module).__name__} has no `dtype` field, so it cannot compute in {dtype_name}."
    )
  return module.clone(dtype=dtype)


def global_batch(
  local: Mapping[str, np.ndarray], keys: Sequence[str], sharding: NamedSharding
) -> dict:
  """Process-local numpy batch -> global arrays split over the mesh's data axis."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k])) for k in keys}


def to_host(tree: Any) -> Any:
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def model_variables(state: dict) -> dict:
  return {k: state[k] for k in ("params", "batch_stats") if k in state}
