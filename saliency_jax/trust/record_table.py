"""The study's tidy records: one row per image x criterion x metric x method x model x state.

  per_image_records(values, ids, criterion=..., method=..., model=..., state=...)
  write_table(rows, RECORD_FIELDS, workdir, "results")   # results.json and results.csv

Every scoring module builds its records with `per_image_records`, so each record has the same
fields, and an undefined value (NaN) is stored as None.
"""

import csv
import json
import os
from typing import Any

import numpy as np

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
