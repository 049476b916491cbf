"""The study, stage by stage: data -> train -> maps -> criteria -> report.

Every stage writes under the run's workdir and resumes: the dataset is built once, training
resumes from its last checkpoint, map stores keep their finished chunks, and a stage marked
done in `progress.json` is skipped on a rerun, unless the config sections it reads changed
since it ran (the run manifest records them): then it runs again with every stage after it,
and map stores of other models, images or settings are replaced. Layout of the workdir:

  data/                          the TFDS dataset (synthetic runs build it here)
  models/<name>/                 checkpoints, metrics.jsonl of each classifier and localizer
  maps/<set>/<model>/<state>/<method>/   map stores (set: "utility" or "eval")
  maps/<set>/prepared/           model-independent per-image data (XRAI segments)
  maps/<set>/ground_truth.npz, maps/average_mask.npy   what scoring needs of the dataset
  run_manifest.json              what the maps stage decided and each stage's config
  results.json, results.csv      one record per image x method x criterion x step
  summary.json                   the scorecard and the curves the report draws
  report.md, report.html, figures/
  progress.json                  stages done and their wall time
  run.lock                       the run using the workdir (see workdir_lock)
"""

from collections.abc import Callable, Sequence
import contextlib
import dataclasses
import hashlib
import json
import os
import time
from typing import Any
import zlib

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from saliency_jax import attributions
from saliency_jax import data as data_lib
from saliency_jax import maps as maps_lib
from saliency_jax import models
from saliency_jax import multihost
from saliency_jax import randomization
from saliency_jax import train as train_lib
from saliency_jax.attributions import custom as custom_methods
from saliency_jax.models import plugin
from saliency_jax.trust import checks
from saliency_jax.trust import config_check
from saliency_jax.trust import external
from saliency_jax.trust import map_reader
from saliency_jax.trust import robustness
from saliency_jax.trust import workdir_lock
from saliency_jax.trust.manifest import CLASSIFIER
from saliency_jax.trust.manifest import LOCALIZER
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.manifest import ModelEntry
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import CASCADE_PREFIX
from saliency_jax.trust.names import cascade_state
from saliency_jax.trust.names import independent_state
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State

STAGES = ("data", "train", "maps", "criteria", "report")
LOCALIZATION_ARCHS = ("unet", "retinanet")  # config.localization.arch
HOST0_STAGES = ("criteria", "report")  # single-writer stages of a multi-host run
# The config sections each stage reads, recorded in the manifest when the stage finishes
# (None: the whole config).
STAGE_CONFIG = {
  "data": ("seed", "data"),
  "train": ("seed", "data", "models", "train", "localization", "weights", "protocol", "sanity"),
  "maps": ("seed", "data", "models", "localization", "methods", "study", "protocol", "sanity"),
  "criteria": ("seed", "study", "protocol", "sanity"),
  "report": None,
}


@dataclasses.dataclass
class ImageSet:
  """Images held in memory for map generation, with their ground truth."""

  name: str
  ids: np.ndarray  # str [N]
  indices: np.ndarray  # int [N], dataset indices in the test split (noise keys fold them)
  raw: np.ndarray  # uint8/uint16 [N,H,W,1], as stored
  masks: np.ndarray  # bool [N,H,W]
  boxes: list[np.ndarray]


@dataclasses.dataclass
class TrainedModel:
  """A classifier or a localization network as the study holds it."""

  name: str
  arch: str
  module: Any
  variables: Any
  val_score: float  # the selection metric: validation AUC, Dice (U-Net) or mAP (RetinaNet)
  style: str  # the pixel scaling this model was trained with (see data.preprocess)
  # How the study uses it (blocks, functions, what it lacks); None: a package model, bound
  # when first needed (`Study.bound_model`).
  bound: plugin.PluginModel | None = None
  val_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


class ProgressLog:
  """Which stages are done and how long they took, in <workdir>/progress.json."""

  def __init__(self, path: str):
    self.path = path
    self.stages: dict[str, dict[str, Any]] = {}
    if os.path.exists(path):
      with open(path) as f:
        self.stages = json.load(f)

  def done(self, stage: str) -> bool:
    return self.stages.get(stage, {}).get("done", False)

  def record(self, stage: str, seconds: float) -> None:
    self.stages[stage] = {"done": True, "seconds": round(seconds, 2)}
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.stages, f, indent=2)
    os.replace(tmp, self.path)


class SegmentationOutput:
  """The localization network's per-pixel probability, stored like a saliency map."""

  name = Baseline.LOCALIZATION
  prepare = None
  default_settings: dict[str, Any] = {}

  def compute(self, model_fns, images, targets, *, indices, key, settings, prepared=None):
    del targets, indices, key, settings, prepared
    return jax.nn.sigmoid(model_fns.logits_fn(images)).astype(jnp.float32)


class DetectionScoreMap:
  """The RetinaNet's per-pixel score map (`detection.postprocess.score_maps` of its
  detections), stored like a saliency map: the detector's localization baseline."""

  name = Baseline.LOCALIZATION
  prepare = None
  default_settings: dict[str, Any] = {}

  def __init__(self, anchors: np.ndarray):
    self.anchors = anchors

  def compute(self, model_fns, images, targets, *, indices, key, settings, prepared=None):
    del targets, indices, key, settings, prepared
    from saliency_jax.detection import postprocess  # pylint: disable=g-import-not-at-top

    logits, deltas = model_fns.logits_fn(images)
    shape = tuple(images.shape[1:3])
    boxes, scores = postprocess.detect(logits, deltas, jnp.asarray(self.anchors), image_shape=shape)
    return postprocess.score_maps(boxes, scores, shape)


class Study:
  """The study for one config, resumable under `workdir`: runs the stages, nothing else.

  Scoring and reporting read what the maps stage wrote (the manifest, the map stores, the
  ground truth); they never see this object.
  """

  # Models and images given in Python (saliency_jax.api): config.data and config.models do
  # not describe them, and nothing is trained.
  GIVEN = False

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_check.validate(config, given=self.GIVEN)  # every problem now, not after training
    self.config = config
    self.workdir = workdir
    from saliency_jax.trust import sanity  # pylint: disable=g-import-not-at-top

    sanity.validate(config)
    self.progress = ProgressLog(os.path.join(workdir, "progress.json"))
    self.manifest = Manifest.load(workdir)
    self._cache: dict[str, Any] = {}

  # ---------------------------------------------------------------------------------------
  # Driving the stages.

  def run(self, stages=STAGES) -> str:
    """Runs the stages not done yet; returns the path of the report."""
    os.makedirs(self.workdir, exist_ok=True)
    for stage in stages:
      if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    # One run per workdir (host 0 holds the lock for all hosts of a multi-host run).
    with workdir_lock.hold(self.workdir) if multihost.is_writer() else contextlib.nullcontext():
      self._redo_changed_stages(stages)
      self._run_stages(stages)
    return os.path.join(self.workdir, "report.html")

  def _run_stages(self, stages) -> None:
    for stage in stages:
      if self.progress.done(stage):
        _say(f"[{stage}] done already: skipped")
        continue
      if stage in HOST0_STAGES and jax.process_index() != 0:
        continue  # one host scores and reports; the others' work ended with the maps
      _say(f"[{stage}] ...")
      began = time.perf_counter()
      getattr(self, f"stage_{stage}")()
      if jax.process_index() == 0:
        self.manifest.record_stage(stage, self.stage_config(stage))
        self.manifest.save()
        self.progress.record(stage, time.perf_counter() - began)
      _say(f"[{stage}] done in {time.perf_counter() - began:.1f} s")

  def plan(self) -> dict[str, Any]:
    """What a run of this config does, as plain data, from the functions the stages call
    (nothing is read or trained): the dataset, each model with its training settings, every
    map store with its method settings and targets, the scoring and the report. A config
    field that changes nothing here does nothing (tests/test_config.py checks every field)."""
    from saliency_jax.trust import verdicts  # pylint: disable=g-import-not-at-top

    c, s, p = self.config, self.config.study, self.config.protocol
    data = dict(
      name=c.data.name,
      data_dir=self.data_dir,
      image_size=c.data.image_size,
      channels=c.data.channels,
    )
    if c.data.name == config_check.SYNTHETIC:
      data.update(synthetic={k: c.data[k] for k in config_check.SYNTHETIC_DATA_FIELDS})
    classifiers, maps = [], {}
    for spec in c.models:
      spec = dict(spec)
      style = spec.get("style", c.data.style)
      entry = dict(spec, train=self._train_config(c.train, style).to_dict())
      if spec.get("arch"):
        module = models.create(spec["arch"], num_classes=2, **spec.get("kwargs", {}))
        entry.update(imagenet=c.weights.get(spec["arch"], "") if p.init == "imagenet" else None)
        states = self.state_names(spec["name"], module.block_names)
      else:  # a model by import path or file: its blocks are known once it is loaded
        states = "from the loaded model"
      classifiers.append(entry)
      maps[spec["name"]] = dict(
        states=states, methods={name: self.method_settings(name, style) for name in c.methods.names}
      )
    loc = c.localization
    localizers = [
      dict(
        arch=loc.arch,
        kwargs=dict(loc.kwargs),
        seed=seed,
        train=self._train_config(loc.train, c.data.style).to_dict(),
        backbone=c.weights.get(config_check.DETECTOR_WEIGHTS, "")
        if loc.arch == config_check.DETECTOR
        else None,
      )
      for seed in loc.seeds
    ]
    return dict(
      seed=c.seed,
      workdir=self.workdir,
      data=data,
      classifiers=classifiers,
      localizers=localizers,
      images=dict(
        eval=s.num_eval_images,
        utility=s.num_utility_images,
        utility_selection=p.utility_images,
        agreement=self.agreement_set(),
      ),
      maps=dict(
        stores=maps,
        custom_methods=dict(c.methods.custom),
        target=s.target,
        randomized_target=p.randomized_target,
        chunk_size=s.chunk_size,
        dtype=s.map_dtype,
        external=s.external_maps,
      ),
      scoring=dict(
        rules=verdicts.rules_from_config(s),
        alpha=s.alpha,
        correction=s.correction,
        bootstrap_resamples=s.bootstrap_resamples,
        random_pairs=s.random_pairs,
        random_pair_baseline=p.random_pairs,
        pooling=p.randomization_pooling,
        ssim_data_range=s.ssim_data_range,
        utility_models=tuple(s.utility_models),
        localization_agreement=p.localization_agreement,
        minmax_maps=p.minmax_maps,
        checks={
          name: s[name].to_dict() if checks.enabled(s, name) else None
          for name in ("controls", "chexlocalize", "robustness")
        },
      ),
      sanity=c.get("sanity").to_dict() if c.get("sanity") is not None else None,
      report=dict(examples=s.num_example_images),
    )

  def stage_config(self, stage: str) -> dict[str, Any]:
    """The config sections `stage` reads (STAGE_CONFIG), as plain data."""
    config = self.config.to_dict()
    sections = STAGE_CONFIG[stage]
    return {k: v for k, v in config.items() if sections is None or k in sections}

  def changed_fields(self, stage: str) -> list[str]:
    """ "field: then -> now" for each config field `stage` reads that changed since it ran ([]
    where the manifest recorded no config for it)."""
    recorded = self.manifest.stage_config(stage)
    if recorded is None:
      return []
    now = json.loads(json.dumps(self.stage_config(stage), default=str))
    recorded = {k: v for k, v in recorded.items() if k != "workdir"}  # where, not what
    return _differences(recorded, {k: v for k, v in now.items() if k != "workdir"})

  def _redo_changed_stages(self, stages) -> None:
    """The first done stage whose config changed runs again, with every stage after it (they
    used its results); a run that leaves that stage out is refused, naming the fields."""
    for i, stage in enumerate(STAGES):
      changed = self.changed_fields(stage) if self.progress.done(stage) else []
      if not changed:
        continue
      fields = "; ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
      if stage not in stages:
        raise ValueError(
          f"the {stage} stage ran with another config ({fields}), so the stages after it "
          f"would mix the results of two configs: run it again (add {stage} to --stages or "
          "leave --stages out), or use another workdir."
        )
      _say(
        f"[{stage}] the config changed since it ran ({fields}): running it and the "
        "stages after it again"
      )
      for later in STAGES[i:]:
        self.progress.stages.pop(later, None)
      return

  def numbers_config(self) -> ml_collections.ConfigDict:
    """The config the scores came from: each section as the last stage reading it ran with
    (the current config for sections no finished stage reads)."""
    config = self.config.to_dict()
    for stage in ("data", "train", "maps", "criteria"):
      config.update(self.manifest.stage_config(stage) or {})
    return ml_collections.ConfigDict(config)

  def _cached(self, name: str, build: Callable[[], Any]) -> Any:
    if name not in self._cache:
      self._cache[name] = build()
    return self._cache[name]

  # ---------------------------------------------------------------------------------------
  # Data.

  @property
  def data_dir(self) -> str:
    return self.config.data.data_dir or os.path.join(self.workdir, "data")

  def dataset_name(self) -> str:
    d = self.config.data
    if d.name != "synthetic_cxr":
      return d.name  # real datasets are built beforehand by launch.prepare_data

    def build():
      return data_lib.build_synthetic(
        self.data_dir,
        image_size=d.image_size,
        num_train=d.num_train,
        num_val=d.num_val,
        num_test=d.num_test,
        seed=self.config.seed,
        difficulty=d.difficulty,
        positive_fraction=d.positive_fraction,
      )

    if jax.process_count() > 1:
      # One host writes the dataset; the others find it built (build_synthetic is idempotent).
      if jax.process_index() == 0:
        build()
      multihost_utils.sync_global_devices("synthetic dataset built")
    return build()

  def sources(self) -> dict[str, Any]:
    def build():
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

      return tfds.data_source(self.dataset_name(), data_dir=self.data_dir)

    return self._cached("sources", build)

  def stage_data(self) -> None:
    sources = self.sources()
    sizes = {split: len(source) for split, source in sources.items()}
    logging.info("dataset %s: %s", self.config.data.name, sizes)

  def inputs(self, image_set: ImageSet, style: str) -> np.ndarray:
    """The set's images preprocessed for a model: float32 [N,H,W,C]."""
    return self._cached(
      f"inputs_{image_set.name}_{style}",
      lambda: np.asarray(
        data_lib.preprocess(image_set.raw, style=style, channels=self.config.data.channels),
        np.float32,
      ),
    )

  def image_set(self, name: str) -> ImageSet:
    """The positive test images of a set: all of them for utility, a seeded subset for SSIM;
    the validation set: positive validation images (CheXlocalize's threshold tuning)."""

    def build():
      split = "validation" if name == SetName.VALIDATION else "test"
      test = self.sources()[split]
      labels = np.array([int(test[i]["label"]) for i in range(len(test))])
      positives = np.flatnonzero(labels == 1)
      if len(positives) < 2:
        raise ValueError(f"the {split} split has {len(positives)} positive images; need >= 2")
      rng = np.random.default_rng(self.config.seed)
      count = {
        SetName.UTILITY: self.config.study.num_utility_images,
        SetName.EVAL: self.config.study.num_eval_images,
        SetName.VALIDATION: self.config.study.chexlocalize.validation_images,
      }[name]
      if count and count < len(positives):
        if name == SetName.UTILITY and self.config.protocol.utility_images == "first":
          positives = positives[:count]  # the authors' SIIM utility set: the first ones
        else:
          positives = np.sort(rng.choice(positives, size=count, replace=False))
      arrays = data_lib.load_arrays(test, positives)
      return ImageSet(
        name=name,
        ids=np.asarray([_text(i) for i in arrays["id"]]),
        indices=np.asarray(arrays["index"]),
        raw=np.asarray(arrays["image"]),
        masks=np.asarray(arrays["mask"])
        .astype(bool)
        .reshape(len(positives), *np.shape(arrays["image"])[1:3]),
        boxes=list(arrays["boxes"]),
      )

    return self._cached(f"set_{name}", build)

  def average_mask(self) -> np.ndarray:
    from saliency_jax.trust import criteria  # pylint: disable=g-import-not-at-top

    def build():
      train = self.sources()["train"]
      examples = (train[i] for i in range(len(train)))  # each decoded once
      masks = (np.asarray(ex["mask"]) for ex in examples if int(ex["label"]) == 1)
      return criteria.average_mask(masks)

    return self._cached("average_mask", build)

  # ---------------------------------------------------------------------------------------
  # Training.

  def classifiers(self) -> list[TrainedModel]:
    def build():
      sources = self.sources()
      result = []
      for spec in self.config.models:
        style = spec.get("style", self.config.data.style)
        if any(spec.get(k) for k in ("module", "keras_model", "weights")):
          result.append(self._plugin_classifier(spec, style))
          continue
        module = models.create(spec["arch"], num_classes=2, **spec.get("kwargs", {}))
        workdir = os.path.join(self.workdir, "models", spec["name"])
        trained = train_lib.train_classifier(
          module,
          sources["train"],
          sources["validation"],
          workdir=workdir,
          seed=spec["seed"],
          config=self._train_config(self.config.train, style),
          initial_variables=self._pretrained(spec, workdir),
        )
        logging.info("%s (%s): validation AUC %.4f", spec["name"], spec["arch"], trained.val_auc)
        result.append(
          TrainedModel(
            spec["name"], spec["arch"], module, trained.variables, float(trained.val_auc), style
          )
        )
      return result

    return self._cached("classifiers", build)

  def _plugin_classifier(self, spec, style: str) -> TrainedModel:
    """A `config.models` entry naming a module by import path, a Keras model or weights (see
    models.plugin): loaded, or trained first where it names no weights."""
    image_shape = self.inputs(self.image_set(SetName.EVAL), style).shape[1:]
    module, variables, extras = plugin.resolve(spec, image_shape)
    val_auc = float("nan")  # not trained here: no validation score of ours
    if variables is None:
      sources = self.sources()
      trained = train_lib.train_classifier(
        module,
        sources["train"],
        sources["validation"],
        workdir=os.path.join(self.workdir, "models", spec["name"]),
        seed=spec["seed"],
        config=self._train_config(self.config.train, style),
      )
      variables, val_auc = trained.variables, float(trained.val_auc)
    bound = plugin.from_flax(spec["name"], module, variables, image_shape, **extras)
    return TrainedModel(spec["name"], bound.arch, module, variables, val_auc, style, bound)

  def bound_model(self, clf: TrainedModel, image_shape) -> plugin.PluginModel:
    if clf.bound is None:
      clf.bound = plugin.from_flax(clf.name, clf.module, clf.variables, image_shape, arch=clf.arch)
    return clf.bound

  def _pretrained(self, spec, workdir: str):
    """ImageNet weights from `config.weights.<arch>` (Keras files), for a run not started yet;
    None: the model's own seeded initialization."""
    path = self.config.weights.get(spec["arch"], "")
    if self.config.protocol.init != "imagenet" or os.path.exists(
      os.path.join(workdir, "checkpoints")
    ):
      return None
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.weights.{spec['arch']} = {path!r} does not exist")
    return models.import_keras_weights(spec["arch"], path, seed=spec["seed"], num_classes=2)

  def localizers(self) -> list[TrainedModel]:
    """The localization baseline's replicates: U-Nets (`config.localization.arch` "unet") or
    RetinaNets ("retinanet", the paper's baseline for box datasets)."""

    def build():
      sources = self.sources()
      loc = self.config.localization
      if loc.arch not in LOCALIZATION_ARCHS:
        raise ValueError(
          f"config.localization.arch = {loc.arch!r}; expected one of {LOCALIZATION_ARCHS}."
        )
      module = models.create(loc.arch, **loc.get("kwargs", {}))
      result = []
      for i, seed in enumerate(loc.seeds):
        name = f"{Baseline.LOCALIZATION}{i + 1}"
        workdir = os.path.join(self.workdir, "models", name)
        config = self._train_config(loc.train, self.config.data.style)
        if loc.arch == "retinanet":
          trained = train_lib.train_detector(
            module,
            sources["train"],
            sources["validation"],
            workdir=workdir,
            seed=seed,
            config=config,
            initial_variables=self._detector_init(module, seed, workdir),
          )
          metrics = {k: trained.val_metrics[k] for k in ("val_map", "val_rsna_score")}
        else:
          trained = train_lib.train_segmenter(
            module,
            sources["train"],
            sources["validation"],
            workdir=workdir,
            seed=seed,
            config=config,
          )
          metrics = {"val_dice": trained.val_metrics["val_dice"]}
        result.append(
          TrainedModel(
            name,
            loc.arch,
            module,
            trained.variables,
            float(next(iter(metrics.values()))),
            self.config.data.style,
            val_metrics=metrics,
          )
        )
      return result

    return self._cached("localizers", build)

  def _detector_init(self, module, seed: int, workdir: str):
    """A RetinaNet init whose backbone holds `config.weights.resnet50` (Keras ResNet50 notop
    weights), for a run not started yet; None: the seeded initialization."""
    path = self.config.get("weights", {}).get("resnet50", "")
    if not path or os.path.exists(os.path.join(workdir, "checkpoints")):
      return None
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.weights.resnet50 = {path!r} does not exist")
    backbone = models.import_keras_weights("resnet50", path)
    size = self.config.data.image_size
    variables = models.init_variables(
      module, jax.random.key(seed), (size, size, self.config.data.channels)
    )
    for collection in ("params", "batch_stats"):
      variables[collection] = {**variables[collection], "backbone": backbone[collection]}
    return variables

  def _localization_output(self, loc: TrainedModel, shape) -> Any:
    """The map "method" of the localization baseline; one object per architecture and image
    size, so its compilation is shared by the replicates and both image sets."""

    def build():
      if loc.arch == "retinanet":
        return DetectionScoreMap(loc.module.anchors(*shape))
      return SegmentationOutput()

    return self._cached(f"localization_output_{loc.arch}_{tuple(shape)}", build)

  def _train_config(
    self, section: ml_collections.ConfigDict, style: str
  ) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(section.to_dict())
    config.style = style
    config.channels = self.config.data.channels
    return config

  def stage_train(self) -> None:
    from saliency_jax.trust import sanity_maps  # pylint: disable=g-import-not-at-top

    summary = {c.name: {"arch": c.arch, "val_auc": c.val_score} for c in self.classifiers()}
    summary.update({c.name: {"arch": c.arch, **c.val_metrics} for c in self.localizers()})
    summary.update(
      {
        c.name: {"arch": c.arch, "val_auc_permuted_labels": c.val_score}
        for c in sanity_maps.permuted_classifiers(self).values()
      }
    )
    os.makedirs(os.path.join(self.workdir, "models"), exist_ok=True)  # none trained here
    multihost.write_shared_json(
      os.path.join(self.workdir, "models", "summary.json"), summary, "models/summary.json"
    )
    for name, entry in summary.items():
      _say(f"  {name}: {entry}")

  # ---------------------------------------------------------------------------------------
  # Model states and maps.

  def state_names(self, name: str, blocks: Sequence[str]) -> list[tuple[str, str]]:
    """(set, state) of every map store of the classifier `name`, whose blocks (logits first)
    are `blocks` (none: only the trained model's maps)."""
    utility = name in self.config.study.utility_models
    if not blocks:
      result = [(SetName.EVAL, State.ORIGINAL)]
      if utility or self.agreement_set() == SetName.UTILITY:
        result.append((SetName.UTILITY, State.ORIGINAL))
      return result
    result = [(SetName.EVAL, state) for state in self.cascade_steps(blocks)]
    if name in self.config.study.independent_randomization:
      result += [(SetName.EVAL, independent_state(block)) for block in blocks]
    if utility:
      result += [(SetName.UTILITY, State.ORIGINAL), (SetName.UTILITY, State.UNTRAINED)]
    elif self.agreement_set() == SetName.UTILITY:
      result.append((SetName.UTILITY, State.ORIGINAL))
    return result

  def states(self, clf: TrainedModel, image_shape) -> list[tuple[str, str, Any]]:
    """(set, state, variables) for which this classifier's maps are needed."""
    blocks = self.bound_model(clf, image_shape).block_names
    variables = self.state_variables(clf, image_shape)
    return [
      (set_name, state, variables[state]) for set_name, state in self.state_names(clf.name, blocks)
    ]

  def state_variables(self, clf: TrainedModel, image_shape) -> dict[str, Any]:
    """{state: variables}: the trained model, every cascading step down to the stem, the
    fully randomized model (UNTRAINED) and, if configured, the independent states."""
    blocks = self.bound_model(clf, image_shape).block_names
    if not blocks:  # nothing to randomize (the report says so)
      return {State.ORIGINAL: clf.variables}
    key = jax.random.fold_in(jax.random.key(self.config.seed), _stable_hash(clf.name))
    sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    cascade = randomization.cascading_randomization(clf.module, clf.variables, key, sample, blocks)
    variables = {
      State.ORIGINAL: clf.variables,
      State.UNTRAINED: cascade[-1][1],
    }  # every block randomized
    variables.update({cascade_state(step): v for step, v in cascade[1:]})
    if clf.name in self.config.study.independent_randomization:
      variables.update(
        {
          independent_state(block): v
          for block, v in randomization.independent_randomization(
            clf.module, clf.variables, key, sample, blocks
          )
        }
      )
    return variables

  def cascade_steps(self, blocks: Sequence[str]) -> list[str]:
    """The cascade's states of a classifier with `blocks` (logits first): the trained model,
    then one block more randomized per step, stopping `protocol.cascade_keep` blocks above the
    bottom (the authors kept mixed0 and the stem of InceptionV3 trained)."""
    blocks = list(blocks)
    blocks = blocks[: max(len(blocks) - self.config.protocol.cascade_keep, 1)]
    return [State.ORIGINAL] + [cascade_state(b) for b in blocks]

  def agreement_set(self) -> str:
    """The image set of repeatability and reproducibility (the authors': the utility set)."""
    from saliency_jax.trust import evaluation  # pylint: disable=g-import-not-at-top

    return evaluation.agreement_set(self.config.protocol)

  def method_settings(self, name: str, style: str | None = None) -> dict[str, Any]:
    """A method's settings for models fed `style` (default: data.style): defaults, config
    overrides, protocol."""
    style = self.config.data.style if style is None else style
    settings = dict(attributions.METHODS[name].default_settings)
    overrides = self.config.methods.settings
    if name in overrides:
      settings.update(overrides[name].to_dict())
    if "max_grads_in_flight" in settings:
      settings["max_grads_in_flight"] = self.config.methods.max_grads_in_flight
    protocol = self.config.protocol
    if name in ("IG", "SIG"):
      settings["baseline"] = ig_baseline(protocol.ig_baseline, style, self.config.data.channels)
    if name == "XRAI":
      settings["region_scores"] = protocol.xrai_grayscale
    return settings

  def external_methods(self) -> list[str]:
    """Names of the methods whose maps come from `config.study.external_maps`."""
    directory = self.config.study.external_maps
    return sorted(external.discover(directory)) if directory else []

  def method_names(self) -> list[str]:
    """Every method the criteria score: ours (config.methods.names), then external ones."""
    return list(self.config.methods.names) + [
      m for m in self.external_methods() if m not in self.config.methods.names
    ]

  def store_path(self, set_name: str, model: str, state: str, method: str) -> str:
    return map_reader.store_path(self.workdir, set_name, model, state, method)

  def targets(self, clf: TrainedModel, image_set: ImageSet, variables=None) -> np.ndarray:
    """The class each map explains: the prediction of the model state `variables` (default:
    the trained model's), or the label (study.target = "label")."""
    if self.config.study.target == "label":
      return np.ones(len(image_set.ids), np.int32)  # the sets hold positive images only
    images = self.inputs(image_set, clf.style)
    bound = self.bound_model(clf, images.shape[1:])
    fns = bound.functions() if variables is None else bound.bind(variables)
    logits = jax.jit(lambda f, x: f.logits_fn(x))
    preds = [
      np.asarray(jnp.argmax(logits(fns, images[i : i + 64]), -1)) for i in range(0, len(images), 64)
    ]
    return np.concatenate(preds).astype(np.int32)

  def _generate(self, path, method, model_fns, image_set, style, targets, settings, key, variables):
    """Fills one store; a store of another model (weights), images or settings is replaced."""
    study = self.config.study
    inputs = maps_lib.MapInputs(
      self.inputs(image_set, style), targets, image_set.indices, image_set.ids
    )
    plan = maps_lib.MapPlan(
      chunk_size=study.chunk_size,
      dtype=study.map_dtype,
      progress=False,
      prepared_dir=os.path.join(self.workdir, "maps", image_set.name, "prepared"),
      metadata={"model": _variables_digest(variables)},
      replace=True,
    )
    return maps_lib.generate_maps(
      path, method, model_fns, inputs, key=key, settings=settings, plan=plan
    )

  def stage_maps(self) -> None:
    checks.check_config(self.config.study)  # before any map, not after the study's
    key = jax.random.key(self.config.seed)
    custom_methods.register_from_config(self.config.methods.get("custom"))
    names = list(self.config.methods.names)
    unknown = [n for n in names if n not in attributions.METHODS]
    if unknown:
      raise ValueError(f"unknown methods {unknown}; known: {sorted(attributions.METHODS)}")
    # protocol.randomized_target: "recomputed" (the authors) explains each randomized state's
    # own prediction; "trained" keeps the trained model's class at every step of a curve.
    recomputed = self.config.protocol.randomized_target == "recomputed"
    for clf in self.classifiers():
      targets = {}
      image_shape = self.inputs(self.image_set(SetName.EVAL), clf.style).shape[1:]
      states = self.states(clf, image_shape)
      bound = self.bound_model(clf, image_shape)
      lacking = dict(self.skipped_methods(bound))
      with tqdm.tqdm(
        total=len(states) * len(names),
        desc=f"maps {clf.name}",
        unit="store",
        disable=jax.process_index() != 0,
      ) as bar:
        for set_name, state, variables in states:
          image_set = self.image_set(set_name)
          target_key = (set_name, state) if recomputed else set_name
          if target_key not in targets:
            targets[target_key] = self.targets(clf, image_set, variables if recomputed else None)
          fns = bound.bind(variables)
          for name in names:
            bar.update(name in lacking)
            if name in lacking:
              continue
            bar.set_postfix_str(f"{set_name} {state} {name}")
            self._generate(
              self.store_path(set_name, clf.name, state, name),
              attributions.METHODS[name],
              fns,
              image_set,
              clf.style,
              targets[target_key],
              self.method_settings(name, clf.style),
              key,
              variables,
            )
            bar.update()
    for loc in self.localizers():
      fns = models.ModelFunctions(lambda x, loc=loc: loc.module.apply(loc.variables, x))
      for set_name in (SetName.UTILITY, SetName.EVAL):
        image_set = self.image_set(set_name)
        path = self.store_path(set_name, loc.name, State.ORIGINAL, Baseline.LOCALIZATION)
        self._generate(
          path,
          self._localization_output(loc, image_set.raw.shape[1:3]),
          fns,
          image_set,
          loc.style,
          np.zeros(len(image_set.ids), np.int32),
          {},
          key,
          loc.variables,
        )
    from saliency_jax.trust import sanity_maps  # pylint: disable=g-import-not-at-top

    sanity_maps.generate_maps(self, key)
    if self.config.study.external_maps and multihost.is_writer():
      found = external.import_maps(
        self.config.study.external_maps,
        {n: self.image_set(n) for n in (SetName.UTILITY, SetName.EVAL)},
        self.store_path,
        self.config.study.chunk_size,
      )
      logging.info("imported external maps of %s", found)
    self._check_maps(key)
    if jax.process_index() == 0:
      self.write_run_files()

  def _image_sets(self) -> list[str]:
    """The image sets of the run: utility, eval, and validation for CheXlocalize's tuning."""
    sets = [SetName.UTILITY, SetName.EVAL]
    return sets + (
      [SetName.VALIDATION] if checks.enabled(self.config.study, "chexlocalize") else []
    )

  def _check_maps(self, key) -> None:
    """The maps the checks need besides the criteria's: for CheXlocalize's tuned thresholds,
    the validation images' maps of the utility models and localization networks; for the
    robustness grid, each grayscale variant of the maps its verdicts read (eval set: trained
    and last cascading step; utility set: trained), stored as `<method>@<variant>`."""
    s = self.config.study
    for clf in self.classifiers():
      image_shape = self.inputs(self.image_set(SetName.EVAL), clf.style).shape[1:]
      bound = self.bound_model(clf, image_shape)
      lacking = dict(self.skipped_methods(bound))
      names = [n for n in self.config.methods.names if n not in lacking]
      jobs = []  # (set, state, variables, store name, method, settings)
      if checks.enabled(s, "chexlocalize") and clf.name in s.utility_models:
        jobs += [
          (
            SetName.VALIDATION,
            State.ORIGINAL,
            clf.variables,
            n,
            n,
            self.method_settings(n, clf.style),
          )
          for n in names
        ]
      if checks.enabled(s, "robustness"):
        states = self.states(clf, image_shape)
        needed = [st for st in states if st[:2] == (SetName.EVAL, State.ORIGINAL)]
        cascade = [
          st for st in states if st[0] == SetName.EVAL and st[1].startswith(CASCADE_PREFIX)
        ]
        needed += cascade[-1:]  # none for a model that cannot be randomized
        needed += [st for st in states if st[:2] == (SetName.UTILITY, State.ORIGINAL)]
        for grayscale in s.robustness.grayscale:
          overrides = robustness.GRAYSCALE[grayscale]
          if not overrides:
            continue
          jobs += [
            (
              set_name,
              state,
              variables,
              robustness.variant_method(n, grayscale),
              n,
              {**self.method_settings(n, clf.style), **overrides},
            )
            for set_name, state, variables in needed
            for n in names
          ]
      targets = {}
      recomputed = self.config.protocol.randomized_target == "recomputed"
      for set_name, state, variables, store_name, name, settings in tqdm.tqdm(
        jobs,
        desc=f"check maps {clf.name}",
        unit="store",
        disable=not jobs or jax.process_index() != 0,
      ):
        image_set = self.image_set(set_name)
        target_key = (set_name, state) if recomputed else set_name
        if target_key not in targets:  # as the maps stage's (protocol.randomized_target)
          targets[target_key] = self.targets(clf, image_set, variables if recomputed else None)
        self._generate(
          self.store_path(set_name, clf.name, state, store_name),
          attributions.METHODS[name],
          bound.bind(variables),
          image_set,
          clf.style,
          targets[target_key],
          settings,
          key,
          variables,
        )
    if checks.enabled(s, "chexlocalize"):
      image_set = self.image_set(SetName.VALIDATION)
      for loc in self.localizers():
        fns = models.ModelFunctions(lambda x, loc=loc: loc.module.apply(loc.variables, x))
        self._generate(
          self.store_path(SetName.VALIDATION, loc.name, State.ORIGINAL, Baseline.LOCALIZATION),
          self._localization_output(loc, image_set.raw.shape[1:3]),
          fns,
          image_set,
          loc.style,
          np.zeros(len(image_set.ids), np.int32),
          {},
          key,
          loc.variables,
        )

  def skipped_methods(self, bound: plugin.PluginModel) -> list[tuple[str, str]]:
    """[(method, why)] of the configured methods this model cannot give."""
    out = []
    for name in self.config.methods.names:
      needs = plugin.METHOD_NEEDS.get(name, ()) + custom_methods.NEEDS.get(name, ())
      missing = [part for part in needs if part in bound.lacks]
      if missing:
        out.append((name, bound.lacks[missing[0]]))
    return out

  def skipped(self) -> list[dict[str, str]]:
    """What was not evaluated and why: methods and criteria per model (for the report)."""
    out = []
    for clf in self.classifiers():
      bound = self.bound_model(clf, self.inputs(self.image_set(SetName.EVAL), clf.style).shape[1:])
      out += [dict(model=clf.name, what=m, why=why) for m, why in self.skipped_methods(bound)]
      out += [
        dict(model=clf.name, what=what, why=why)
        for what, why in bound.skipped()
        if what not in plugin.METHOD_NEEDS
      ]
    return out

  def write_run_files(self) -> None:
    """Writes what scoring needs besides the maps: each set's ground truth, the average mask
    and the run manifest (models, image ids, methods, which models serve which criterion)."""
    for set_name in self._image_sets():
      s = self.image_set(set_name)
      map_reader.write_ground_truth(self.workdir, set_name, s.ids, s.raw, s.masks, s.boxes)
    map_reader.write_average_mask(self.workdir, self.average_mask())
    image_shape = self.inputs(self.image_set(SetName.EVAL), self.config.data.style).shape[1:]
    models_ = [
      ModelEntry(c.name, c.arch, tuple(self.bound_model(c, image_shape).block_names), CLASSIFIER)
      for c in self.classifiers()
    ]
    models_ += [
      ModelEntry(c.name, c.arch, tuple(getattr(c.module, "block_names", ())), LOCALIZER)
      for c in self.localizers()
    ]
    self.manifest.record_run(
      models=models_,
      image_ids={n: list(self.image_set(n).ids) for n in self._image_sets()},
      methods=self.method_names(),
      computed_methods=list(self.config.methods.names),
      utility_models=list(self.config.study.utility_models),
      independent_models=list(self.config.study.independent_randomization),
      skipped=self.skipped(),
      cascade_keep=self.config.protocol.cascade_keep,
    )
    self.manifest.save()

  def reader(self) -> map_reader.MapReader:
    if not self.manifest.has_run:
      self.write_run_files()  # a workdir whose maps stage finished before manifests existed
    return map_reader.MapReader(
      self.workdir,
      self.manifest.computed_methods,
      skipped=[(s["model"], s["what"]) for s in self.manifest.skipped],
      minmax=self.config.protocol.minmax_maps,
    )

  # ---------------------------------------------------------------------------------------
  # Criteria and report: they read the manifest, the maps and the records, not this object.

  def stage_criteria(self) -> None:
    from saliency_jax.trust import evaluation  # pylint: disable=g-import-not-at-top

    reader = self.reader()
    evaluation.evaluate(
      self.manifest,
      reader,
      self.config.study,
      seed=self.config.seed,
      workdir=self.workdir,
      protocol=self.config.protocol,
      sanity_config=self.config.get("sanity"),
    )

  def stage_report(self) -> None:
    from saliency_jax.trust import report  # pylint: disable=g-import-not-at-top

    reader = self.reader()
    report.write_report(self.manifest, reader, self.numbers_config(), self.workdir)


def _differences(then: Any, now: Any, prefix: str = "") -> list[str]:
  """ "path: then -> now" for every leaf that differs between two JSON-like trees."""
  if isinstance(then, dict) and isinstance(now, dict):
    out = []
    for key in sorted(set(then) | set(now)):
      out += _differences(then.get(key), now.get(key), f"{prefix}{key}.")
    return out
  return [] if then == now else [f"{prefix[:-1]}: {then} -> {now}"]


def _say(text: str) -> None:
  """Prints on host 0 only: one copy of every line in a multi-host run."""
  if jax.process_index() == 0:
    print(text)


def _variables_digest(variables: Any) -> str:
  """A digest of a model's variables, kept with its maps: other weights, other maps."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    array = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape}".encode())
    digest.update(
      np.ascontiguousarray(array).data if array.dtype != object else repr(leaf).encode()
    )
  return digest.hexdigest()[:16]


def ig_baseline(choice: str, style: str, channels: int):
  """IG's baseline: -1 (the authors', black for Inception scaling) or "black": a black pixel
  in the model's input space, per channel (ImageNet scaling: -mean / std)."""
  if choice == "minus_one":
    return -1.0
  if choice != "black":
    raise ValueError(f"protocol.ig_baseline must be 'minus_one' or 'black', got {choice!r}")
  black = data_lib.preprocess(np.zeros((1, 1, 1), np.uint8), style=style, channels=channels)
  values = [float(v) for v in np.asarray(black).reshape(-1)]
  return values[0] if len(set(values)) == 1 else tuple(values)


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _stable_hash(text: str) -> int:
  """A hash of a model name that is the same in every process (unlike hash())."""
  return zlib.crc32(text.encode()) & 0x7FFFFFFF
