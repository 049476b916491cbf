"""The study from Python: your model, your images, one call.

  from saliency_jax import api

  result = api.evaluate(
      models=[api.FlaxModel("M1", module, variables, gradcam_layer="layer4"),
              api.FunctionModel("M2", logits_fn)],          # prediction-only
      images=images,                 # float32 [N, H, W, C], as the models take them
      masks=masks,                   # bool [N, H, W] ground truth (or boxes=[[K, 4], ...])
      train_masks=train_masks,       # optional: the average-mask baseline's masks
      workdir="runs/mine")
  result.records                     # tidy records: criterion, metric, method, model, state,
                                     # image_id, value (also workdir/results.csv)
  result.report                      # workdir/report.html

Without `models` and `images` it runs the study of `config` (the dataset of `config.data`, the
models of `config.models`): what `python -m launch.run_all` does. With them, the given models are
scored on the given images by the same stages (maps, criteria, report); every image given is
positive unless `labels` says otherwise. What the given models and images cannot support is not
evaluated, and the report's "Not evaluated" section says what and why: a model known only by
its `logits_fn` has no blocks to randomize and no Grad-CAM layer; without a training split there
is no localization network to train, so repeatability and reproducibility have no baseline;
without `train_masks` the average-mask baseline is the mean of the given images' own masks;
CheXlocalize's metrics need validation images to tune their thresholds on.
"""

from collections.abc import Callable, Sequence
import dataclasses
import json
import os
from typing import Any

import ml_collections
import numpy as np

from saliency_jax.models import plugin
from saliency_jax.trust import study as study_lib
from saliency_jax.trust import study_data
from saliency_jax.trust import study_models
from saliency_jax.trust.names import SetName


@dataclasses.dataclass
class FlaxModel:
  """A Flax module and its variables; see `saliency_jax.models.plugin` for the protocol
  (`features`/`head` or `gradcam_layer`, an `activation` field, `block_names` or `blocks`)."""

  name: str
  module: Any
  variables: Any
  gradcam_layer: str | None = None
  blocks: Sequence[str] | None = None
  arch: str | None = None  # replicates share it (repeatability); default: the class name


@dataclasses.dataclass
class FunctionModel:
  """A classifier known by its functions only (any JAX model)."""

  name: str
  logits_fn: Callable
  features_fn: Callable | None = None
  head_fn: Callable | None = None
  guided_logits_fn: Callable | None = None
  arch: str | None = None


@dataclasses.dataclass
class Result:
  records: list[dict[str, Any]]  # [] when the criteria stage did not run
  summary: dict[str, Any] | None
  report: str  # the report's path (absent when the report stage did not run)
  skipped: list[dict[str, str]]  # what was not evaluated, and why
  workdir: str


def default_config() -> ml_collections.ConfigDict:
  """The study's settings for given models and images (the synthetic config's methods and
  study sections; its data, models and training sections are not used). The synthetic
  config's `sanity` section is left out: it names the synthetic models, and its data
  randomization test trains; add a section naming your models to run those checks."""
  from configs import synthetic  # pylint: disable=g-import-not-at-top

  config = synthetic.get_config()
  del config["sanity"]
  return config


def evaluate(
  models: Sequence[FlaxModel | FunctionModel] | None = None,
  images: np.ndarray | None = None,
  *,
  masks: np.ndarray | None = None,
  boxes: Sequence[np.ndarray] | None = None,
  labels: np.ndarray | None = None,
  ids: Sequence[str] | None = None,
  train_masks: np.ndarray | None = None,
  config: ml_collections.ConfigDict | None = None,
  workdir: str | None = None,
  dataset_name: str = "given images",
  stages: Sequence[str] | None = None,
  redo: Sequence[str] = (),
  load_records: bool = True,
) -> Result:
  """Runs the study; see the module docstring.

  Args:
    models: the classifiers to score (None: `config.models`).
    images: float32 [N, H, W, C] as the models take them (None: `config.data`'s dataset).
    masks: bool [N, H, W] ground truth of each image, and/or
    boxes: per image an array [K, 4] of (ymin, xmin, ymax, xmax) pixel boxes (end exclusive).
    labels: int [N]; only label-1 images are scored (default: all).
    ids: image ids (default "0", "1", ...).
    train_masks: bool [M, H, W] masks of training positives for the average-mask baseline.
    config: settings (`methods`, `study`, `seed`); default `default_config()`.
    workdir: where maps, records and the report go (default: `config.workdir`).
    dataset_name: the title of the report.
    stages: stages to run (default: all; with given images: maps, criteria, report).
    redo: stages to run again even if done.
    load_records: read results.json into `Result.records` (False: leave them on disk).
  """
  if (models is None) != (images is None):
    raise ValueError("give both models and images, or neither (the study of the config).")
  config = ml_collections.ConfigDict(config if config is not None else default_config())
  workdir = workdir or config.workdir
  if models is None:
    study = study_lib.Study(config, workdir)
    stages = study_lib.STAGES if stages is None else stages
  else:
    study = _GivenStudy(
      config,
      workdir,
      models,
      images,
      masks=masks,
      boxes=boxes,
      labels=labels,
      ids=ids,
      train_masks=train_masks,
      dataset_name=dataset_name,
    )
    stages = _GivenStudy.STAGES if stages is None else stages
  for stage in redo:
    study.progress.stages.pop(stage, None)
  report = study.run(stages)
  records, summary = [], None
  if load_records and os.path.exists(os.path.join(workdir, "results.json")):
    with open(os.path.join(workdir, "results.json")) as f:
      records = json.load(f)
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
  skipped = study.manifest.skipped if study.manifest.has_run else []
  return Result(records=records, summary=summary, report=report, skipped=skipped, workdir=workdir)


def _boxes_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """The union of (ymin, xmin, ymax, xmax) boxes as a bool mask, by pixel centers."""
  from saliency_jax.data import geometry  # pylint: disable=g-import-not-at-top

  return geometry.rasterize_boxes(boxes, shape).astype(bool)


class _GivenStudy(study_lib.Study):
  """The study's maps, criteria and report over given models and images."""

  STAGES = ("maps", "criteria", "report")
  GIVEN = True  # the config check leaves out the dataset, model and training fields

  def __init__(
    self, config, workdir, models, images, *, masks, boxes, labels, ids, train_masks, dataset_name
  ):
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
      raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    n, h, w = images.shape[:3]
    if masks is None and boxes is None:
      raise ValueError("give masks or boxes: the ground truth the maps are scored against")
    truth = np.zeros((n, h, w), bool)
    if masks is not None:
      masks = np.asarray(masks)
      if masks.shape != (n, h, w):
        raise ValueError(f"masks must have shape {(n, h, w)}, got {masks.shape}")
      truth |= masks.astype(bool)
    box_list = [np.zeros((0, 4), np.float32)] * n
    if boxes is not None:
      if len(boxes) != n:
        raise ValueError(f"boxes must hold one [K, 4] array per image ({n}), got {len(boxes)}")
      box_list = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
      truth |= np.stack([_boxes_mask(b, (h, w)) for b in box_list])
    labels = np.ones(n, int) if labels is None else np.asarray(labels).astype(int)
    if labels.shape != (n,):
      raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    ids = [str(i) for i in (range(n) if ids is None else ids)]
    if len(ids) != n or len(set(ids)) != n:
      raise ValueError(f"ids must be {n} distinct names")
    names = [m.name for m in models]
    if len(set(names)) != len(names) or not names:
      raise ValueError(f"models need distinct names, got {names}")
    config.data.name = dataset_name
    config.data.image_size = h
    config.data.channels = images.shape[-1]
    config.models = [dict(name=m.name) for m in models]
    # The config's model names (A1, ...) mean nothing here: default to the first given model.
    study = config.study
    study.utility_models = tuple(m for m in study.utility_models if m in names) or names[:1]
    study.independent_randomization = (
      tuple(m for m in study.independent_randomization if m in names) or names[:1]
    )
    config.localization.seeds = ()
    # CheXlocalize tunes its thresholds on validation images; none are given here.
    self._no_tuning = bool(study.get("chexlocalize") and study.chexlocalize.enabled)
    if self._no_tuning:
      study.chexlocalize.enabled = False
    super().__init__(config, workdir)
    self.data = _GivenData(
      config, workdir, images, truth, box_list, labels, np.asarray(ids), train_masks
    )
    self.models = _GivenModels(config, workdir, self.data, list(models))

  def stage_config(self, stage):
    config = super().stage_config(stage)
    config.pop("models", None)  # given in Python, not in the config
    return config

  def skipped(self):
    out = super().skipped()
    out.append(
      dict(
        model="-",
        what="localization-network baseline",
        why="no training split to train it on: repeatability and reproducibility have no baseline",
      )
    )
    if self._no_tuning:
      out.append(
        dict(
          model="-",
          what="CheXlocalize metrics",
          why="their thresholds are tuned on validation images: none given",
        )
      )
    if self.data.train_masks is None:
      out.append(
        dict(
          model="-",
          what="average-mask baseline (as in the paper)",
          why="no train_masks given: the baseline is the mean of the scored images' own masks",
        )
      )
    return out


class _GivenData(study_data.StudyData):
  """The given images: the image sets are their positives (a seeded subset where the config
  asks for fewer), already preprocessed for the models."""

  def __init__(self, config, workdir, images, truth, boxes, labels, ids, train_masks):
    super().__init__(config, workdir)
    self.images, self.truth, self.boxes = images, truth, boxes
    self.labels, self.ids, self.train_masks = labels, ids, train_masks

  def _load_image_set(self, name: str) -> study_data.ImageSet:
    positives = np.flatnonzero(self.labels == 1)
    if len(positives) < 2:
      raise ValueError(f"{len(positives)} positive images given; the study needs >= 2")
    count = (
      self.config.study.num_utility_images
      if name == SetName.UTILITY
      else self.config.study.num_eval_images
    )
    if count and count < len(positives):
      rng = np.random.default_rng(self.config.seed)  # as StudyData draws its subset
      positives = np.sort(rng.choice(positives, size=count, replace=False))
    return study_data.ImageSet(
      name=name,
      ids=self.ids[positives],
      indices=positives,
      raw=_display(self.images[positives]),
      masks=self.truth[positives],
      boxes=[self.boxes[i] for i in positives],
    )

  def inputs(self, image_set, style):
    del style  # the images are given as the models take them
    return self.images[image_set.indices]

  def average_mask(self):
    from saliency_jax.trust import criteria  # pylint: disable=g-import-not-at-top

    if self.train_masks is not None:
      return criteria.average_mask(np.asarray(self.train_masks))
    return criteria.average_mask(self.truth[self.labels == 1])


class _GivenModels(study_models.StudyModels):
  """The given classifiers; no localization network (no training split to train it on)."""

  def __init__(self, config, workdir, data, models):
    super().__init__(config, workdir, data)
    self.given = models

  def _load_classifiers(self):
    shape = self.data.images.shape[1:]
    out = []
    for m in self.given:
      if isinstance(m, FlaxModel):
        bound = plugin.from_flax(
          m.name,
          m.module,
          m.variables,
          shape,
          gradcam_layer=m.gradcam_layer,
          blocks=None if m.blocks is None else tuple(m.blocks),
          arch=m.arch,
        )
      elif isinstance(m, FunctionModel):
        bound = plugin.prediction_only(
          m.name,
          m.logits_fn,
          features_fn=m.features_fn,
          head_fn=m.head_fn,
          guided_logits_fn=m.guided_logits_fn,
          arch=m.arch,
        )
      else:
        raise TypeError(f"models must be api.FlaxModel or api.FunctionModel, got {type(m)}")
      out.append(
        study_models.TrainedModel(
          m.name,
          bound.arch,
          bound.module,
          bound.variables,
          float("nan"),
          self.config.data.style,
          bound,
        )
      )
    return out

  def _load_localizers(self):
    return []


def _display(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, 1] for the report's figures: the channel mean, min-max per image."""
  gray = images.mean(axis=-1, keepdims=True)
  lo = gray.min(axis=(1, 2, 3), keepdims=True)
  span = np.maximum(gray.max(axis=(1, 2, 3), keepdims=True) - lo, 1e-12)
  return np.round((gray - lo) / span * 255).astype(np.uint8)
