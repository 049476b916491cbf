"""Scores the study's maps: per-image records of every criterion, then the scorecard.

`evaluate(study)` reads the map stores, writes `results.json`/`results.csv` (one record per
image x method x criterion x step, tidy) and `summary.json` (the scorecard, the curves and the
provenance the report shows).
"""
import csv
import itertools
import json
import os
from typing import Any, Dict, List

import numpy as np

from saliency_jax.trust import criteria
from saliency_jax.trust.names import AVERAGE_MASK
from saliency_jax.trust.names import EVAL_SET
from saliency_jax.trust.names import INDEPENDENT_PREFIX
from saliency_jax.trust.names import LOCALIZATION_METHOD
from saliency_jax.trust.names import ORIGINAL
from saliency_jax.trust.names import UNTRAINED
from saliency_jax.trust.names import UTILITY_SET
from saliency_jax.trust import verdicts


def _records(values: Dict[str, np.ndarray], ids, **fields) -> List[Dict[str, Any]]:
  out = []
  for metric, column in values.items():
    for image_id, value in zip(ids, np.asarray(column, np.float64)):
      out.append(dict(fields, metric=metric, image_id=str(image_id),
                      value=float(value) if np.isfinite(value) else None))
  return out


def utility_records(study) -> List[Dict[str, Any]]:
  """AUPRC (and CheXlocalize/Quantus columns) of trained, untrained and baseline maps."""
  image_set = study.image_set(UTILITY_SET)
  records = []
  for model in study.config.study.utility_models:
    for state in (ORIGINAL, UNTRAINED):
      for method in study.method_names():
        maps = study.read_maps(UTILITY_SET, model, state, method)
        if maps is None:
          continue
        records += _records(criteria.utility(maps, image_set.masks), image_set.ids,
                            criterion="utility", method=method, model=model, state=state)
  average = np.broadcast_to(study.average_mask(), image_set.masks.shape)
  records += _records(criteria.utility(average, image_set.masks), image_set.ids,
                      criterion="utility", method=AVERAGE_MASK, model="-", state="baseline")
  for loc in study.localizers():
    maps = study.read_maps(UTILITY_SET, loc.name, ORIGINAL, LOCALIZATION_METHOD)
    records += _records(criteria.utility(maps, image_set.masks), image_set.ids,
                        criterion="utility", method=LOCALIZATION_METHOD, model=loc.name,
                        state="baseline")
  return records


def randomization_records(study) -> List[Dict[str, Any]]:
  """Similarity of each randomized state's maps to the trained maps, and the random pairs."""
  image_set = study.image_set(EVAL_SET)
  data_range = study.config.study.ssim_data_range
  records = []
  for clf in study.classifiers():
    for method in study.method_names():
      original = study.read_maps(EVAL_SET, clf.name, ORIGINAL, method)
      if original is None:
        continue
      baseline = criteria.random_pair_baseline(
          original, pairs=study.config.study.random_pairs, seed=study.config.seed,
          data_range=data_range)
      records += _records(baseline, image_set.ids, criterion="random_pairs", method=method,
                          model=clf.name, state="baseline")
      states = [(s, "cascading_randomization") for s in study.cascade_steps(clf)]
      if clf.name in study.config.study.independent_randomization:
        states += [(f"{INDEPENDENT_PREFIX}{b}", "independent_randomization")
                   for b in clf.module.block_names]
      for state, criterion in states:
        maps = study.read_maps(EVAL_SET, clf.name, state, method)
        if maps is None:
          continue
        records += _records(criteria.similarity(original, maps, data_range=data_range),
                            image_set.ids, criterion=criterion, method=method,
                            model=clf.name, state=state)
  return records


def agreement_records(study) -> List[Dict[str, Any]]:
  """Repeatability (same architecture) and reproducibility (different architectures)."""
  image_set = study.image_set(EVAL_SET)
  data_range = study.config.study.ssim_data_range
  records = []
  for a, b in itertools.combinations(study.classifiers(), 2):
    criterion = "repeatability" if a.arch == b.arch else "reproducibility"
    for method in study.method_names():
      maps_a = study.read_maps(EVAL_SET, a.name, ORIGINAL, method)
      maps_b = study.read_maps(EVAL_SET, b.name, ORIGINAL, method)
      if maps_a is None or maps_b is None:
        continue
      values = criteria.similarity(maps_a, maps_b, data_range=data_range)
      records += _records(values, image_set.ids, criterion=criterion, method=method,
                          model=f"{a.name}-{b.name}", state=ORIGINAL)
  for a, b in itertools.combinations(study.localizers(), 2):
    values = criteria.similarity(
        study.read_maps(EVAL_SET, a.name, ORIGINAL, LOCALIZATION_METHOD),
        study.read_maps(EVAL_SET, b.name, ORIGINAL, LOCALIZATION_METHOD),
        data_range=data_range)
    records += _records(values, image_set.ids, criterion="localization_agreement",
                        method=LOCALIZATION_METHOD, model=f"{a.name}-{b.name}",
                        state=ORIGINAL)
  return records


def write_records(records: List[Dict[str, Any]], workdir: str) -> None:
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(records, f)
  fields = ["criterion", "metric", "method", "model", "state", "image_id", "value"]
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for record in records:
      writer.writerow({k: ("" if record[k] is None else record[k]) for k in fields})


def evaluate(study) -> Dict[str, Any]:
  """Computes every record and the scorecard; writes results.* and summary.json."""
  from saliency_jax.trust import sanity  # pylint: disable=g-import-not-at-top
  records = utility_records(study) + randomization_records(study) + agreement_records(study)
  records += sanity.records(study)
  write_records(records, study.workdir)
  summary = verdicts.summarize_study(records, study)
  summary["sanity"] = sanity.summarize(records, study)
  summary["rules"].update(summary["sanity"]["rules"])      # scorecard columns
  summary["scorecard"] += summary["sanity"]["scorecard"]
  with open(os.path.join(study.workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary
