"""The study, stage by stage: data -> train -> maps -> criteria -> report.

Every stage writes under the run's workdir and resumes: the dataset is built once, training
resumes from its last checkpoint, map stores keep their finished chunks, and a stage marked
done in `progress.json` is skipped on a rerun. Layout of the workdir:

  data/                          the TFDS dataset (synthetic runs build it here)
  models/<name>/                 checkpoints, metrics.jsonl of each classifier and U-Net
  maps/<set>/<model>/<state>/<method>/   map stores (set: "utility" or "eval")
  maps/<set>/prepared/           model-independent per-image data (XRAI segments)
  maps/<set>/ground_truth.npz, maps/average_mask.npy   what scoring needs of the dataset
  run_manifest.json              what the maps stage decided and each stage's config
  results.json, results.csv      one record per image x method x criterion x step
  summary.json                   the scorecard and the curves the report draws
  report.md, report.html, figures/
  progress.json                  stages done and their wall time
"""
import dataclasses
import json
import os
import time
import zlib
from typing import Any, Callable, Dict, List, Tuple

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from saliency_jax import attributions
from saliency_jax import data as data_lib
from saliency_jax import maps as maps_lib
from saliency_jax import models
from saliency_jax import randomization
from saliency_jax import train as train_lib
from saliency_jax.attributions import custom as custom_methods
from saliency_jax.models import plugin

from saliency_jax.trust import external
from saliency_jax.trust import map_reader
from saliency_jax.trust.manifest import CLASSIFIER
from saliency_jax.trust.manifest import LOCALIZER
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.manifest import ModelEntry
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import cascade_state
from saliency_jax.trust.names import independent_state
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State

STAGES = ("data", "train", "maps", "criteria", "report")
HOST0_STAGES = ("criteria", "report")  # single-writer stages of a multi-host run
# The config sections each stage reads, recorded in the manifest when the stage finishes
# (None: the whole config).
STAGE_CONFIG = {
    "data": ("seed", "data"),
    "train": ("seed", "data", "models", "train", "localization", "weights", "sanity"),
    "maps": ("seed", "data", "models", "localization", "methods", "study", "sanity"),
    "criteria": ("seed", "study", "sanity"),
    "report": None,
}


@dataclasses.dataclass
class ImageSet:
  """Images held in memory for map generation, with their ground truth."""
  name: str
  ids: np.ndarray       # str [N]
  indices: np.ndarray   # int [N], dataset indices in the test split (noise keys fold them)
  raw: np.ndarray       # uint8/uint16 [N,H,W,1], as stored
  masks: np.ndarray     # bool [N,H,W]
  boxes: List[np.ndarray]


@dataclasses.dataclass
class Classifier:
  name: str
  arch: str
  module: Any
  variables: Any
  val_auc: float
  style: str  # the pixel scaling this model was trained with (see data.preprocess)
  # How the study uses it (blocks, functions, what it lacks); None: a package model, bound
  # when first needed (`Study.plugin`).
  bound: plugin.PluginModel | None = None


class ProgressLog:
  """Which stages are done and how long they took, in <workdir>/progress.json."""

  def __init__(self, path: str):
    self.path = path
    self.stages: Dict[str, Dict[str, Any]] = {}
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
  default_settings: Dict[str, Any] = {}

  def compute(self, model_fns, images, targets, *, indices, key, settings, prepared=None):
    del targets, indices, key, settings, prepared
    return jax.nn.sigmoid(model_fns.logits_fn(images)).astype(jnp.float32)


class Study:
  """The study for one config, resumable under `workdir`: runs the stages, nothing else.

  Scoring and reporting read what the maps stage wrote (the manifest, the map stores, the
  ground truth); they never see this object.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    os.makedirs(workdir, exist_ok=True)
    from saliency_jax.trust import sanity  # pylint: disable=g-import-not-at-top
    sanity.validate(config)
    self.progress = ProgressLog(os.path.join(workdir, "progress.json"))
    self.manifest = Manifest.load(workdir)
    self._cache: Dict[str, Any] = {}

  # ---------------------------------------------------------------------------------------
  # Driving the stages.

  def run(self, stages=STAGES) -> str:
    """Runs the stages not done yet; returns the path of the report."""
    for stage in stages:
      if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
      if self.progress.done(stage):
        print(f"[{stage}] done already: skipped")
        continue
      if stage in HOST0_STAGES and jax.process_index() != 0:
        continue  # one host scores and reports; the others' work ended with the maps
      print(f"[{stage}] ...")
      began = time.perf_counter()
      getattr(self, f"stage_{stage}")()
      if jax.process_index() == 0:
        self.manifest.record_stage(stage, self.stage_config(stage))
        self.manifest.save()
        self.progress.record(stage, time.perf_counter() - began)
      print(f"[{stage}] done in {time.perf_counter() - began:.1f} s")
    return os.path.join(self.workdir, "report.html")

  def stage_config(self, stage: str) -> Dict[str, Any]:
    """The config sections `stage` reads (STAGE_CONFIG), as plain data."""
    config = self.config.to_dict()
    sections = STAGE_CONFIG[stage]
    return {k: v for k, v in config.items() if sections is None or k in sections}

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
          self.data_dir, image_size=d.image_size, num_train=d.num_train, num_val=d.num_val,
          num_test=d.num_test, seed=self.config.seed, difficulty=d.difficulty,
          positive_fraction=d.positive_fraction)
    if jax.process_count() > 1:
      # One host writes the dataset; the others find it built (build_synthetic is idempotent).
      if jax.process_index() == 0:
        build()
      multihost_utils.sync_global_devices("synthetic dataset built")
    return build()

  def sources(self) -> Dict[str, Any]:
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
    return self._cached(f"inputs_{image_set.name}_{style}", lambda: np.asarray(
        data_lib.preprocess(image_set.raw, style=style, channels=self.config.data.channels),
        np.float32))

  def image_set(self, name: str) -> ImageSet:
    """The positive test images of a set: all of them for utility, a seeded subset for SSIM."""
    def build():
      test = self.sources()["test"]
      labels = np.array([int(test[i]["label"]) for i in range(len(test))])
      positives = np.flatnonzero(labels == 1)
      if len(positives) < 2:
        raise ValueError(f"the test split has {len(positives)} positive images; need >= 2")
      rng = np.random.default_rng(self.config.seed)
      count = (self.config.study.num_utility_images if name == SetName.UTILITY
               else self.config.study.num_eval_images)
      if count and count < len(positives):
        positives = np.sort(rng.choice(positives, size=count, replace=False))
      arrays = data_lib.load_arrays(test, positives)
      return ImageSet(name=name, ids=np.asarray([_text(i) for i in arrays["id"]]),
                      indices=np.asarray(arrays["index"]), raw=np.asarray(arrays["image"]),
                      masks=np.asarray(arrays["mask"]).astype(bool).reshape(
                          len(positives), *np.shape(arrays["image"])[1:3]),
                      boxes=list(arrays["boxes"]))
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

  def classifiers(self) -> List[Classifier]:
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
            module, sources["train"], sources["validation"], workdir=workdir,
            seed=spec["seed"], config=self._train_config(self.config.train, style),
            initial_variables=self._pretrained(spec, workdir))
        logging.info("%s (%s): validation AUC %.4f", spec["name"], spec["arch"],
                     trained.val_auc)
        result.append(Classifier(spec["name"], spec["arch"], module, trained.variables,
                                 float(trained.val_auc), style))
      return result
    return self._cached("classifiers", build)

  def _plugin_classifier(self, spec, style: str) -> Classifier:
    """A `config.models` entry naming a module by import path, a Keras model or weights (see
    models.plugin): loaded, or trained first where it names no weights."""
    image_shape = self.inputs(self.image_set(SetName.EVAL), style).shape[1:]
    module, variables, extras = plugin.resolve(spec, image_shape)
    val_auc = float("nan")  # not trained here: no validation score of ours
    if variables is None:
      sources = self.sources()
      trained = train_lib.train_classifier(
          module, sources["train"], sources["validation"],
          workdir=os.path.join(self.workdir, "models", spec["name"]), seed=spec["seed"],
          config=self._train_config(self.config.train, style))
      variables, val_auc = trained.variables, float(trained.val_auc)
    bound = plugin.from_flax(spec["name"], module, variables, image_shape, **extras)
    return Classifier(spec["name"], bound.arch, module, variables, val_auc, style, bound)

  def bound_model(self, clf: Classifier, image_shape) -> plugin.PluginModel:
    if clf.bound is None:
      clf.bound = plugin.from_flax(clf.name, clf.module, clf.variables, image_shape,
                                    arch=clf.arch)
    return clf.bound

  def _pretrained(self, spec, workdir: str):
    """ImageNet weights from `config.weights.<arch>` (Keras files), for a run not started yet;
    None: the model's own seeded initialization."""
    path = self.config.get("weights", {}).get(spec["arch"], "")
    if not path or os.path.exists(os.path.join(workdir, "checkpoints")):
      return None
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.weights.{spec['arch']} = {path!r} does not exist")
    return models.import_keras_weights(spec["arch"], path, seed=spec["seed"], num_classes=2)

  def localizers(self) -> List[Classifier]:
    def build():
      sources = self.sources()
      loc = self.config.localization
      module = models.create(loc.arch, **loc.get("kwargs", {}))
      result = []
      for i, seed in enumerate(loc.seeds):
        name = f"{Baseline.LOCALIZATION}{i + 1}"
        trained = train_lib.train_segmenter(
            module, sources["train"], sources["validation"],
            workdir=os.path.join(self.workdir, "models", name), seed=seed,
            config=self._train_config(loc.train, self.config.data.style))
        result.append(Classifier(name, loc.arch, module, trained.variables,
                                 float(trained.val_metrics["val_dice"]),
                                 self.config.data.style))
      return result
    return self._cached("localizers", build)

  def _train_config(self, section: ml_collections.ConfigDict,
                    style: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(section.to_dict())
    config.style = style
    config.channels = self.config.data.channels
    return config

  def stage_train(self) -> None:
    from saliency_jax.trust import sanity_maps  # pylint: disable=g-import-not-at-top
    summary = {c.name: {"arch": c.arch, "val_auc": c.val_auc} for c in self.classifiers()}
    summary.update({c.name: {"arch": c.arch, "val_dice": c.val_auc} for c in self.localizers()})
    summary.update({c.name: {"arch": c.arch, "val_auc_permuted_labels": c.val_auc}
                    for c in sanity_maps.permuted_classifiers(self).values()})
    with open(os.path.join(self.workdir, "models", "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    for name, entry in summary.items():
      print(f"  {name}: {entry}")

  # ---------------------------------------------------------------------------------------
  # Model states and maps.

  def states(self, clf: Classifier, image_shape) -> List[Tuple[str, str, Any]]:
    """(set, state, variables) for which this classifier's maps are needed."""
    blocks = self.bound_model(clf, image_shape).block_names
    if not blocks:  # nothing to randomize (the report says so)
      result = [(SetName.EVAL, State.ORIGINAL, clf.variables)]
      if clf.name in self.config.study.utility_models:
        result.append((SetName.UTILITY, State.ORIGINAL, clf.variables))
      return result
    key = jax.random.fold_in(jax.random.key(self.config.seed), _stable_hash(clf.name))
    sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    cascade = randomization.cascading_randomization(clf.module, clf.variables, key, sample,
                                                    blocks)
    result = [(SetName.EVAL, cascade_state(step) if step != State.ORIGINAL else State.ORIGINAL,
               variables) for step, variables in cascade]
    if clf.name in self.config.study.independent_randomization:
      for block, variables in randomization.independent_randomization(
          clf.module, clf.variables, key, sample, blocks):
        result.append((SetName.EVAL, independent_state(block), variables))
    if clf.name in self.config.study.utility_models:
      result.append((SetName.UTILITY, State.ORIGINAL, clf.variables))
      result.append((SetName.UTILITY, State.UNTRAINED, cascade[-1][1]))
    return result

  def method_settings(self, name: str) -> Dict[str, Any]:
    settings = dict(attributions.METHODS[name].default_settings)
    overrides = self.config.methods.settings
    if name in overrides:
      settings.update(overrides[name].to_dict())
    if "max_grads_in_flight" in settings:
      settings["max_grads_in_flight"] = self.config.methods.max_grads_in_flight
    return settings

  def external_methods(self) -> List[str]:
    """Names of the methods whose maps come from `config.study.external_maps`."""
    directory = self.config.study.external_maps
    return sorted(external.discover(directory)) if directory else []

  def method_names(self) -> List[str]:
    """Every method the criteria score: ours (config.methods.names), then external ones."""
    return list(self.config.methods.names) + [
        m for m in self.external_methods() if m not in self.config.methods.names]

  def store_path(self, set_name: str, model: str, state: str, method: str) -> str:
    return map_reader.store_path(self.workdir, set_name, model, state, method)

  def targets(self, clf: Classifier, image_set: ImageSet) -> np.ndarray:
    """The class each map explains: the trained model's prediction (the paper) or the label.

    Randomized states keep the trained model's targets, so every step of a curve explains
    the same output.
    """
    if self.config.study.target == "label":
      return np.ones(len(image_set.ids), np.int32)  # the sets hold positive images only
    if self.config.study.target != "predicted":
      raise ValueError(f"study.target must be 'predicted' or 'label', got "
                       f"{self.config.study.target!r}")
    images = self.inputs(image_set, clf.style)
    fns = self.bound_model(clf, images.shape[1:]).functions()
    logits = jax.jit(lambda f, x: f.logits_fn(x))
    preds = [np.asarray(jnp.argmax(logits(fns, images[i:i + 64]), -1))
             for i in range(0, len(images), 64)]
    return np.concatenate(preds).astype(np.int32)

  def _generate(self, path, method, model_fns, image_set, style, targets, settings, key):
    study = self.config.study
    return maps_lib.generate_maps(
        path, method, model_fns, self.inputs(image_set, style), targets, image_set.indices,
        image_set.ids, key=key, settings=settings, chunk_size=study.chunk_size,
        dtype=study.map_dtype,
        prepared_dir=os.path.join(self.workdir, "maps", image_set.name, "prepared"),
        progress=False)

  def stage_maps(self) -> None:
    key = jax.random.key(self.config.seed)
    custom_methods.register_from_config(self.config.methods.get("custom"))
    names = list(self.config.methods.names)
    unknown = [n for n in names if n not in attributions.METHODS]
    if unknown:
      raise ValueError(f"unknown methods {unknown}; known: {sorted(attributions.METHODS)}")
    for clf in self.classifiers():
      targets = {}
      image_shape = self.inputs(self.image_set(SetName.EVAL), clf.style).shape[1:]
      states = self.states(clf, image_shape)
      bound = self.bound_model(clf, image_shape)
      lacking = dict(self.skipped_methods(bound))
      with tqdm.tqdm(total=len(states) * len(names), desc=f"maps {clf.name}",
                     unit="store") as bar:
        for set_name, state, variables in states:
          image_set = self.image_set(set_name)
          if set_name not in targets:
            targets[set_name] = self.targets(clf, image_set)
          fns = bound.bind(variables)
          for name in names:
            bar.update(name in lacking)
            if name in lacking:
              continue
            bar.set_postfix_str(f"{set_name} {state} {name}")
            self._generate(self.store_path(set_name, clf.name, state, name),
                           attributions.METHODS[name], fns, image_set, clf.style,
                           targets[set_name], self.method_settings(name), key)
            bar.update()
    for loc in self.localizers():
      fns = models.ModelFunctions(
          lambda x, loc=loc: loc.module.apply(loc.variables, x))
      for set_name in (SetName.UTILITY, SetName.EVAL):
        image_set = self.image_set(set_name)
        self._generate(self.store_path(set_name, loc.name, State.ORIGINAL, Baseline.LOCALIZATION),
                       SegmentationOutput(), fns, image_set, loc.style,
                       np.zeros(len(image_set.ids), np.int32), {}, key)
    from saliency_jax.trust import sanity_maps  # pylint: disable=g-import-not-at-top
    sanity_maps.generate_maps(self, key)
    if self.config.study.external_maps:
      found = external.import_maps(
          self.config.study.external_maps,
          {n: self.image_set(n) for n in (SetName.UTILITY, SetName.EVAL)}, self.store_path,
          self.config.study.chunk_size)
      logging.info("imported external maps of %s", found)
    if jax.process_index() == 0:
      self.write_run_files()

  def skipped_methods(self, bound: plugin.PluginModel) -> List[Tuple[str, str]]:
    """[(method, why)] of the configured methods this model cannot give."""
    out = []
    for name in self.config.methods.names:
      needs = plugin.METHOD_NEEDS.get(name, ()) + custom_methods.NEEDS.get(name, ())
      missing = [part for part in needs if part in bound.lacks]
      if missing:
        out.append((name, bound.lacks[missing[0]]))
    return out

  def skipped(self) -> List[Dict[str, str]]:
    """What was not evaluated and why: methods and criteria per model (for the report)."""
    out = []
    for clf in self.classifiers():
      bound = self.bound_model(clf, self.inputs(self.image_set(SetName.EVAL), clf.style).shape[1:])
      out += [dict(model=clf.name, what=m, why=why) for m, why in self.skipped_methods(bound)]
      out += [dict(model=clf.name, what=what, why=why) for what, why in bound.skipped()
              if what not in plugin.METHOD_NEEDS]
    return out

  def write_run_files(self) -> None:
    """Writes what scoring needs besides the maps: each set's ground truth, the average mask
    and the run manifest (models, image ids, methods, which models serve which criterion)."""
    for set_name in (SetName.UTILITY, SetName.EVAL):
      s = self.image_set(set_name)
      map_reader.write_ground_truth(self.workdir, set_name, s.ids, s.raw, s.masks, s.boxes)
    map_reader.write_average_mask(self.workdir, self.average_mask())
    image_shape = self.inputs(self.image_set(SetName.EVAL), self.config.data.style).shape[1:]
    models_ = [ModelEntry(c.name, c.arch, tuple(self.bound_model(c, image_shape).block_names),
                          CLASSIFIER) for c in self.classifiers()]
    models_ += [ModelEntry(c.name, c.arch, tuple(getattr(c.module, "block_names", ())),
                           LOCALIZER) for c in self.localizers()]
    self.manifest.record_run(
        models=models_,
        image_ids={n: list(self.image_set(n).ids) for n in (SetName.UTILITY, SetName.EVAL)},
        methods=self.method_names(), computed_methods=list(self.config.methods.names),
        utility_models=list(self.config.study.utility_models),
        independent_models=list(self.config.study.independent_randomization),
        skipped=self.skipped())
    self.manifest.save()

  def reader(self) -> map_reader.MapReader:
    if not self.manifest.has_run:
      self.write_run_files()  # a workdir whose maps stage finished before manifests existed
    return map_reader.MapReader(self.workdir, self.manifest.computed_methods,
                                skipped=[(s["model"], s["what"]) for s in self.manifest.skipped])

  # ---------------------------------------------------------------------------------------
  # Criteria and report: they read the manifest, the maps and the records, not this object.

  def stage_criteria(self) -> None:
    from saliency_jax.trust import evaluation  # pylint: disable=g-import-not-at-top
    reader = self.reader()
    evaluation.evaluate(self.manifest, reader, self.config.study, seed=self.config.seed,
                        workdir=self.workdir, sanity_config=self.config.get("sanity"))

  def stage_report(self) -> None:
    from saliency_jax.trust import report  # pylint: disable=g-import-not-at-top
    reader = self.reader()
    report.write_report(self.manifest, reader, self.config, self.workdir)


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _stable_hash(text: str) -> int:
  """A hash of a model name that is the same in every process (unlike hash())."""
  return zlib.crc32(text.encode()) & 0x7FFFFFFF
