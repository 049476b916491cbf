"""The curves and the utility table that summary.json holds for the report.

curves(records, manifest, protocol)   # randomization curves per metric, architecture, method
utility_table(records, manifest)      # mean localization metrics of each method and baseline
"""

import collections
from typing import Any

import numpy as np

from saliency_jax.trust import criteria
from saliency_jax.trust import protocol as protocol_lib
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import CASCADE_PREFIX
from saliency_jax.trust.names import independent_state
from saliency_jax.trust.names import Measure
from saliency_jax.trust.names import NO_MODEL
from saliency_jax.trust.names import RecordKey
from saliency_jax.trust.names import State
from saliency_jax.trust.record_table import image_ids
from saliency_jax.trust.record_table import index_records
from saliency_jax.trust.record_table import models_of
from saliency_jax.trust.record_table import per_image
from saliency_jax.trust.verdict_tests import mean_or_none


def curves(records, manifest: Manifest, protocol=None) -> dict[str, Any]:
  """Randomization curves, {metric: {architecture: {method: curve}}}.

  A curve holds, per cascading step, the mean and std over replicates of each replicate's
  mean similarity over images (the paper's curves), the random-pair baseline (the first
  replicate's number, or the mean over replicates: protocol.random_pairs), and the
  independent-randomization curve (Adebayo et al.) where it was run.
  """
  protocol = protocol_lib.paper_protocol() if protocol is None else protocol
  index = index_records(records)
  archs: dict[str, list] = collections.OrderedDict()
  for clf in manifest.classifiers:
    archs.setdefault(clf.arch, []).append(clf)

  def image_mean(criterion, metric, method, model, state) -> float:
    """Mean over images of one column; NaN where none is defined."""
    key = RecordKey(criterion, metric, method, model, state)
    return float(criteria.mean_of_defined(list(index.get(key, {}).values())))

  out: dict[str, Any] = {}
  for metric in ("ssim", "spearman_abs"):
    for arch, clfs in archs.items():
      if not clfs[0].block_names:
        continue  # nothing was randomized (the report says why)
      steps = manifest.cascade_steps(clfs[0])
      blocks = list(clfs[0].block_names)
      for method in manifest.methods:
        cascade = np.array(
          [
            [image_mean(Measure.CASCADING, metric, method, c.name, step) for step in steps]
            for c in clfs
          ]
        )
        mean, std = _column_mean_std(cascade)
        independent = np.array(
          [
            [
              image_mean(Measure.INDEPENDENT, metric, method, c.name, independent_state(b))
              for b in blocks
            ]
            for c in clfs
          ]
        )
        has_independent = np.isfinite(independent).any()
        out.setdefault(metric, {}).setdefault(arch, {})[method] = dict(
          steps=[s.replace(CASCADE_PREFIX, "") for s in steps],
          mean=_list(mean),
          std=_list(std),
          replicates=[c.name for c in clfs],
          baseline=mean_or_none(
            [
              image_mean(Measure.RANDOM_PAIRS, metric, method, c.name, State.BASELINE)
              for c in (clfs[:1] if protocol.random_pairs == "scalar" else clfs)
            ]
          ),
          independent=dict(steps=blocks, mean=_list(_column_mean_std(independent)[0]))
          if has_independent
          else None,
        )
  return out


def _column_mean_std(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Column mean and (population) std over the defined entries; NaN where a column has none."""
  mean = criteria.mean_of_defined(arr, axis=0)
  return mean, np.sqrt(criteria.mean_of_defined((arr - mean) ** 2, axis=0))


def _list(arr) -> list[float | None]:
  return [float(v) if np.isfinite(v) else None for v in arr]


def utility_table(records, manifest: Manifest) -> list[dict[str, Any]]:
  """Mean localization metrics of every method (trained, untrained) and the baselines."""
  index = index_records(records)
  ids = image_ids(index, Measure.UTILITY)
  models = manifest.utility_models
  rows = []
  entries = [(m, "trained", [(x, State.ORIGINAL) for x in models]) for m in manifest.methods]
  entries += [(m, "untrained", [(x, State.UNTRAINED) for x in models]) for m in manifest.methods]
  entries.append((Baseline.AVERAGE_MASK, State.BASELINE, [(NO_MODEL, State.BASELINE)]))
  loc_models = models_of(index, Measure.UTILITY, Baseline.LOCALIZATION)
  entries.append((Baseline.LOCALIZATION, State.BASELINE, [(x, State.BASELINE) for x in loc_models]))
  for method, state, selection in entries:
    row = dict(method=method, state=state)
    for metric in ("auprc", "pointing_game", "iou_otsu"):
      values = per_image(index, Measure.UTILITY, metric, method, selection, ids)
      row[metric] = mean_or_none(values)
      row[f"{metric}_excluded"] = int((~np.isfinite(values)).sum())
    rows.append(row)
  return rows
