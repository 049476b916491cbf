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

import contextlib
import json
import os
import time
from typing import Any

import jax
import ml_collections

from saliency_jax import models
from saliency_jax import multihost
from saliency_jax.trust import checks
from saliency_jax.trust import config_changes
from saliency_jax.trust import config_check
from saliency_jax.trust import evaluation
from saliency_jax.trust import map_methods
from saliency_jax.trust import map_reader
from saliency_jax.trust import maps_stage
from saliency_jax.trust import sanity
from saliency_jax.trust import states as states_lib
from saliency_jax.trust import verdicts
from saliency_jax.trust import workdir_lock
from saliency_jax.trust.config_changes import STAGES
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.study_data import StudyData
from saliency_jax.trust.study_models import StudyModels
from saliency_jax.trust.study_models import train_config

HOST0_STAGES = ("criteria", "report")  # single-writer stages of a multi-host run


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


class Study:
  """The study for one config, resumable under `workdir`: runs the stages, nothing else.

  Its data (`study_data.StudyData`) and models (`study_models.StudyModels`) are loaded and
  trained when a stage first needs them. Scoring and reporting read what the maps stage wrote
  (the manifest, the map stores, the ground truth); they never see this object.
  """

  # Models and images given in Python (saliency_jax.api): config.data and config.models do
  # not describe them, and nothing is trained.
  GIVEN = False

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_check.validate(config, given=self.GIVEN)  # every problem now, not after training
    sanity.validate(config)
    self.config = config
    self.workdir = workdir
    self.progress = ProgressLog(os.path.join(workdir, "progress.json"))
    self.manifest = Manifest.load(workdir)
    self.data = StudyData(config, workdir)
    self.models = StudyModels(config, workdir, self.data)

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

  def stage_config(self, stage: str) -> dict[str, Any]:
    """The config sections `stage` reads (config_changes.STAGE_CONFIG), as plain data."""
    return config_changes.stage_config(self.config, stage)

  def _redo_changed_stages(self, stages) -> None:
    """The first done stage whose config changed runs again, with every stage after it."""
    redo = config_changes.stage_to_redo(
      stages,
      self.progress.done,
      lambda stage: config_changes.changed_fields(
        self.manifest.stage_config(stage), self.stage_config(stage)
      ),
    )
    if redo is None:
      return
    stage, fields = redo
    _say(
      f"[{stage}] the config changed since it ran ({config_changes.summary(fields)}): running "
      "it and the stages after it again"
    )
    for later in STAGES[STAGES.index(stage) :]:
      self.progress.stages.pop(later, None)

  def plan(self) -> dict[str, Any]:
    """What a run of this config does, as plain data, from the functions the stages call
    (nothing is read or trained): the dataset, each model with its training settings, every
    map store with its method settings and targets, the scoring and the report. A config
    field that changes nothing here does nothing (tests/test_config.py checks every field)."""
    c, s, p = self.config, self.config.study, self.config.protocol
    data = dict(
      name=c.data.name,
      data_dir=self.data.data_dir,
      image_size=c.data.image_size,
      channels=c.data.channels,
    )
    if c.data.name == config_check.SYNTHETIC:
      data.update(synthetic={k: c.data[k] for k in config_check.SYNTHETIC_DATA_FIELDS})
    classifiers, maps = [], {}
    for spec in c.models:
      spec = dict(spec)
      style = spec.get("style", c.data.style)
      entry = dict(spec, train=train_config(c.train, style, c.data.channels).to_dict())
      if spec.get("arch"):
        module = models.create(spec["arch"], num_classes=2, **spec.get("kwargs", {}))
        entry.update(imagenet=c.weights.get(spec["arch"], "") if p.init == "imagenet" else None)
        states = states_lib.state_names(c, spec["name"], module.block_names)
      else:  # a model by import path or file: its blocks are known once it is loaded
        states = "from the loaded model"
      classifiers.append(entry)
      maps[spec["name"]] = dict(
        states=states,
        methods={name: map_methods.method_settings(c, name, style) for name in c.methods.names},
      )
    loc = c.localization
    localizers = [
      dict(
        arch=loc.arch,
        kwargs=dict(loc.kwargs),
        seed=seed,
        train=train_config(loc.train, c.data.style, c.data.channels).to_dict(),
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
        agreement=evaluation.agreement_set(p),
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

  # ---------------------------------------------------------------------------------------
  # The stages.

  def stage_data(self) -> None:
    self.data.log_sizes()

  def stage_train(self) -> None:
    summary = self.models.summary()
    os.makedirs(os.path.join(self.workdir, "models"), exist_ok=True)  # none trained here
    multihost.write_shared_json(
      os.path.join(self.workdir, "models", "summary.json"), summary, "models/summary.json"
    )
    for name, entry in summary.items():
      _say(f"  {name}: {entry}")

  def stage_maps(self) -> None:
    maps_stage.MapsStage(self.config, self.workdir, self.data, self.models).run()
    if jax.process_index() == 0:
      self.write_run_files()

  def stage_criteria(self) -> None:
    evaluation.evaluate(
      self.manifest,
      self.reader(),
      self.config.study,
      seed=self.config.seed,
      workdir=self.workdir,
      protocol=self.config.protocol,
      sanity_config=self.config.get("sanity"),
    )

  def stage_report(self) -> None:
    from saliency_jax.trust import report  # pylint: disable=g-import-not-at-top  # matplotlib

    numbers_config = config_changes.numbers_config(self.config, self.manifest)
    report.write_report(self.manifest, self.reader(), numbers_config, self.workdir)

  # ---------------------------------------------------------------------------------------
  # What scoring reads besides the maps.

  def skipped(self) -> list[dict[str, str]]:
    """What was not evaluated and why: methods and criteria per model (for the report)."""
    return maps_stage.skipped(self.config, self.data, self.models)

  def write_run_files(self) -> None:
    """Each set's ground truth, the average mask and the run manifest."""
    maps_stage.write_run_files(
      self.config, self.workdir, self.data, self.models, self.manifest, self.skipped()
    )

  def reader(self) -> map_reader.MapReader:
    if not self.manifest.has_run:
      self.write_run_files()  # a workdir whose maps stage finished before manifests existed
    return map_reader.MapReader(
      self.workdir,
      self.manifest.computed_methods,
      skipped=[(s["model"], s["what"]) for s in self.manifest.skipped],
      minmax=self.config.protocol.minmax_maps,
    )


def _say(text: str) -> None:
  """Prints on host 0 only: one copy of every line in a multi-host run."""
  if jax.process_index() == 0:
    print(text)
