"""The maps stage: every method's maps of every model state, the localization baseline's
outputs, the maps of the sanity checks and of the checks' variants, then the files scoring
reads besides the maps (each set's ground truth, the average mask, the run manifest).

Each store is resumable and is replaced when it holds maps of other weights, images or
settings (`MapsStage.fill_store`).
"""

import hashlib
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from saliency_jax import attributions
from saliency_jax import maps as maps_lib
from saliency_jax import models as models_lib
from saliency_jax import multihost
from saliency_jax.models import plugin
from saliency_jax.trust import checks
from saliency_jax.trust import external
from saliency_jax.trust import map_methods
from saliency_jax.trust import map_reader
from saliency_jax.trust import robustness
from saliency_jax.trust import sanity_maps
from saliency_jax.trust import states as states_lib
from saliency_jax.trust.manifest import CLASSIFIER
from saliency_jax.trust.manifest import LOCALIZER
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.manifest import ModelEntry
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import CASCADE_PREFIX
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State
from saliency_jax.trust.study_data import ImageSet
from saliency_jax.trust.study_data import StudyData
from saliency_jax.trust.study_models import bound_model
from saliency_jax.trust.study_models import StudyModels
from saliency_jax.trust.study_models import TrainedModel


class MapsStage:
  """The maps of one study: what every store needs (config, data, models, the noise key)."""

  def __init__(
    self, config: ml_collections.ConfigDict, workdir: str, data: StudyData, models: StudyModels
  ):
    self.config = config
    self.workdir = workdir
    self.data = data
    self.models = models
    self.key = jax.random.key(config.seed)
    # One localization output per architecture and image size, so that its compilation is
    # shared by the replicates and the image sets.
    self._localization_outputs: dict[tuple[str, tuple[int, ...]], Any] = {}

  def run(self) -> None:
    checks.check_config(self.config.study)  # before any map, not after the study's
    names = map_methods.check_names(self.config)
    for clf in self.models.classifiers():
      self._classifier_maps(clf, names)
    self._localizer_maps((SetName.UTILITY, SetName.EVAL))
    sanity_maps.generate_maps(self)
    study = self.config.study
    if study.external_maps and multihost.is_writer():
      found = external.import_maps(
        study.external_maps,
        {n: self.data.image_set(n) for n in (SetName.UTILITY, SetName.EVAL)},
        self.store_path,
        study.chunk_size,
      )
      logging.info("imported external maps of %s", found)
    self._check_maps()

  # What each classifier's maps need.

  def bound(self, clf: TrainedModel) -> plugin.PluginModel:
    return bound_model(clf, self.data.image_shape(clf.style))

  def lacking(self, clf: TrainedModel) -> dict[str, str]:
    """{method: why} of the configured methods the classifier cannot give."""
    return dict(map_methods.skipped_methods(self.config, self.bound(clf)))

  def state_variables(self, clf: TrainedModel) -> dict[str, Any]:
    """{state: variables} of the classifier (states.state_variables)."""
    blocks = self.bound(clf).block_names
    return states_lib.state_variables(self.config, clf, blocks, self.data.image_shape(clf.style))

  def states(self, clf: TrainedModel) -> list[tuple[str, str, Any]]:
    """(set, state, variables) for which the classifier's maps are needed."""
    variables = self.state_variables(clf)
    names = states_lib.state_names(self.config, clf.name, self.bound(clf).block_names)
    return [(set_name, state, variables[state]) for set_name, state in names]

  def targets(self, clf: TrainedModel, image_set: ImageSet, variables=None) -> np.ndarray:
    """The class each map explains: the prediction of the model state `variables` (default:
    the trained model's), or the label (study.target = "label")."""
    if self.config.study.target == "label":
      return np.ones(len(image_set.ids), np.int32)  # the sets hold positive images only
    images = self.data.inputs(image_set, clf.style)
    bound = bound_model(clf, images.shape[1:])
    fns = bound.functions() if variables is None else bound.bind(variables)
    preds = [
      np.asarray(jnp.argmax(_logits(fns, images[i : i + 64]), -1))
      for i in range(0, len(images), 64)
    ]
    return np.concatenate(preds).astype(np.int32)

  def _state_targets(self, clf, cache, set_name, state, variables) -> np.ndarray:
    """The targets of a state's maps, computed once per set or, with
    protocol.randomized_target "recomputed" (the authors), once per state: each randomized
    state explains its own prediction; "trained" keeps the trained model's class at every
    step of a curve."""
    recomputed = self.config.protocol.randomized_target == "recomputed"
    key = (set_name, state) if recomputed else set_name
    if key not in cache:
      image_set = self.data.image_set(set_name)
      cache[key] = self.targets(clf, image_set, variables if recomputed else None)
    return cache[key]

  def store_path(self, set_name: str, model: str, state: str, method: str) -> str:
    return map_reader.store_path(self.workdir, set_name, model, state, method)

  def fill_store(
    self,
    path: str,
    method,
    model_fns,
    image_set: ImageSet,
    images: np.ndarray,
    targets: np.ndarray,
    settings: dict[str, Any],
    variables,
    prepared_name: str = "prepared",
  ) -> maps_lib.MapStore:
    """Fills one store; a store of another model (weights), images or settings is replaced."""
    study = self.config.study
    plan = maps_lib.MapPlan(
      chunk_size=study.chunk_size,
      dtype=study.map_dtype,
      progress=False,
      prepared_dir=os.path.join(self.workdir, "maps", image_set.name, prepared_name),
      metadata={"model": _variables_digest(variables)},
      replace=True,
    )
    inputs = maps_lib.MapInputs(images, targets, image_set.indices, image_set.ids)
    return maps_lib.generate_maps(
      path, method, model_fns, inputs, key=self.key, settings=settings, plan=plan
    )

  # The stores.

  def _classifier_maps(self, clf: TrainedModel, names: list[str]) -> None:
    states = self.states(clf)
    bound = self.bound(clf)
    lacking = self.lacking(clf)
    targets = {}
    with tqdm.tqdm(
      total=len(states) * len(names),
      desc=f"maps {clf.name}",
      unit="store",
      disable=jax.process_index() != 0,
    ) as bar:
      for set_name, state, variables in states:
        image_set = self.data.image_set(set_name)
        explained = self._state_targets(clf, targets, set_name, state, variables)
        fns = bound.bind(variables)
        for name in names:
          bar.update(name in lacking)
          if name in lacking:
            continue
          bar.set_postfix_str(f"{set_name} {state} {name}")
          self.fill_store(
            self.store_path(set_name, clf.name, state, name),
            attributions.METHODS[name],
            fns,
            image_set,
            self.data.inputs(image_set, clf.style),
            explained,
            map_methods.method_settings(self.config, name, clf.style),
            variables,
          )
          bar.update()

  def _localizer_maps(self, set_names) -> None:
    for loc in self.models.localizers():
      fns = models_lib.ModelFunctions(lambda x, loc=loc: loc.module.apply(loc.variables, x))
      for set_name in set_names:
        image_set = self.data.image_set(set_name)
        self.fill_store(
          self.store_path(set_name, loc.name, State.ORIGINAL, Baseline.LOCALIZATION),
          self._localization_output(loc, image_set.raw.shape[1:3]),
          fns,
          image_set,
          self.data.inputs(image_set, loc.style),
          np.zeros(len(image_set.ids), np.int32),
          {},
          loc.variables,
        )

  def _localization_output(self, loc: TrainedModel, shape) -> Any:
    """The map "method" of the localization baseline."""
    key = (loc.arch, tuple(shape))
    if key not in self._localization_outputs:
      self._localization_outputs[key] = (
        map_methods.DetectionScoreMap(loc.module.anchors(*shape))
        if loc.arch == "retinanet"
        else map_methods.SegmentationOutput()
      )
    return self._localization_outputs[key]

  def _check_maps(self) -> None:
    """The maps the checks need besides the criteria's: for CheXlocalize's tuned thresholds,
    the validation images' maps of the utility models and localization networks; for the
    robustness grid, each grayscale variant of the maps its verdicts read (eval set: trained
    and last cascading step; utility set: trained), stored as `<method>@<variant>`."""
    s = self.config.study
    for clf in self.models.classifiers():
      lacking = self.lacking(clf)
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
            map_methods.method_settings(self.config, n, clf.style),
          )
          for n in names
        ]
      if checks.enabled(s, "robustness"):
        jobs += self._robustness_jobs(clf, names)
      bound = self.bound(clf)
      targets = {}
      for set_name, state, variables, store_name, name, settings in tqdm.tqdm(
        jobs,
        desc=f"check maps {clf.name}",
        unit="store",
        disable=not jobs or jax.process_index() != 0,
      ):
        image_set = self.data.image_set(set_name)
        self.fill_store(
          self.store_path(set_name, clf.name, state, store_name),
          attributions.METHODS[name],
          bound.bind(variables),
          image_set,
          self.data.inputs(image_set, clf.style),
          self._state_targets(clf, targets, set_name, state, variables),
          settings,
          variables,
        )
    if checks.enabled(s, "chexlocalize"):
      self._localizer_maps((SetName.VALIDATION,))

  def _robustness_jobs(self, clf: TrainedModel, names: list[str]) -> list[tuple]:
    """The robustness grid's stores of the classifier: each grayscale variant of the maps the
    verdicts read."""
    states = self.states(clf)
    needed = [st for st in states if st[:2] == (SetName.EVAL, State.ORIGINAL)]
    cascade = [st for st in states if st[0] == SetName.EVAL and st[1].startswith(CASCADE_PREFIX)]
    needed += cascade[-1:]  # none for a model that cannot be randomized
    needed += [st for st in states if st[:2] == (SetName.UTILITY, State.ORIGINAL)]
    jobs = []
    for grayscale in self.config.study.robustness.grayscale:
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
          {**map_methods.method_settings(self.config, n, clf.style), **overrides},
        )
        for set_name, state, variables in needed
        for n in names
      ]
    return jobs


def skipped(
  config: ml_collections.ConfigDict, data: StudyData, models: StudyModels
) -> list[dict[str, str]]:
  """What was not evaluated and why: methods and criteria per model (for the report)."""
  out = []
  for clf in models.classifiers():
    bound = bound_model(clf, data.image_shape(clf.style))
    out += [
      dict(model=clf.name, what=m, why=why) for m, why in map_methods.skipped_methods(config, bound)
    ]
    out += [
      dict(model=clf.name, what=what, why=why)
      for what, why in bound.skipped()
      if what not in plugin.METHOD_NEEDS
    ]
  return out


def write_run_files(
  config: ml_collections.ConfigDict,
  workdir: str,
  data: StudyData,
  models: StudyModels,
  manifest: Manifest,
  skipped_parts: list[dict[str, str]],
) -> None:
  """Writes what scoring needs besides the maps: each set's ground truth, the average mask
  and the run manifest (models, image ids, methods, which models serve which criterion,
  `skipped_parts`)."""
  for set_name in data.set_names():
    s = data.image_set(set_name)
    map_reader.write_ground_truth(workdir, set_name, s.ids, s.raw, s.masks, s.boxes)
  map_reader.write_average_mask(workdir, data.average_mask())
  image_shape = data.image_shape(config.data.style)
  entries = [
    ModelEntry(c.name, c.arch, tuple(bound_model(c, image_shape).block_names), CLASSIFIER)
    for c in models.classifiers()
  ]
  entries += [
    ModelEntry(c.name, c.arch, tuple(getattr(c.module, "block_names", ())), LOCALIZER)
    for c in models.localizers()
  ]
  manifest.record_run(
    models=entries,
    image_ids={n: list(data.image_set(n).ids) for n in data.set_names()},
    methods=map_methods.method_names(config),
    computed_methods=list(config.methods.names),
    utility_models=list(config.study.utility_models),
    independent_models=list(config.study.independent_randomization),
    skipped=skipped_parts,
    cascade_keep=config.protocol.cascade_keep,
  )
  manifest.save()


@jax.jit
def _logits(fns, images):
  """The logits of `fns`: one compilation per architecture and batch shape (the variables of
  `fns` are arguments), shared by every model state, image set and call."""
  return fns.logits_fn(images)


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
