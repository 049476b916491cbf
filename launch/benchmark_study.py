r"""The whole study's wall time, projected from a measured slice of every stage.

  python -m launch.benchmark_study                                   # paper config, SIIM + RSNA
  python -m launch.benchmark_study --config=configs/tiny.py --datasets=config

On synthetic images of the config's size, with the config's models, methods and settings, it
times a slice of each stage: the real training loop for a few steps (compilation, input
pipeline, a checkpoint), then steady steps and a validation batch, of every classifier and
localizer; one chunk of maps per (classifier, method) at a first state, a second state (new
weights) and again (steady); XRAI's segmentation of the chunk; the maps stage's setup
(randomized weights, targets); and the criteria (utility, similarity, random pairs) on maps of
the real size. Then it counts the work of the full study for each dataset's split sizes
(`saliency_jax.projection`: the authors' SIIM and RSNA splits by default; `--datasets=config`:
the config's own synthetic split; every dataset with the one `--config`, whose localizer must
be the U-Net) and prints the projected time of every stage, with the fraction of the device's
peak FLOP/s that training and the gradient methods reach (peak from `--peak_tflops` or a table
of known devices, bfloat16 dense). Not projected: the data stage (preparing real data is a
separate step), the report, and the checks beyond the paper (`config.study.controls`,
`chexlocalize`, `robustness`: off in the paper configs; turn them off to compare with a run).
`--compilation_cache` as `launch.run_all` (default off, so that the first calls show
compilation).
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from launch.timing import best_of
from launch.timing import block
from launch.train_step_timing import train_step_time
from saliency_jax import attributions
from saliency_jax import compilation_cache
from saliency_jax import models
from saliency_jax import projection
from saliency_jax import randomization
from saliency_jax import train
from saliency_jax import trust
from saliency_jax.trust import criteria
from saliency_jax.trust import map_methods

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  os.path.join(os.path.dirname(__file__), "..", "configs", "paper_siim.py"),
  "The study config whose work is timed and projected.",
)
_DATASETS = flags.DEFINE_list(
  "datasets",
  ["siim", "rsna"],
  f"Split sizes to project for: {sorted(projection.PAPER_SPLITS)} "
  "or 'config' (the config's synthetic split).",
)
_POSITIVE_TEST = flags.DEFINE_integer(
  "positive_test", 0, "For --datasets=config: positive test images (0: test x positive_fraction)."
)
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 5, "Timed training steps (median).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Steady-state repetitions (best reported).")
_PEAK_TFLOPS = flags.DEFINE_float(
  "peak_tflops", 0.0, "The device's peak TFLOP/s (0: from the table, if known)."
)
_COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache", "off", "As launch.run_all's flag; workdir: a temp dir."
)
_JSON = flags.DEFINE_string("json", None, "Write the measured rates and projections here.")

# Peak dense bfloat16 FLOP/s by a substring of jax's device_kind.
PEAK_FLOPS = {
  "H200": 989e12,
  "H100": 989e12,
  "A100": 312e12,
  "L4": 121e12,
  "V100": 125e12,
  "T4": 65e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5p": 459e12,
  "TPU v6": 918e12,
}


def _images(n, size, channels, seed=0):
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


def _forward_flops(module, variables, image_shape) -> float | None:
  """FLOPs of one image's forward pass, from XLA's cost analysis (None if not reported)."""
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  analysis = jax.jit(lambda v, x: module.apply(v, x)).lower(variables, x).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _examples(n, size, seed):
  """In-memory contract examples (uint8 images, labels, masks) for a training slice."""
  images = ((_images(n, size, 1, seed=seed) + 1) * 127.5).astype(np.uint8)
  masks = np.zeros((n, size, size, 1), np.uint8)
  masks[1::2, size // 4 : size // 2, size // 3 : 2 * size // 3] = 1
  return [
    {
      "id": f"ex{i}",
      "image": images[i],
      "label": i % 2,
      "mask": masks[i],
      "boxes": np.zeros((0, 4), np.float32),
    }
    for i in range(n)
  ]


def _train_rates(module, shape, section, style, workdir, segmentation=False):
  """TrainRates of one model: the real training loop (`train.train_classifier` or
  `train_segmenter`, in-memory data) for a slice of `--train_steps` steps with one validation
  pass of one batch, which gives compilation, input pipeline and checkpoint costs; then the
  steady step (`launch.train_step_timing`) and a validation batch (forward pass)."""
  batch = int(section.batch_size)
  eval_batch = int(section.get("eval_batch_size", batch))
  steps = _TRAIN_STEPS.value
  config = ml_collections.ConfigDict(section.to_dict())
  config.update(
    num_steps=steps,
    eval_every=steps,
    log_every=steps,
    progress=False,
    style=style,
    channels=shape[2],
  )
  loop = train.train_segmenter if segmentation else train.train_classifier
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
    segmentation=segmentation,
  )
  variables = models.init_variables(module, jax.random.key(0), shape)
  x = jnp.asarray(_images(eval_batch, shape[0], shape[2]))
  forward = jax.jit(lambda v, x: module.apply(v, x))
  block(forward(variables, x))
  steady, _ = best_of(lambda: block(forward(variables, x)), _REPEATS.value)
  fixed = max(0.0, slice_s - steps * r["step_s"] - steady)
  rates = projection.TrainRates(compile_s=fixed, step_s=r["step_s"], eval_batch_s=steady)
  return rates, variables, steady / eval_batch


def _map_rates(name, module, shape, study, chunk, seg_cache):
  """MapRates of one (classifier, method): a chunk at state 1, state 2 (new weights), steady.
  XRAI's segmentation is timed apart (once per image set and style in the study)."""
  method = attributions.METHODS[name]
  settings = map_methods.method_settings(study.config, name)
  images = jnp.asarray(_images(chunk, shape[0], shape[2], seed=1))
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
  steady, _ = best_of(lambda: run(states[1]), _REPEATS.value)
  return projection.MapRates(
    compile_s=max(0.0, first - steady), state_s=max(0.0, second - steady), per_map_s=steady / chunk
  )


def _state_setup_s(module, variables, shape, name, study_config):
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
  x = jnp.asarray(_images(min(64, int(study_config.num_eval_images)), shape[0], shape[2]))
  sets = 2 if name in study_config.utility_models else 1
  for _ in range(sets):
    seconds += _timed(lambda: jax.jit(lambda f, x: f.logits_fn(x))(fns, x))[0]
  return seconds


def _localizer_map_rates(module, variables, shape, chunk):
  """(first-call extra, per map) of the localizer's maps (the study's SegmentationOutput)."""
  fns = models.model_functions(module, variables)
  images = jnp.asarray(_images(chunk, shape[0], shape[2], seed=3))
  compute = jax.jit(
    lambda f, x: map_methods.SegmentationOutput().compute(
      f, x, None, indices=None, key=None, settings={}
    )
  )
  first, _ = _timed(lambda: compute(fns, images))
  steady, _ = best_of(lambda: block(compute(fns, images)), _REPEATS.value)
  return max(0.0, first - steady), steady / chunk


def _criteria_rates(size, chunk, study_config):
  rng = np.random.default_rng(0)
  n = max(2, min(chunk, 16))
  maps = _images(n, size, 1, seed=2)[..., 0] / 2 + 0.5
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
    steady, _ = best_of(fn, _REPEATS.value)
    fixed += max(0.0, first - steady)
    out[label] = steady / (n * pairs if label == "random" else n)
  return out, fixed


def _splits(name, config):
  if name != "config":
    return projection.PAPER_SPLITS[name]
  d = config.data
  positives = _POSITIVE_TEST.value or int(round(d.num_test * d.positive_fraction))
  return projection.Splits(int(d.num_train), int(d.num_val), int(d.num_test), positives)


def _fmt_s(seconds):
  return f"{seconds / 60:8.1f} min" if seconds >= 600 else f"{seconds:8.1f} s  "


def main(argv):
  del argv
  config = _CONFIG.value
  tmp = tempfile.mkdtemp(prefix="benchmark_study_")
  cache = compilation_cache.enable(_COMPILATION_CACHE.value, tmp)
  device = jax.devices()[0]
  peak = _PEAK_TFLOPS.value * 1e12 or projection.peak_flops(device.device_kind, PEAK_FLOPS)
  size, channels = int(config.data.image_size), int(config.data.channels)
  shape = (size, size, channels)
  chunk = int(config.study.chunk_size)
  print(
    f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, {jax.default_backend()}: "
    f"{device.device_kind}; images {shape}, chunk {chunk}, compilation cache {cache}; "
    f"peak {'unknown' if not peak else f'{peak / 1e12:.0f} TFLOP/s'}"
  )
  study = trust.Study(config, os.path.join(tmp, "workdir"))
  train_rates, map_rates, blocks, records = {}, {}, {}, {"maps": {}, "train": {}}
  seg_cache, setup_s = {}, 0.0
  print(
    f"\n{'model':10s} {'steps/s':>9s} {'images/s':>9s} {'first call s':>13s} "
    f"{'eval batch s':>13s} {'peak':>6s}"
  )
  for spec in config.models:
    if "arch" not in spec or any(spec.get(k) for k in ("module", "keras_model", "weights")):
      raise ValueError(f"model {spec['name']}: only config.models entries by arch are timed")
    module = models.create(spec["arch"], num_classes=2, **spec.get("kwargs", {}))
    rates, variables, _ = _train_rates(
      module,
      shape,
      config.train,
      spec.get("style", config.data.style),
      os.path.join(tmp, "train", spec["name"]),
    )
    train_rates[spec["name"]] = rates
    blocks[spec["name"]] = len(module.block_names)
    flops = _forward_flops(module, variables, shape)
    setup_s += _state_setup_s(module, variables, shape, spec["name"], config.study)
    batch = int(config.train.batch_size)
    frac = 3 * flops * batch / rates.step_s / peak if flops and peak else None
    print(
      f"{spec['name']:10s} {1 / rates.step_s:9.2f} {batch / rates.step_s:9.1f} "
      f"{rates.compile_s:13.1f} {rates.eval_batch_s:13.3f} "
      f"{'-' if frac is None else f'{100 * frac:5.1f}%':>6s}"
    )
    records["train"][spec["name"]] = dict(vars(rates), peak_fraction=frac, forward_flops=flops)
    for name in config.methods.names:
      r = _map_rates(name, module, shape, study, chunk, seg_cache)
      map_rates[(spec["name"], name)] = r
      grads = _GRADIENTS.get(name, lambda s: None)(map_methods.method_settings(study.config, name))
      gfrac = (3 * flops * grads / r.per_map_s / peak) if grads and flops and peak else None
      records["maps"][f"{spec['name']}/{name}"] = dict(vars(r), peak_fraction=gfrac)
  loc = config.localization
  if loc.arch != "unet":
    raise ValueError(
      f"config.localization.arch={loc.arch!r}: only the U-Net localizer is timed "
      "(--config.localization.arch=unet)"
    )
  loc_module = models.create(loc.arch, **loc.get("kwargs", {}))
  for i in range(len(loc.seeds)):  # the second reuses the first's compiled programs
    loc_rates, loc_variables, _ = _train_rates(
      loc_module,
      shape,
      loc.train,
      config.data.style,
      os.path.join(tmp, "train", f"localizer{i + 1}"),
      segmentation=True,
    )
    train_rates[f"localizer{i + 1}"] = loc_rates
  loc_fixed, loc_map_s = _localizer_map_rates(loc_module, loc_variables, shape, chunk)
  crit, crit_fixed = _criteria_rates(size, chunk, config.study)
  rates = projection.Rates(
    train=train_rates,
    maps=map_rates,
    localizer_map_s=loc_map_s,
    segmentation_s=seg_cache.get("seconds", 0.0),
    utility_map_s=crit["utility"],
    similarity_pair_s=crit["similarity"],
    random_pair_s=crit["random"],
    fixed_s={"maps": seg_cache.get("fixed", 0.0) + setup_s + loc_fixed, "criteria": crit_fixed},
  )
  for name in [f"localizer{i + 1}" for i in range(len(loc.seeds))]:
    r = train_rates[name]
    print(
      f"{name:10s} {1 / r.step_s:9.2f} {int(loc.train.batch_size) / r.step_s:9.1f} "
      f"{r.compile_s:13.1f} {r.eval_batch_s:13.3f}"
    )
  print(f"\n{'maps/s (steady)':16s}" + "".join(f"{m:>9s}" for m in config.methods.names))
  for spec in config.models:
    print(
      f"{spec['name']:16s}"
      + "".join(f"{1 / map_rates[(spec['name'], m)].per_map_s:9.2f}" for m in config.methods.names)
    )
  print(
    f"{'first call s':16s}"
    + "".join(
      f"{map_rates[(config.models[0]['name'], m)].compile_s:9.1f}" for m in config.methods.names
    )
  )
  print(
    f"{'peak (1st model)':16s}"
    + "".join(
      f"{_pct(records['maps'][config.models[0]['name'] + '/' + m]['peak_fraction']):>9s}"
      for m in config.methods.names
    )
  )
  if "seconds" in seg_cache:
    print(f"XRAI segmentation: {1 / seg_cache['seconds']:.2f} images/s (host, worker processes)")
  print(
    f"maps stage, once: XRAI segmentation workers {seg_cache.get('fixed', 0.0):.1f} s, "
    f"randomized weights and targets {setup_s:.1f} s, localizer maps' first call "
    f"{loc_fixed:.1f} s"
  )
  print(
    f"criteria: utility {1 / crit['utility']:.1f} maps/s, similarity "
    f"{1 / crit['similarity']:.1f} pairs/s, random pairs {1 / crit['random']:.1f} pairs/s, "
    f"first calls {crit_fixed:.1f} s"
  )
  projections = {}
  for name in _DATASETS.value:
    splits = _splits(name, config)
    work = projection.count_work(config, splits, blocks)
    p = projection.project(work, rates)
    projections[name] = p
    print(f"\nprojected study on {name} {splits}:")
    for model, seconds in p["train"].items():
      print(f"  train {model:20s} {_fmt_s(seconds)}")
    for method in config.methods.names:
      seconds = sum(v for (_, m), v in p["maps"].items() if m == method)
      print(f"  maps {method:21s} {_fmt_s(seconds)}")
    print(f"  maps XRAI segmentation     {_fmt_s(p['segmentation'])}")
    print(f"  maps localizers            {_fmt_s(p['localizer_maps'])}")
    print(f"  train                      {_fmt_s(p['train_s'])}")
    print(f"  maps                       {_fmt_s(p['maps_s'])}")
    print(f"  criteria                   {_fmt_s(p['criteria_s'])}")
    print(f"  total                      {_fmt_s(p['total_s'])}")
  if len(projections) > 1:
    print(f"\nall datasets: {_fmt_s(sum(p['total_s'] for p in projections.values()))}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(
        {
          "rates": records,
          "criteria": crit,
          "segmentation_s": seg_cache.get("seconds"),
          "projections": {
            k: {s: v for s, v in p.items() if s.endswith("_s")} for k, p in projections.items()
          },
        },
        f,
        indent=1,
        default=str,
      )


def _pct(value):
  return "-" if value is None else f"{100 * value:.1f}%"


# Model gradients per map (as launch.benchmark counts them).
_GRADIENTS = {
  "GRAD": lambda s: 1,
  "GBP": lambda s: 1,
  "GGCAM": lambda s: 2,
  "SG": lambda s: s["samples"],
  "IG": lambda s: s["steps"],
  "SIG": lambda s: s["samples"] * s["steps"],
  "XRAI": lambda s: 2 * s["steps"],
}


if __name__ == "__main__":
  app.run(main)
