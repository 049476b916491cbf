"""CheXlocalize's localization metrics of every method's maps, the localization network as baseline.

Per image of the utility set and per utility model (`saliency_jax.metrics.chexlocalize`):
IoU of the Otsu segmentation, IoU at the method's threshold tuned on the validation set's maps
(the same model), and the hit of the map's maximum. The summary gives each method's mean over
images (the mean over utility models per image first) with CheXlocalize's bootstrap 95% CI,
and its percentage decrease from the localization network with CI (both CheXlocalize's
definitions).
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from saliency_jax.metrics import chexlocalize
from saliency_jax.trust import criteria
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State
from saliency_jax.trust.record_table import per_image_records
from saliency_jax.trust.verdict_tests import finite_or_none

MEASURE = "chexlocalize"
METRICS = ("iou_otsu", "iou_tuned", "hit")


def check_section(section: ml_collections.ConfigDict) -> None:
  thresholds = tuple(section.thresholds)
  if not thresholds or not all(0 <= t < 1 for t in thresholds):
    raise ValueError(
      f"config.study.chexlocalize.thresholds must be values in [0, 1), got {thresholds}"
    )
  if section.validation_images < 0:
    raise ValueError(
      f"config.study.chexlocalize.validation_images must be >= 0, got {section.validation_images}"
    )


def records(
  manifest: Manifest, reader, study_config: ml_collections.ConfigDict, methods: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(records, thresholds): per-image records of `methods` on the utility models and of the
  localization networks, and the threshold tuned for each (method, model)."""
  section = study_config.chexlocalize
  check_section(section)
  grid = tuple(float(t) for t in section.thresholds)
  truth = reader.ground_truth(SetName.UTILITY)
  validation = reader.ground_truth(SetName.VALIDATION)
  entries = [
    (method, model, State.ORIGINAL) for method in methods for model in manifest.utility_models
  ]
  entries += [(Baseline.LOCALIZATION, loc.name, State.ORIGINAL) for loc in manifest.localizers]
  out, thresholds = [], []
  for method, model, state in entries:
    maps = reader.read(SetName.UTILITY, model, state, method)
    tuning_maps = reader.read(SetName.VALIDATION, model, state, method)
    if maps is None or tuning_maps is None:
      continue
    tuned = chexlocalize.tune_threshold(tuning_maps, validation.masks, grid)
    thresholds.append(dict(method=method, model=model, **tuned))
    values = {
      "iou_otsu": chexlocalize.iou(maps, truth.masks),
      "iou_tuned": (
        chexlocalize.iou(maps, truth.masks, threshold=tuned["threshold"])
        if np.isfinite(tuned["threshold"])
        else np.full(len(maps), np.nan)
      ),
      "hit": chexlocalize.hit(maps, truth.masks),
    }
    record_state = State.BASELINE if method == Baseline.LOCALIZATION else state
    out += per_image_records(
      values, truth.ids, method=method, model=model, state=record_state, criterion=MEASURE
    )
  return out, thresholds


def _per_image(index: dict, method: str, metric: str, ids: list[str]) -> np.ndarray:
  columns = [
    [column.get(i, np.nan) for i in ids]
    for (m, metric_, _), column in index.items()
    if m == method and metric_ == metric
  ]
  if not columns:
    return np.full(len(ids), np.nan)
  return criteria.mean_of_defined(columns, axis=0)


def summary(
  records_: list[dict[str, Any]],
  thresholds: list[dict[str, Any]],
  methods: list[str],
  *,
  seed: int,
  resamples: int,
) -> list[dict[str, Any]]:
  """One row per method (and the localization network): mean [95% CI] of each metric and its
  percentage decrease from the localization network [95% CI]."""
  index: dict[tuple, dict[str, float]] = {}
  for r in records_:
    if r["criterion"] != MEASURE:
      continue
    column = index.setdefault((r["method"], r["metric"], r["model"]), {})
    column[r["image_id"]] = np.nan if r["value"] is None else float(r["value"])
  ids = sorted({i for column in index.values() for i in column})
  rows = []
  for method in list(methods) + [Baseline.LOCALIZATION]:
    row: dict[str, Any] = dict(
      method=method,
      thresholds={t["model"]: t["threshold"] for t in thresholds if t["method"] == method},
    )
    if not any(k[0] == method for k in index):
      continue
    for metric in METRICS:
      values = _per_image(index, method, metric, ids)
      baseline = _per_image(index, Baseline.LOCALIZATION, metric, ids)
      ci = chexlocalize.bootstrap(values, seed=seed, n_resamples=resamples)
      row[metric] = dict(
        mean=finite_or_none(ci["mean"]),
        low=finite_or_none(ci["low"]),
        high=finite_or_none(ci["high"]),
        n=ci["n"],
        n_excluded=ci["n_excluded"],
      )
      if method != Baseline.LOCALIZATION:
        pct = chexlocalize.percentage_decrease(values, baseline, seed=seed, n_resamples=resamples)
        row[f"{metric}_decrease"] = {k: finite_or_none(v) for k, v in pct.items()}
    rows.append(row)
  return rows
