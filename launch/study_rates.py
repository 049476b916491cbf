"""The measured slice of every stage of the study, for `launch.benchmark_study`.

Each function times one piece of the study's work on synthetic images of the config's size and
returns the rates `saliency_jax.projection` projects from: training (the real loop for a few
steps, then steady steps and a validation batch) of classifiers, U-Nets and RetinaNets; one
chunk of maps per (classifier, method) at two model states; the maps stage's setup; the
localizer's maps; the criteria.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from launch.timing import best_of
from launch.timing import block
from launch.train_step_timing import train_step_time
from saliency_jax import attributions
from saliency_jax import models
from saliency_jax import projection
from saliency_jax import randomization
from saliency_jax import train
from saliency_jax.detection import postprocess
from saliency_jax.trust import criteria
from saliency_jax.trust import map_methods


def textured_images(n, size, channels, seed=0):
  """Textured [-1, 1] images (about 500 XRAI segments at 320x320, as chest X-rays give)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  smooth = (np.sin(yy / 5.0) + np.cos(xx / 7.0))[None, ..., None] / 2
  return np.clip(smooth + 0.3 * rng.normal(size=(n, size, size, channels)), -1, 1).astype(
    np.float32
  )


def _timed(fn):
  start = time.perf_counter()
  out = block(fn())
  return time.perf_counter() - start, out


def forward_flops(module, variables, image_shape) -> float | None:
  """FLOPs of one image's forward pass, from XLA's cost analysis (None if not reported)."""
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  analysis = jax.jit(lambda v, x: module.apply(v, x)).lower(variables, x).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _examples(n, size, seed):
  """In-memory contract examples (uint8 images, labels, masks, boxes) for a training slice:
  every second image has one lesion, its mask and its box."""
  images = ((textured_images(n, size, 1, seed=seed) + 1) * 127.5).astype(np.uint8)
  lesion = (size // 4, size // 3, size // 2, 2 * size // 3)  # ymin, xmin, ymax, xmax
  masks = np.zeros((n, size, size, 1), np.uint8)
  masks[1::2, lesion[0] : lesion[2], lesion[1] : lesion[3]] = 1
  box = np.asarray([lesion], np.float32)
  return [
    {
      "id": f"ex{i}",
      "image": images[i],
      "label": i % 2,
      "mask": masks[i],
      "boxes": box if i % 2 else np.zeros((0, 4), np.float32),
    }
    for i in range(n)
  ]


# What each kind of model trains with, and what its validation batch runs.
_LOOPS = {
  "classifier": "train_classifier",
  "segmenter": "train_segmenter",
  "detector": "train_detector",
}


def _evaluation(module, kind, shape):
  """The validation batch's computation: the forward pass; for a detector also the decoding
  and NMS of `detection.postprocess.detect` (what its mAP is computed from)."""
  if kind != "detector":
    return jax.jit(lambda v, x: module.apply(v, x))
  anchors = jnp.asarray(module.anchors(shape[0], shape[1]))

  @jax.jit
  def detect(v, x):
    logits, deltas = module.apply(v, x)
    return postprocess.detect(logits, deltas, anchors, image_shape=tuple(shape[:2]))

  return detect


def train_rates(module, shape, section, style, workdir, *, steps, repeats, kind="classifier"):
  """TrainRates of one model: the real training loop (`train.train_classifier`,
  `train_segmenter` or `train_detector` by `kind`, in-memory data) for a slice of `steps` steps
  with one validation pass of one batch, which gives compilation, input pipeline and
  checkpoint costs; then the steady step (`launch.train_step_timing`) and a validation batch
  (`_evaluation`). Returns (rates, initial variables, validation seconds per image)."""
  batch = int(section.batch_size)
  eval_batch = int(section.get("eval_batch_size", batch))
  config = ml_collections.ConfigDict(section.to_dict())
  config.update(
    num_steps=steps,
    eval_every=steps,
    log_every=steps,
    progress=False,
    style=style,
    channels=shape[2],
  )
  loop = getattr(train, _LOOPS[kind])
  slice_s, _ = _timed(
    lambda: loop(
      module,
      _examples(batch, shape[0], 0),
      _examples(eval_batch, shape[0], 1),
      workdir=workdir,
      seed=0,
      config=config,
    )
  )
  r = train_step_time(
    module,
    shape,
    batch_size=batch,
    num_steps=steps,
    dtype=section.get("dtype", "float32"),
    segmentation=kind == "segmenter",
    detector=kind == "detector",
  )
  variables = models.init_variables(module, jax.random.key(0), shape)
  x = jnp.asarray(textured_images(eval_batch, shape[0], shape[2]))
  forward = _evaluation(module, kind, shape)
  block(forward(variables, x))
  steady, _ = best_of(lambda: block(forward(variables, x)), repeats)
  fixed = max(0.0, slice_s - steps * r["step_s"] - steady)
  rates = projection.TrainRates(compile_s=fixed, step_s=r["step_s"], eval_batch_s=steady)
  return rates, variables, steady / eval_batch


def map_rates(name, module, shape, study, chunk, seg_cache, *, repeats):
  """MapRates of one (classifier, method): a chunk at state 1, state 2 (new weights), steady.
  XRAI's segmentation is timed apart (once per image set and style in the study)."""
  method = attributions.METHODS[name]
  settings = map_methods.method_settings(study.config, name)
  images = jnp.asarray(textured_images(chunk, shape[0], shape[2], seed=1))
  targets = jnp.zeros((chunk,), jnp.int32)
  prepared = None
  if method.prepare is not None:
    if "seconds" not in seg_cache:  # the first call starts the worker processes
      first, prepared = _timed(lambda: method.prepare(np.asarray(images), settings))
      steady, _ = best_of(lambda: method.prepare(np.asarray(images), settings), 1)
      seg_cache.update(seconds=steady / chunk, fixed=max(0.0, first - steady), prepared=prepared)
    prepared = seg_cache["prepared"]
  states = [
    models.model_functions(module, models.init_variables(module, jax.random.key(s), shape))
    for s in (1, 2)
  ]
  key = jax.random.key(0)

  def run(fns):
    return block(
      method.compute(fns, images, targets, key=key, settings=settings, prepared=prepared)
    )

  first, _ = _timed(lambda: run(states[0]))
  second, _ = _timed(lambda: run(states[1]))
  steady, _ = best_of(lambda: run(states[1]), repeats)
  return projection.MapRates(
    compile_s=max(0.0, first - steady), state_s=max(0.0, second - steady), per_map_s=steady / chunk
  )


def state_setup_s(module, variables, shape, name, study_config):
  """A classifier's setup in the maps stage, beyond its maps: the randomized states' weights
  and the targets of each image set (a jitted forward pass, compiled per call as the study's)."""
  key, sample = jax.random.key(0), jnp.zeros((1,) + tuple(shape), jnp.float32)
  seconds, _ = _timed(
    lambda: randomization.cascading_randomization(
      module, variables, key, sample, module.block_names
    )
  )
  if name in study_config.independent_randomization:
    seconds += _timed(
      lambda: randomization.independent_randomization(
        module, variables, key, sample, module.block_names
      )
    )[0]
  fns = models.model_functions(module, variables)
  x = jnp.asarray(textured_images(min(64, int(study_config.num_eval_images)), shape[0], shape[2]))
  sets = 2 if name in study_config.utility_models else 1
  for _ in range(sets):
    seconds += _timed(lambda: jax.jit(lambda f, x: f.logits_fn(x))(fns, x))[0]
  return seconds


def localizer_map_rates(module, variables, shape, chunk, *, detector, repeats):
  """(first-call extra, per map) of the localizer's maps: the study's SegmentationOutput of a
  U-Net, or DetectionScoreMap of a RetinaNet (network, decoding, NMS, score map)."""
  fns = models.ModelFunctions(lambda x: module.apply(variables, x))  # as the study binds it
  images = jnp.asarray(textured_images(chunk, shape[0], shape[2], seed=3))
  method = (
    map_methods.DetectionScoreMap(module.anchors(shape[0], shape[1]))
    if detector
    else map_methods.SegmentationOutput()
  )
  compute = jax.jit(lambda f, x: method.compute(f, x, None, indices=None, key=None, settings={}))
  first, _ = _timed(lambda: compute(fns, images))
  steady, _ = best_of(lambda: block(compute(fns, images)), repeats)
  return max(0.0, first - steady), steady / chunk


def criteria_rates(size, chunk, study_config, *, repeats):
  rng = np.random.default_rng(0)
  n = max(2, min(chunk, 16))
  maps = textured_images(n, size, 1, seed=2)[..., 0] / 2 + 0.5
  other = np.clip(maps + 0.1 * rng.normal(size=maps.shape), 0, 1).astype(np.float32)
  masks = np.zeros(maps.shape, bool)
  masks[:, size // 4 : size // 2, size // 3 : 2 * size // 3] = True
  data_range = float(study_config.ssim_data_range)
  pairs = max(1, min(int(study_config.random_pairs), 8))
  fns = {
    "utility": lambda: criteria.utility(maps, masks),
    "similarity": lambda: criteria.similarity(maps, other, data_range=data_range),
    "random": lambda: criteria.random_pair_baseline(
      maps, pairs=pairs, seed=0, data_range=data_range
    ),
  }
  out, fixed = {}, 0.0
  for label, fn in fns.items():
    first, _ = _timed(fn)
    steady, _ = best_of(fn, repeats)
    fixed += max(0.0, first - steady)
    out[label] = steady / (n * pairs if label == "random" else n)
  return out, fixed
