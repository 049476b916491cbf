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
the config's own synthetic split; every dataset with the one `--config` and its localizer, a
U-Net or a RetinaNet: `--config=configs/paper_rsna.py --datasets=rsna` for the authors' RSNA
study) and prints the projected time of every stage, with the fraction of the device's peak
FLOP/s that training and the gradient methods reach (peak from `--peak_tflops` or a table
of known devices, bfloat16 dense). Not projected: the data stage (preparing real data is a
separate step), the report, and the checks beyond the paper (`config.study.controls`,
`chexlocalize`, `robustness`: off in the paper configs; turn them off to compare with a run).
`--compilation_cache` as `launch.run_all` (default off, so that the first calls show
compilation).
"""

import json
import os
import tempfile

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from launch import study_rates
from saliency_jax import compilation_cache
from saliency_jax import models
from saliency_jax import projection
from saliency_jax import trust
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
    rates, variables, _ = study_rates.train_rates(
      module,
      shape,
      config.train,
      spec.get("style", config.data.style),
      os.path.join(tmp, "train", spec["name"]),
      steps=_TRAIN_STEPS.value,
      repeats=_REPEATS.value,
    )
    train_rates[spec["name"]] = rates
    blocks[spec["name"]] = len(module.block_names)
    flops = study_rates.forward_flops(module, variables, shape)
    setup_s += study_rates.state_setup_s(module, variables, shape, spec["name"], config.study)
    batch = int(config.train.batch_size)
    frac = 3 * flops * batch / rates.step_s / peak if flops and peak else None
    print(
      f"{spec['name']:10s} {1 / rates.step_s:9.2f} {batch / rates.step_s:9.1f} "
      f"{rates.compile_s:13.1f} {rates.eval_batch_s:13.3f} "
      f"{'-' if frac is None else f'{100 * frac:5.1f}%':>6s}"
    )
    records["train"][spec["name"]] = dict(vars(rates), peak_fraction=frac, forward_flops=flops)
    for name in config.methods.names:
      r = study_rates.map_rates(
        name, module, shape, study, chunk, seg_cache, repeats=_REPEATS.value
      )
      map_rates[(spec["name"], name)] = r
      grads = _GRADIENTS.get(name, lambda s: None)(map_methods.method_settings(study.config, name))
      gfrac = (3 * flops * grads / r.per_map_s / peak) if grads and flops and peak else None
      records["maps"][f"{spec['name']}/{name}"] = dict(vars(r), peak_fraction=gfrac)
  loc = config.localization
  detector = loc.arch == "retinanet"
  loc_module = models.create(loc.arch, **loc.get("kwargs", {}))
  for i in range(len(loc.seeds)):  # the second reuses the first's compiled programs
    loc_rates, loc_variables, _ = study_rates.train_rates(
      loc_module,
      shape,
      loc.train,
      config.data.style,
      os.path.join(tmp, "train", f"localizer{i + 1}"),
      steps=_TRAIN_STEPS.value,
      repeats=_REPEATS.value,
      kind="detector" if detector else "segmenter",
    )
    train_rates[f"localizer{i + 1}"] = loc_rates
  loc_fixed, loc_map_s = study_rates.localizer_map_rates(
    loc_module, loc_variables, shape, chunk, detector=detector, repeats=_REPEATS.value
  )
  crit, crit_fixed = study_rates.criteria_rates(size, chunk, config.study, repeats=_REPEATS.value)
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
