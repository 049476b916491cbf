"""The study, stage by stage: data -> train -> maps -> criteria -> report.

Every stage writes under the run's workdir and resumes: the dataset is built once, training
resumes from its last checkpoint, map stores keep their finished chunks, and a stage marked
done in `progress.json` is skipped on a rerun. Layout of the workdir:

  data/                          the TFDS dataset (synthetic runs build it here)
  models/<name>/                 checkpoints, metrics.jsonl of each classifier and U-Net
  maps/<set>/<model>/<state>/<method>/   map stores (set: "utility" or "eval")
  maps/<set>/prepared/           model-independent per-image data (XRAI segments)
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
from typing import Any, Callable, Dict, List, Optional, Tuple

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

from saliency_jax.trust import external
from saliency_jax.trust.names import CASCADE_PREFIX
from saliency_jax.trust.names import EVAL_SET
from saliency_jax.trust.names import INDEPENDENT_PREFIX
from saliency_jax.trust.names import LOCALIZATION_METHOD
from saliency_jax.trust.names import ORIGINAL
from saliency_jax.trust.names import UNTRAINED
from saliency_jax.trust.names import UTILITY_SET

STAGES = ("data", "train", "maps", "criteria", "report")
HOST0_STAGES = ("criteria", "report")  # single-writer stages of a multi-host run


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
  name = LOCALIZATION_METHOD
  prepare = None
  default_settings: Dict[str, Any] = {}

  def compute(self, model_fns, images, targets, *, indices, key, settings, prepared=None):
    del targets, indices, key, settings, prepared
    return jax.nn.sigmoid(model_fns.logits_fn(images)).astype(jnp.float32)


class Study:
  """The study of PAPER.md for one config, resumable under `workdir`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    os.makedirs(workdir, exist_ok=True)
    from saliency_jax.trust import sanity  # pylint: disable=g-import-not-at-top
    sanity.validate(config)
    self.progress = ProgressLog(os.path.join(workdir, "progress.json"))
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
        self.progress.record(stage, time.perf_counter() - began)
      print(f"[{stage}] done in {time.perf_counter() - began:.1f} s")
    return os.path.join(self.workdir, "report.html")

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
      count = (self.config.study.num_utility_images if name == UTILITY_SET
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
        module = models.create(spec["arch"], num_classes=2, **spec.get("kwargs", {}))
        style = spec.get("style", self.config.data.style)
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
        name = f"{LOCALIZATION_METHOD}{i + 1}"
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
    from saliency_jax.trust import sanity  # pylint: disable=g-import-not-at-top
    summary = {c.name: {"arch": c.arch, "val_auc": c.val_auc} for c in self.classifiers()}
    summary.update({c.name: {"arch": c.arch, "val_dice": c.val_auc} for c in self.localizers()})
    summary.update({c.name: {"arch": c.arch, "val_auc_permuted_labels": c.val_auc}
                    for c in sanity.permuted_classifiers(self).values()})
    with open(os.path.join(self.workdir, "models", "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    for name, entry in summary.items():
      print(f"  {name}: {entry}")

  # ---------------------------------------------------------------------------------------
  # Model states and maps.

  def states(self, clf: Classifier, image_shape) -> List[Tuple[str, str, Any]]:
    """(set, state, variables) for which this classifier's maps are needed."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), _stable_hash(clf.name))
    sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    cascade = randomization.cascading_randomization(clf.module, clf.variables, key, sample)
    result = [(EVAL_SET, f"{CASCADE_PREFIX}{step}" if step != ORIGINAL else ORIGINAL, variables)
              for step, variables in cascade]
    if clf.name in self.config.study.independent_randomization:
      for block, variables in randomization.independent_randomization(
          clf.module, clf.variables, key, sample):
        result.append((EVAL_SET, f"{INDEPENDENT_PREFIX}{block}", variables))
    if clf.name in self.config.study.utility_models:
      result.append((UTILITY_SET, ORIGINAL, clf.variables))
      result.append((UTILITY_SET, UNTRAINED, cascade[-1][1]))
    return result

  def cascade_steps(self, clf: Classifier) -> List[str]:
    return [ORIGINAL] + [f"{CASCADE_PREFIX}{block}" for block in clf.module.block_names]

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
    return os.path.join(self.workdir, "maps", set_name, model, state, method)

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
    fns = models.model_functions(clf.module, clf.variables)
    logits = jax.jit(lambda f, x: f.logits_fn(x))
    images = self.inputs(image_set, clf.style)
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
    names = list(self.config.methods.names)
    unknown = [n for n in names if n not in attributions.METHODS]
    if unknown:
      raise ValueError(f"unknown methods {unknown}; known: {sorted(attributions.METHODS)}")
    for clf in self.classifiers():
      targets = {}
      image_shape = self.inputs(self.image_set(EVAL_SET), clf.style).shape[1:]
      states = self.states(clf, image_shape)
      with tqdm.tqdm(total=len(states) * len(names), desc=f"maps {clf.name}",
                     unit="store") as bar:
        for set_name, state, variables in states:
          image_set = self.image_set(set_name)
          if set_name not in targets:
            targets[set_name] = self.targets(clf, image_set)
          fns = models.model_functions(clf.module, variables)
          for name in names:
            bar.set_postfix_str(f"{set_name} {state} {name}")
            self._generate(self.store_path(set_name, clf.name, state, name),
                           attributions.METHODS[name], fns, image_set, clf.style,
                           targets[set_name], self.method_settings(name), key)
            bar.update()
    for loc in self.localizers():
      fns = models.ModelFunctions(
          lambda x, loc=loc: loc.module.apply(loc.variables, x))
      for set_name in (UTILITY_SET, EVAL_SET):
        image_set = self.image_set(set_name)
        self._generate(self.store_path(set_name, loc.name, ORIGINAL, LOCALIZATION_METHOD),
                       SegmentationOutput(), fns, image_set, loc.style,
                       np.zeros(len(image_set.ids), np.int32), {}, key)
    from saliency_jax.trust import sanity  # pylint: disable=g-import-not-at-top
    sanity.generate_maps(self, key)
    if self.config.study.external_maps:
      found = external.import_maps(
          self.config.study.external_maps,
          {n: self.image_set(n) for n in (UTILITY_SET, EVAL_SET)}, self.store_path,
          self.config.study.chunk_size)
      logging.info("imported external maps of %s", found)

  def read_maps(self, set_name: str, model: str, state: str,
                method: str) -> Optional[np.ndarray]:
    """The maps of one store as float32 [N,H,W]; None where the store does not exist (e.g. an
    external method that did not provide this state)."""
    path = self.store_path(set_name, model, state, method)
    if not os.path.exists(path):
      if method in self.config.methods.names or method == LOCALIZATION_METHOD:
        raise FileNotFoundError(f"no maps at {path}: run the maps stage first")
      return None
    store = maps_lib.MapStore.open(path)
    if not store.complete:
      raise RuntimeError(f"the map store {path} is incomplete: rerun the maps stage "
                         "(launch.run_all --redo=maps)")
    return store.read_all()

  # ---------------------------------------------------------------------------------------
  # Criteria and report.

  def stage_criteria(self) -> None:
    from saliency_jax.trust import evaluation  # pylint: disable=g-import-not-at-top
    evaluation.evaluate(self)

  def stage_report(self) -> None:
    from saliency_jax.trust import report  # pylint: disable=g-import-not-at-top
    report.write_report(self)


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _stable_hash(text: str) -> int:
  """A hash of a model name that is the same in every process (unlike hash())."""
  return zlib.crc32(text.encode()) & 0x7FFFFFFF
