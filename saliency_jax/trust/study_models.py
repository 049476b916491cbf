"""The study's models: the classifiers (trained here, loaded by import path or file, or
ImageNet-initialized), the localization baseline's networks (U-Net or RetinaNet) and the data
randomization test's permuted-label classifiers; training resumes from each model's
checkpoints under `<workdir>/models/<name>/`."""

import dataclasses
import os
from typing import Any

from absl import logging
import jax
import ml_collections

from saliency_jax import models
from saliency_jax import train as train_lib
from saliency_jax.models import plugin
from saliency_jax.sanity import labels
from saliency_jax.trust import sanity
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.study_data import StudyData

LOCALIZATION_ARCHS = ("unet", "retinanet")  # config.localization.arch


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
  # when first needed (`bound_model`).
  bound: plugin.PluginModel | None = None
  val_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


def bound_model(model: TrainedModel, image_shape) -> plugin.PluginModel:
  """The model's blocks, functions and what it lacks, for images of `image_shape`."""
  if model.bound is None:
    model.bound = plugin.from_flax(
      model.name, model.module, model.variables, image_shape, arch=model.arch
    )
  return model.bound


def train_config(
  section: ml_collections.ConfigDict, style: str, channels: int
) -> ml_collections.ConfigDict:
  """A training section of the config with the pixel scaling and channels of the data."""
  config = ml_collections.ConfigDict(section.to_dict())
  config.style = style
  config.channels = channels
  return config


class StudyModels:
  """The models of one study config, each trained (or resumed) once, when first needed."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, data: StudyData):
    self.config = config
    self.workdir = workdir
    self.data = data
    self._classifiers: list[TrainedModel] | None = None
    self._localizers: list[TrainedModel] | None = None
    self._permuted: dict[str, TrainedModel] | None = None

  def classifiers(self) -> list[TrainedModel]:
    if self._classifiers is None:
      self._classifiers = self._load_classifiers()
    return self._classifiers

  def localizers(self) -> list[TrainedModel]:
    """The localization baseline's replicates: U-Nets (`config.localization.arch` "unet") or
    RetinaNets ("retinanet", the paper's baseline for box datasets)."""
    if self._localizers is None:
      self._localizers = self._load_localizers()
    return self._localizers

  def permuted_classifiers(self) -> dict[str, TrainedModel]:
    """{trained model name: its permuted-label twin}: the data randomization test's models."""
    if not sanity.enabled(self.config, "data_randomization"):
      return {}
    if self._permuted is None:
      self._permuted = self._load_permuted()
    return self._permuted

  def summary(self) -> dict[str, dict[str, Any]]:
    """{model: its architecture and validation metrics}, as models/summary.json holds them."""
    out = {c.name: {"arch": c.arch, "val_auc": c.val_score} for c in self.classifiers()}
    out.update({c.name: {"arch": c.arch, **c.val_metrics} for c in self.localizers()})
    out.update(
      {
        c.name: {"arch": c.arch, "val_auc_permuted_labels": c.val_score}
        for c in self.permuted_classifiers().values()
      }
    )
    return out

  def _train_config(self, section: ml_collections.ConfigDict, style: str):
    return train_config(section, style, self.config.data.channels)

  def _load_classifiers(self) -> list[TrainedModel]:
    sources = self.data.sources()
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

  def _plugin_classifier(self, spec, style: str) -> TrainedModel:
    """A `config.models` entry naming a module by import path, a Keras model or weights (see
    models.plugin): loaded, or trained first where it names no weights."""
    image_shape = self.data.image_shape(style)
    module, variables, extras = plugin.resolve(spec, image_shape)
    val_auc = float("nan")  # not trained here: no validation score of ours
    if variables is None:
      sources = self.data.sources()
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

  def _load_localizers(self) -> list[TrainedModel]:
    sources = self.data.sources()
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
      detector = loc.arch == "retinanet"
      train_fn = train_lib.train_detector if detector else train_lib.train_segmenter
      init = dict(initial_variables=self._detector_init(module, seed, workdir)) if detector else {}
      trained = train_fn(
        module,
        sources["train"],
        sources["validation"],
        workdir=workdir,
        seed=seed,
        config=self._train_config(loc.train, self.config.data.style),
        **init,
      )
      metric_names = ("val_map", "val_rsna_score") if detector else ("val_dice",)
      metrics = {k: trained.val_metrics[k] for k in metric_names}
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

  def _load_permuted(self) -> dict[str, TrainedModel]:
    section = self.config.sanity.data_randomization
    sources = self.data.sources()
    specs = {m["name"]: m for m in self.config.models}
    out = {}
    for name in section.models:
      spec = specs[name]
      module = models.create(spec["arch"], num_classes=2, **spec.get("kwargs", {}))
      style = spec.get("style", self.config.data.style)
      workdir = os.path.join(self.workdir, "models", name + sanity.PERMUTED_SUFFIX)
      # Validation labels are permuted too: model selection sees no real label.
      trained = train_lib.train_classifier(
        module,
        labels.PermutedLabels(sources["train"], section.label_seed),
        labels.PermutedLabels(sources["validation"], section.label_seed + 1),
        workdir=workdir,
        seed=spec["seed"],
        config=self._train_config(self.config.train, style),
        initial_variables=self._pretrained(spec, workdir),
      )
      out[name] = TrainedModel(
        name + sanity.PERMUTED_SUFFIX,
        spec["arch"],
        module,
        trained.variables,
        float(trained.val_auc),
        style,
      )
    return out
