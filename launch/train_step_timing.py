"""The jitted training step's time on random data, for the training benchmarks."""

import time

import flax.linen as nn
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from saliency_jax.models import init_variables
from saliency_jax.train import steps
from saliency_jax.train import tasks


def train_step_time(
  module: nn.Module,
  image_shape: tuple[int, int, int],
  *,
  batch_size: int,
  mesh: Mesh | None = None,
  num_steps: int = 10,
  dtype: str = "float32",
  learning_rate: float = 1e-3,
  segmentation: bool = False,
  detector: bool = False,
) -> dict:
  """Times the jitted training step on random data (no input pipeline).

  `segmentation`: the U-Net's task; `detector`: the RetinaNet's (random boxes, up to 3 per
  image). Returns {"step_s": median seconds per step, "images_per_s": batch_size / step_s,
  "compile_s": first call, "devices": mesh size}. `batch_size` is the global batch.
  """
  mesh = steps.data_parallel_mesh() if mesh is None else mesh
  settings = (float(learning_rate), "constant", 0, 0, 0.0)  # as steps.optimizer_settings
  task = tasks.SEGMENTER if segmentation else tasks.CLASSIFIER
  if detector:
    task = tasks.detector_task(
      tuple(float(s) for s in module.anchor_sizes), tuple(image_shape[:2]), 3, "smooth_l1"
    )
  train_steps = steps.make_steps(task, steps.with_dtype(module, dtype), settings, mesh)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(steps.DATA_AXIS))
  variables = init_variables(module, jax.random.key(0), tuple(image_shape))
  state = train_steps.init_state(jax.device_put(variables, replicated))
  rng = np.random.default_rng(0)
  local = batch_size // jax.process_count()
  batch = {
    "image": rng.normal(size=(local, *image_shape)).astype(np.float32),
    "label": (np.arange(local) % 2).astype(np.int32),
    "mask": rng.random((local, *image_shape[:2])) > 0.9,
    "num_boxes": (np.arange(local) % 4).astype(np.int32),
  }
  corners = rng.uniform(0, min(image_shape[:2]), (local, 3, 2, 2))
  batch["boxes"] = np.concatenate([corners.min(2), corners.max(2) + 4], -1).astype(np.float32)
  batch = steps.global_batch(batch, task.batch_keys, batch_sharding)
  start = time.perf_counter()
  state, loss = train_steps.train_step(state, batch)
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    state, loss = train_steps.train_step(state, batch)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  return {
    "step_s": step_s,
    "images_per_s": batch_size / step_s,
    "compile_s": compile_s,
    "devices": mesh.size,
  }
