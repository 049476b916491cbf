"""The study's tidy records: one row per image x criterion x metric x method x model x state.

  per_image_records(values, ids, criterion=..., method=..., model=..., state=...)
  write_table(rows, RECORD_FIELDS, workdir, "results")   # results.json and results.csv
  index = index_records(records)                          # read back as columns
  per_image(index, criterion, metric, method, [(model, state), ...], ids)

Every scoring module builds its records with `per_image_records`, so each record has the same
fields, and an undefined value (NaN) is stored as None (read back as NaN).
"""

import collections
from collections.abc import Iterable
import csv
import json
import os
from typing import Any

import numpy as np

from saliency_jax.trust import criteria
from saliency_jax.trust.names import RecordKey

RECORD_FIELDS = ["criterion", "metric", "method", "model", "state", "image_id", "value"]


def per_image_records(values: dict[str, np.ndarray], ids, **fields) -> list[dict[str, Any]]:
  """One record per metric of `values` ({metric: [N]}) and image of `ids`, with `fields`."""
  out = []
  for metric, column in values.items():
    for image_id, value in zip(ids, np.asarray(column, np.float64)):
      out.append(
        dict(
          fields,
          metric=metric,
          image_id=str(image_id),
          value=float(value) if np.isfinite(value) else None,
        )
      )
  return out


def write_table(rows: list[dict[str, Any]], fields: list[str], workdir: str, name: str) -> None:
  """Writes `rows` as <workdir>/<name>.json and, with the columns `fields`, <name>.csv (None as
  an empty cell)."""
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump(rows, f)
  with open(os.path.join(workdir, f"{name}.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: ("" if row[k] is None else row[k]) for k in fields})


Index = dict[RecordKey, dict[str, float]]  # a column of per-image values {image_id: value}


def index_records(records: Iterable[dict[str, Any]]) -> Index:
  index: Index = collections.defaultdict(dict)
  for r in records:
    value = np.nan if r["value"] is None else float(r["value"])
    key = RecordKey(r["criterion"], r["metric"], r["method"], r["model"], r["state"])
    index[key][r["image_id"]] = value
  return index


def per_image(
  index: Index,
  criterion: str,
  metric: str,
  method: str,
  selection: Iterable[tuple[str, str]],
  ids: list[str],
) -> np.ndarray:
  """Per-image mean over the selected (model, state) entries, NaN where all are undefined."""
  keys = [RecordKey(criterion, metric, method, model, state) for model, state in selection]
  columns = [[index[key].get(i, np.nan) for i in ids] for key in keys if key in index]
  if not columns:
    return np.full(len(ids), np.nan)
  return criteria.mean_of_defined(columns, axis=0)


def models_of(index: Index, criterion: str, method: str | None = None) -> list[str]:
  """The models (or model pairs) with records of `criterion` (and `method`), sorted."""
  return sorted({k.model for k in index if k.criterion == criterion and method in (None, k.method)})


def image_ids(index: Index, criterion: str) -> list[str]:
  """The image ids with records of `criterion` (a `Measure`), sorted."""
  ids = set()
  for key, column in index.items():
    if key.criterion == criterion:
      ids.update(column)
  return sorted(ids)
