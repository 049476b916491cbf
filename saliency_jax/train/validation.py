"""The validation pass of the training loop: the task's eval step over the whole validation
split, padded so that every process of a multi-host run takes the same number of steps."""

import jax
from jax.sharding import NamedSharding
import numpy as np

from saliency_jax.train.steps import global_batch
from saliency_jax.train.steps import to_host
from saliency_jax.train.tasks import Task


def evaluate(
  task: Task,
  eval_step,
  variables,
  val_source,
  config,
  local_batch: int,
  batch_sharding: NamedSharding,
) -> dict:
  """Runs `eval_step` over the whole validation split; returns the task's summary."""
  from saliency_jax.data import make_dataset  # pylint: disable=g-import-not-at-top

  dataset = make_dataset(
    val_source,
    batch_size=local_batch,
    seed=0,
    style=config.style,
    channels=int(config.channels),
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    shard_by_process=True,
    max_boxes=task.max_boxes,
  )
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
    padded = {
      k: np.concatenate(
        [
          np.asarray(local[k]),
          np.zeros((local_batch - size, *np.shape(local[k])[1:]), np.asarray(local[k]).dtype),
        ]
      )
      for k in task.batch_keys
    }
    out = eval_step(variables, global_batch(padded, task.batch_keys, batch_sharding))
    valid = np.arange(local_batch) < size
    valid = jax.make_array_from_process_local_data(batch_sharding, valid)
    outputs.append(to_host({**out, "valid": valid}))
  merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
  valid = merged.pop("valid")
  return task.summarize({k: v[valid] for k, v in merged.items()})
