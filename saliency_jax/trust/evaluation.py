"""Scores the study's maps: per-image records of every criterion, then the scorecard.

  manifest = Manifest.load(workdir)
  reader = MapReader(workdir, manifest.computed_methods, minmax=config.protocol.minmax_maps)
  evaluate(manifest, reader, config.study, seed=config.seed, workdir=workdir,
           protocol=config.protocol)

reads the map stores the manifest lists, writes `results.json`/`results.csv` (one record per
image x method x criterion x step, tidy) and `summary.json` (the scorecard and the curves the
report draws). Nothing here loads a dataset or a model.
"""

from collections.abc import Sequence
import itertools
import json
import os
from typing import Any

import ml_collections
import numpy as np

from saliency_jax.trust import checks
from saliency_jax.trust import criteria
from saliency_jax.trust import protocol as protocol_lib
from saliency_jax.trust import record_table
from saliency_jax.trust import sanity_records
from saliency_jax.trust import sanity_scoring
from saliency_jax.trust import verdicts
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.map_reader import MapReader
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import independent_state
from saliency_jax.trust.names import Measure
from saliency_jax.trust.names import NO_MODEL
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State
from saliency_jax.trust.record_table import per_image_records


def utility_records(
  manifest: Manifest, reader: MapReader, *, trained_only: bool = False
) -> list[dict[str, Any]]:
  """AUPRC (and CheXlocalize/Quantus columns) of trained, untrained and baseline maps
  (`trained_only`: not the untrained maps, which no verdict reads)."""
  truth = reader.ground_truth(SetName.UTILITY)
  records = []
  for model in manifest.utility_models:
    # A model without blocks has no untrained state (the manifest's `skipped` says so).
    untrained = (State.UNTRAINED,) if manifest.model(model).block_names else ()
    for state in (State.ORIGINAL,) if trained_only else (State.ORIGINAL, *untrained):
      for method in manifest.methods:
        maps = reader.read(SetName.UTILITY, model, state, method)
        if maps is None:
          continue
        records += per_image_records(
          criteria.utility(maps, truth.masks),
          truth.ids,
          criterion=Measure.UTILITY,
          method=method,
          model=model,
          state=state,
        )
  average = np.broadcast_to(reader.average_mask(), truth.masks.shape)
  records += per_image_records(
    criteria.utility(average, truth.masks),
    truth.ids,
    criterion=Measure.UTILITY,
    method=Baseline.AVERAGE_MASK,
    model=NO_MODEL,
    state=State.BASELINE,
  )
  for loc in manifest.localizers:
    maps = reader.read(SetName.UTILITY, loc.name, State.ORIGINAL, Baseline.LOCALIZATION)
    records += per_image_records(
      criteria.utility(maps, truth.masks),
      truth.ids,
      criterion=Measure.UTILITY,
      method=Baseline.LOCALIZATION,
      model=loc.name,
      state=State.BASELINE,
    )
  return records


def randomization_records(
  manifest: Manifest,
  reader: MapReader,
  study_config: ml_collections.ConfigDict,
  *,
  seed: int,
  similarity: Sequence[str] = criteria.SIMILARITY_METRICS,
  top_k_fraction: float = 0.1,
  last_step_only: bool = False,
) -> list[dict[str, Any]]:
  """Similarity of each randomized state's maps to the trained maps, and the random pairs.

  similarity, top_k_fraction: the metrics (`criteria.similarity`); last_step_only: only the
  last cascading step, the one the verdict reads (no curve, no independent randomization).
  """
  ids = reader.ground_truth(SetName.EVAL).ids
  data_range = study_config.ssim_data_range
  measures = dict(data_range=data_range, names=similarity, top_k_fraction=top_k_fraction)
  records = []
  for clf in manifest.classifiers:
    for method in manifest.methods:
      original = reader.read(SetName.EVAL, clf.name, State.ORIGINAL, method)
      if original is None:
        continue
      baseline = criteria.random_pair_baseline(
        original, pairs=study_config.random_pairs, seed=seed, **measures
      )
      records += per_image_records(
        baseline,
        ids,
        criterion=Measure.RANDOM_PAIRS,
        method=method,
        model=clf.name,
        state=State.BASELINE,
      )
      # No blocks, no randomization (the manifest's `skipped` says so).
      states = [(s, Measure.CASCADING) for s in manifest.cascade_steps(clf) if clf.block_names]
      if last_step_only:
        states = states[-1:]
      elif clf.name in manifest.independent_models:
        states += [(independent_state(b), Measure.INDEPENDENT) for b in clf.block_names]
      for state, criterion in states:
        maps = reader.read(SetName.EVAL, clf.name, state, method)
        if maps is None:
          continue
        records += per_image_records(
          criteria.similarity(original, maps, **measures),
          ids,
          criterion=criterion,
          method=method,
          model=clf.name,
          state=state,
        )
  return records


def agreement_records(
  manifest: Manifest,
  reader: MapReader,
  study_config: ml_collections.ConfigDict,
  protocol=None,
  *,
  similarity: Sequence[str] = criteria.SIMILARITY_METRICS,
  top_k_fraction: float = 0.1,
) -> list[dict[str, Any]]:
  """Repeatability (same architecture) and reproducibility (different architectures), on the
  image set of protocol.agreement_images, and the localization networks' agreement (their
  baseline: binary uint8 masks at range 255, or probabilities: protocol.localization_agreement)."""
  protocol = protocol_lib.paper_protocol() if protocol is None else protocol
  set_name = agreement_set(protocol)
  ids = reader.ground_truth(set_name).ids
  measures = dict(
    data_range=study_config.ssim_data_range, names=similarity, top_k_fraction=top_k_fraction
  )
  records = []
  for a, b in itertools.combinations(manifest.classifiers, 2):
    criterion = Measure.REPEATABILITY if a.arch == b.arch else Measure.REPRODUCIBILITY
    for method in manifest.methods:
      maps_a = reader.read(set_name, a.name, State.ORIGINAL, method)
      maps_b = reader.read(set_name, b.name, State.ORIGINAL, method)
      if maps_a is None or maps_b is None:
        continue
      values = criteria.similarity(maps_a, maps_b, **measures)
      records += per_image_records(
        values,
        ids,
        criterion=criterion,
        method=method,
        model=f"{a.name}-{b.name}",
        state=State.ORIGINAL,
      )
  binary = protocol.localization_agreement == "binary_uint8"
  for a, b in itertools.combinations(manifest.localizers, 2):
    out_a, out_b = (
      reader.read(set_name, x.name, State.ORIGINAL, Baseline.LOCALIZATION) for x in (a, b)
    )
    if binary:  # the authors' PNG masks: 0 or 255, compared at uint8's range
      values = criteria.similarity(
        binary_uint8(out_a), binary_uint8(out_b), **dict(measures, data_range=255.0)
      )
    else:
      values = criteria.similarity(out_a, out_b, **measures)
    records += per_image_records(
      values,
      ids,
      criterion=Measure.LOCALIZATION_AGREEMENT,
      method=Baseline.LOCALIZATION,
      model=f"{a.name}-{b.name}",
      state=State.ORIGINAL,
    )
  return records


def all_records(
  manifest: Manifest,
  reader: MapReader,
  study_config: ml_collections.ConfigDict,
  *,
  seed: int,
  protocol=None,
) -> list[dict[str, Any]]:
  return (
    utility_records(manifest, reader)
    + randomization_records(manifest, reader, study_config, seed=seed)
    + agreement_records(manifest, reader, study_config, protocol)
  )


def agreement_set(protocol) -> str:
  """The image set of repeatability and reproducibility (the authors': the utility set)."""
  return SetName.UTILITY if protocol.agreement_images == "utility" else SetName.EVAL


def binary_uint8(probabilities: np.ndarray) -> np.ndarray:
  """A segmentation network's probabilities as the 8-bit mask a PNG holds: 255 where >= 0.5."""
  return np.where(np.asarray(probabilities) >= 0.5, 255.0, 0.0).astype(np.float32)


def evaluate(
  manifest: Manifest,
  reader: MapReader,
  study_config: ml_collections.ConfigDict,
  *,
  seed: int,
  workdir: str,
  protocol=None,
  sanity_config: ml_collections.ConfigDict | None = None,
) -> dict[str, Any]:
  """Computes every record and the scorecard; writes results.* and summary.json.

  protocol: `config.protocol` (default: the paper's choices).
  sanity_config: `config.sanity`, the checks beyond the paper (saliency_jax.trust.sanity).
  """
  records = all_records(manifest, reader, study_config, seed=seed, protocol=protocol)
  check_records, extras = checks.records(
    manifest, reader, study_config, seed=seed, protocol=protocol
  )
  records += check_records
  if sanity_config is not None:
    records += sanity_records.records(
      manifest, reader, sanity_config, study_config, seed=seed, workdir=workdir
    )
  record_table.write_table(records, record_table.RECORD_FIELDS, workdir, "results")
  summary = verdicts.summarize_study(records, manifest, study_config, seed=seed, protocol=protocol)
  summary.update(
    checks.summaries(
      records,
      extras,
      manifest,
      reader,
      study_config,
      seed=seed,
      scorecard=summary["scorecard"],
      workdir=workdir,
      protocol=protocol,
    )
  )
  if sanity_config is not None:
    summary["sanity"] = sanity_scoring.summarize(
      records, manifest, sanity_config, study_config, seed=seed, workdir=workdir
    )
    summary["rules"].update(summary["sanity"]["rules"])  # scorecard columns
    summary["scorecard"] += summary["sanity"]["scorecard"]
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary
