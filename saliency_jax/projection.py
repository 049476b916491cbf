"""The whole study's work counted from its config, and its wall time projected from rates.

Pure arithmetic (no JAX): `count_work` says how many training steps, evaluation batches, maps,
segmentations and criterion evaluations a config asks for on a dataset of given split sizes;
`project` turns those counts and measured costs (`Rates`, from `launch/benchmark_study.py`)
into seconds per stage. Both follow what `trust.Study` runs:

- train: per classifier and localizer, one compilation, `num_steps` steps, and an evaluation
  of the validation split every `eval_every` steps (and at the last step);
- maps: per classifier, every state (cascade: original + one per block; independent: one per
  block for `independent_randomization` models; the utility set's original and untrained
  states for `utility_models`) x every method, in chunks of `chunk_size` maps (the last
  chunk padded); a method compiles once per classifier and pays `state_s` at every further
  state; XRAI's segmentation runs once per (image set, input style); localizer maps are a
  forward pass per image;
- criteria: utility per utility map (and baselines), a similarity per (eval image, state)
  pair, per replicate pair, and `random_pairs` similarities per eval image and method.
"""

from collections.abc import Mapping
import dataclasses
import itertools
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Splits:
  """A dataset's split sizes; `positive_test` images with a finding in the test split."""

  train: int
  val: int
  test: int
  positive_test: int


def _positives(test: int, fraction: float) -> int:
  return int(round(test * fraction))


# The authors' splits (pneumothorax_splits.csv / pneumonia_splits.csv): train, val, test rows.
# Positive test images: the dataset-wide positive fraction (SIIM 2,379 of 10,675 images;
# RSNA 6,012 "Lung Opacity" of 14,863) applied to the test split, an estimate.
PAPER_SPLITS = {
  "siim": Splits(8646, 961, 1068, _positives(1068, 2379 / 10675)),
  "rsna": Splits(12039, 1338, 1486, _positives(1486, 6012 / 14863)),
}


@dataclasses.dataclass(frozen=True)
class ModelWork:
  name: str
  steps: int
  eval_batches: int  # validation batches over the whole training
  map_states: int  # states with maps (all sets)
  maps_per_method: int  # maps of one method over all states, chunk padding included
  eval_states: int  # states on the eval set (cascade + independent)


@dataclasses.dataclass(frozen=True)
class StudyWork:
  classifiers: tuple[ModelWork, ...]
  localizers: tuple[ModelWork, ...]
  methods: tuple[str, ...]
  localizer_maps: int  # per localizer
  segmentations: int  # XRAI segmentations (image set x input style)
  utility_maps: int  # criteria: maps scored for utility (baselines included)
  similarity_pairs: int  # criteria: paired-map similarities
  random_pairs: int  # criteria: random-pair similarities


def _padded(n: int, chunk: int) -> int:
  return math.ceil(n / chunk) * chunk if n else 0


def _evals(steps: int, every: int) -> int:
  return steps // every + (1 if steps % every else 0)


def count_work(config: Any, splits: Splits, blocks: Mapping[str, int]) -> StudyWork:
  """The study's work for `config` (a trust.Study config) on data of `splits`.

  blocks: number of randomization blocks of each classifier (by model name).
  """
  study = config.study
  n_eval = min(int(study.num_eval_images), splits.positive_test)
  n_util = int(study.num_utility_images) or splits.positive_test
  n_util = min(n_util, splits.positive_test)
  chunk = int(study.chunk_size)
  methods = tuple(config.methods.names)
  train = config.train
  eval_batch = int(train.get("eval_batch_size", train.batch_size))
  val_batches = math.ceil(splits.val / eval_batch)
  classifiers, styles_by_set = [], {"eval": set(), "utility": set()}
  for spec in config.models:
    name = spec["name"]
    independent = name in study.independent_randomization
    utility = name in study.utility_models
    eval_states = 1 + blocks[name] + (blocks[name] if independent else 0)
    util_states = 2 if utility else 0
    style = spec.get("style", config.data.style)
    styles_by_set["eval"].add(style)
    if utility:
      styles_by_set["utility"].add(style)
    classifiers.append(
      ModelWork(
        name=name,
        steps=int(train.num_steps),
        eval_batches=_evals(int(train.num_steps), int(train.eval_every)) * val_batches,
        map_states=eval_states + util_states,
        maps_per_method=eval_states * _padded(n_eval, chunk) + util_states * _padded(n_util, chunk),
        eval_states=eval_states,
      )
    )
  loc = config.localization
  loc_batch = int(loc.train.get("eval_batch_size", loc.train.batch_size))
  localizers = tuple(
    ModelWork(
      name=f"localizer{i + 1}",
      steps=int(loc.train.num_steps),
      eval_batches=_evals(int(loc.train.num_steps), int(loc.train.eval_every))
      * math.ceil(splits.val / loc_batch),
      map_states=2,
      maps_per_method=_padded(n_eval, chunk) + _padded(n_util, chunk),
      eval_states=1,
    )
    for i in range(len(loc.seeds))
  )
  segmentations = 0
  if "XRAI" in methods:
    segmentations = len(styles_by_set["eval"]) * n_eval + len(styles_by_set["utility"]) * n_util
  n_methods = len(methods)
  utility_maps = n_util * (len(study.utility_models) * 2 * n_methods + 1 + len(localizers))
  similarity_pairs = n_eval * (
    sum(c.eval_states for c in classifiers) * n_methods
    + len(list(itertools.combinations(classifiers, 2))) * n_methods
    + len(list(itertools.combinations(localizers, 2)))
  )
  random_pairs = n_eval * int(study.random_pairs) * len(classifiers) * n_methods
  return StudyWork(
    classifiers=tuple(classifiers),
    localizers=localizers,
    methods=methods,
    localizer_maps=localizers[0].maps_per_method if localizers else 0,
    segmentations=segmentations,
    utility_maps=utility_maps,
    similarity_pairs=similarity_pairs,
    random_pairs=random_pairs,
  )


@dataclasses.dataclass(frozen=True)
class TrainRates:
  compile_s: float  # first step and first evaluation, beyond their steady time
  step_s: float
  eval_batch_s: float


@dataclasses.dataclass(frozen=True)
class MapRates:
  compile_s: float  # the first state's extra time
  state_s: float  # each further state's extra time (new variables)
  per_map_s: float


@dataclasses.dataclass(frozen=True)
class Rates:
  """Measured costs, by model name (classifiers and `localizer<i>`) and (model, method)."""

  train: Mapping[str, TrainRates]
  maps: Mapping[tuple[str, str], MapRates]
  localizer_map_s: float  # per localizer map (forward pass)
  segmentation_s: float  # per XRAI segmentation
  utility_map_s: float
  similarity_pair_s: float
  random_pair_s: float
  fixed_s: Mapping[str, float] = dataclasses.field(default_factory=dict)  # once per stage


def project(work: StudyWork, rates: Rates) -> dict[str, Any]:
  """Projected seconds: {"train": {model: s}, "maps": {(model, method): s}, "segmentation",
  "localizer_maps", "criteria", and stage totals (with `rates.fixed_s`) "train_s", "maps_s",
  "criteria_s", "total_s"}."""
  train = {}
  for m in work.classifiers + work.localizers:
    r = rates.train[m.name]
    train[m.name] = r.compile_s + m.steps * r.step_s + m.eval_batches * r.eval_batch_s
  maps = {}
  for m in work.classifiers:
    for method in work.methods:
      r = rates.maps[(m.name, method)]
      maps[(m.name, method)] = (
        r.compile_s + (m.map_states - 1) * r.state_s + m.maps_per_method * r.per_map_s
      )
  segmentation = work.segmentations * rates.segmentation_s
  localizer_maps = len(work.localizers) * work.localizer_maps * rates.localizer_map_s
  criteria = (
    work.utility_maps * rates.utility_map_s
    + work.similarity_pairs * rates.similarity_pair_s
    + work.random_pairs * rates.random_pair_s
  )
  fixed = {stage: rates.fixed_s.get(stage, 0.0) for stage in ("train", "maps", "criteria")}
  out = {
    "train": train,
    "maps": maps,
    "segmentation": segmentation,
    "localizer_maps": localizer_maps,
    "criteria": criteria,
    "train_s": sum(train.values()) + fixed["train"],
    "maps_s": sum(maps.values()) + segmentation + localizer_maps + fixed["maps"],
    "criteria_s": criteria + fixed["criteria"],
  }
  out["total_s"] = out["train_s"] + out["maps_s"] + out["criteria_s"]
  return out


def peak_flops(device_kind: str, table: Mapping[str, float]) -> float | None:
  """The peak FLOP/s of a device from `table` (by a name contained in its kind), or None."""
  for name, value in table.items():
    if name.lower() in device_kind.lower():
      return value
  return None
