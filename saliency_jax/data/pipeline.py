"""Model preprocessing and the Grain input pipeline.

`make_dataset` turns a random-access source of dataset examples (e.g.
`tfds.data_source(name, data_dir=...)["train"]`) into batches
`{"image": float32 [B,H,W,C], "label": int32 [B], "mask": bool [B,H,W], "index": int64 [B]}`,
where "index" is the example's position in the split (the key attributions fold their noise
with). With `max_boxes` > 0 batches also carry the boxes, padded to a fixed number:
"boxes" float32 [B, max_boxes, 4] (zeros past the real ones) and "num_boxes" int32 [B].

Resuming training: the pipeline is deterministic given (source, seed, batch_size, sharding), and
its iterator state is a small dict. Save `iterator.get_state()` with each model checkpoint (with
orbax: `grain.checkpoint.CheckpointSave(iterator)` next to the train state in an
`ocp.args.Composite`, or the dict itself as JSON). To resume, build the same dataset, call
`iterator = iter(dataset)` and `iterator.set_state(saved_state)`: the next batch is the one that
followed the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STYLES = ("inception", "imagenet")

_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def preprocess(images, *, style: str = "inception", channels: int = 1):
  """Scales stored grayscale images for a model and replicates them to `channels`.

  Args:
    images: uint8 or uint16 array [..., H, W, 1], NumPy or JAX (also inside jit).
    style: "inception": x / max * 2 - 1, i.e. x / 127.5 - 1 for uint8, in [-1, 1].
      "imagenet": x / max, then minus the ImageNet mean and over the std of each channel (for
      channels=1, the values of the first channel).
    channels: the number of output channels C (the gray channel repeated).

  Returns:
    float32 [..., H, W, C], of the same array kind (NumPy or JAX) as `images`.
  """
  xp = jnp if isinstance(images, jax.Array) else np
  dtype = np.dtype(images.dtype)
  if dtype not in _MAX_VALUE:
    raise TypeError(f"preprocess expects uint8 or uint16 images, got {dtype}.")
  if images.ndim < 3 or images.shape[-1] != 1:
    raise ValueError(f"preprocess expects grayscale images [..., H, W, 1], got {images.shape}.")
  if style not in STYLES:
    raise ValueError(f"Unknown preprocessing style {style!r}; expected one of {STYLES}.")
  if channels < 1 or (style == "imagenet" and channels not in (1, 3)):
    raise ValueError(f"channels must be >= 1 (1 or 3 for imagenet), got {channels}.")
  max_value = _MAX_VALUE[dtype]
  x = images.astype(xp.float32)
  x = xp.broadcast_to(x, x.shape[:-1] + (channels,))
  if style == "inception":
    return x / np.float32(max_value / 2) - np.float32(1)
  mean = np.asarray(IMAGENET_MEAN[:channels], np.float32)
  std = np.asarray(IMAGENET_STD[:channels], np.float32)
  return (x / np.float32(max_value) - mean) / std


def _with_index(index: int, example: dict[str, Any], *, num_examples: int) -> dict[str, Any]:
  # Grain passes later epochs' positions (index + epoch * len) through to the source, which
  # wraps them; the example's identity is the position within the split.
  return {**example, "index": index % num_examples}


def _model_example(
  example: dict[str, Any], *, style: str, channels: int, max_boxes: int = 0
) -> dict[str, Any]:
  """One stored example -> the fields a batch carries (the id does not batch; the boxes only
  padded to `max_boxes`, when that is > 0)."""
  mask = np.asarray(example["mask"])
  if mask.ndim == 3:
    mask = mask[..., 0]
  out = {
    "image": preprocess(np.asarray(example["image"]), style=style, channels=channels),
    "label": np.int32(example["label"]),
    "mask": mask.astype(bool),
    "index": np.int64(example["index"]),
  }
  if max_boxes:
    boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
    if len(boxes) > max_boxes:
      raise ValueError(
        f"Example {example['index']} has {len(boxes)} boxes, more than "
        f"max_boxes={max_boxes}; raise the detector's max_boxes."
      )
    out["boxes"] = np.zeros((max_boxes, 4), np.float32)
    out["boxes"][: len(boxes)] = boxes
    out["num_boxes"] = np.int32(len(boxes))
  return out


def shard_indices(
  num_examples: int, shard_index: int, shard_count: int, *, equal_sizes: bool
) -> slice:
  """The slice of dataset positions held by one shard: strided, so shards are disjoint.

  With `equal_sizes` the last `num_examples % shard_count` examples are left out, so every
  process runs the same number of steps (unequal step counts deadlock multi-host training).
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"Need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}.")
  stop = num_examples - num_examples % shard_count if equal_sizes else num_examples
  return slice(shard_index, stop, shard_count)


def _host_part(index: int, *, dataset, batch_size: int, shard_index: int, shard_count: int):
  """Example `index` of one host's stream: its rows of each global batch, in order."""
  batch, row = divmod(index, batch_size)
  return dataset[(batch * shard_count + shard_index) * batch_size + row]


def make_dataset(
  source: Sequence[dict[str, Any]],
  *,
  batch_size: int,
  seed: int = 0,
  style: str = "inception",
  channels: int = 1,
  shuffle: bool = True,
  num_epochs: int | None = None,
  drop_remainder: bool = True,
  shard_by_process: bool = True,
  shard_index: int | None = None,
  shard_count: int | None = None,
  num_threads: int = 2,
  prefetch_buffer_size: int | None = None,
  max_boxes: int = 0,
) -> grain.IterDataset:
  """A Grain pipeline of preprocessed batches from a random-access source of examples.

  Args:
    source: anything with `__len__` and `__getitem__` returning contract examples, e.g.
      `tfds.data_source(name, data_dir=...)[split]`.
    batch_size: examples per batch (per process when sharded).
    seed: shuffle seed; each epoch is shuffled differently but deterministically.
    style, channels: as `preprocess`.
    shuffle: shuffle (a global, index-based shuffle per epoch).
    num_epochs: passes over the data; None repeats forever.
    drop_remainder: drop a last incomplete batch (and, when sharded, the examples that would
      make shards unequal).
    shard_by_process: read only this JAX process's shard (`jax.process_index()` of
      `jax.process_count()`), unless `shard_index`/`shard_count` say otherwise. With
      `drop_remainder`, the examples are shuffled (and repeated) as one process would, and
      shard k reads the k-th part of every global batch (`batch_size * shard_count`), so the
      global batches, and so training, do not depend on the number of processes. Without it
      (evaluation), the shards are strided over the examples, possibly one example apart in
      size.
    shard_index, shard_count: explicit shard (overrides the process-based one).
    num_threads, prefetch_buffer_size: Grain read options (examples decoded ahead in threads;
      default buffer: two batches).
    max_boxes: > 0: batches carry "boxes" padded to this many and "num_boxes" (an example
      with more is an error).

  Returns:
    A `grain.IterDataset`; `iter()` of it has `get_state()`/`set_state()` for checkpoints.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be None or >= 1, got {num_epochs}.")
  if (shard_index is None) != (shard_count is None):
    raise ValueError("Give both shard_index and shard_count, or neither.")
  if shard_index is None and shard_by_process:
    shard_index, shard_count = jax.process_index(), jax.process_count()
  ds = grain.MapDataset.source(source)
  ds = ds.map_with_index(functools.partial(_with_index, num_examples=len(ds)))
  global_batches = shard_index is not None and shard_count > 1 and drop_remainder
  if shard_index is not None and not global_batches:
    ds = ds[shard_indices(len(ds), shard_index, shard_count, equal_sizes=drop_remainder)]
  if len(ds) == 0 or (global_batches and len(ds) * (num_epochs or 1) < batch_size * shard_count):
    raise ValueError("The dataset (or this process's shard of it) is empty.")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if global_batches:
    # Complete global batches only; each holds batch_size examples of every process.
    local_size = len(ds) // (batch_size * shard_count) * batch_size
    ds = grain.MapDataset.range(local_size).map(
      functools.partial(
        _host_part,
        dataset=ds,
        batch_size=batch_size,
        shard_index=shard_index,
        shard_count=shard_count,
      )
    )
  ds = ds.map(
    functools.partial(_model_example, style=style, channels=channels, max_boxes=max_boxes)
  )
  read_options = grain.ReadOptions(
    num_threads=num_threads,
    prefetch_buffer_size=(2 * batch_size if prefetch_buffer_size is None else prefetch_buffer_size),
  )
  return ds.to_iter_dataset(read_options).batch(batch_size, drop_remainder=drop_remainder)
