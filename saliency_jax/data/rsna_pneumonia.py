"""TFDS builder `rsna_pneumonia`: the RSNA Pneumonia Detection Challenge.

Manual directory (from https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data):

  stage_2_train_labels.csv         patientId,x,y,width,height,Target
  stage_2_detailed_class_info.csv  patientId,class   (optional, cross-checked)
  stage_2_train_images/<patientId>.dcm

`stage_2_train_labels.csv` has one row per box (several rows for a patient
with several opacities) and one row with empty x, y, width, height for a
patient without. (x, y) is the top-left corner in pixels of the DICOM image.

Each example: "id" (patientId), "image" [S, S, 1] uint8/uint16, "label"
(Target), "mask" [S, S, 1] (boxes rasterized at S by pixel centers), "boxes"
[n, 4] float32 (ymin, xmin, ymax, xmax) in pixels at S (n = 0 for negatives).

Skipped (and reported): a row that does not parse, a patient whose rows
disagree (Target 0 and 1, or class info saying otherwise), a missing or bad
DICOM, a DICOM whose PatientID is another patient, a box outside the image.
"""

import csv
import math
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from saliency_jax.data import build_report
from saliency_jax.data import dicom
from saliency_jax.data import geometry
from saliency_jax.data import real_builder

LABELS_CSV = "stage_2_train_labels.csv"
CLASS_INFO_CSV = "stage_2_detailed_class_info.csv"
IMAGES_DIR = "stage_2_train_images"
_POSITIVE_CLASS = "Lung Opacity"
# Box edges may exceed the image by this much (floating-point slack only).
_BOX_TOLERANCE = 1e-3


def _parse_box(row: dict[str, str]) -> tuple[float, float, float, float] | None:
  """(x, y, width, height) floats, None when all four are empty/NaN."""
  values = [(row.get(k) or "").strip() for k in ("x", "y", "width", "height")]
  if all(v in ("", "nan", "NaN") for v in values):
    return None
  try:
    x, y, w, h = (float(v) for v in values)
  except ValueError:
    raise ValueError(f"box values {values} are not all numbers") from None
  if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
    raise ValueError(f"box {values} is not a finite box of positive size")
  return x, y, w, h


def read_labels(manual_dir: str, report: build_report.BuildReport) -> list[real_builder.Record]:
  """Records from the labels CSV (and class info); bad patients are reported."""
  path = os.path.join(manual_dir, LABELS_CSV)
  targets: dict[str, set[int]] = {}
  boxes: dict[str, list[tuple[float, float, float, float]]] = {}
  bad: dict[str, str] = {}
  with open(path, newline="") as f:
    reader = csv.DictReader(f, skipinitialspace=True)
    fields = [(n or "").strip() for n in reader.fieldnames or []]
    reader.fieldnames = fields
    needed = {"patientId", "x", "y", "width", "height", "Target"}
    if not needed <= set(fields):
      raise ValueError(f"{path}: expected columns {sorted(needed)}, found {fields}")
    for line, row in enumerate(reader, start=2):
      patient = (row.get("patientId") or "").strip()
      if not patient:
        report.skip("csv_row_unparsable", f"{LABELS_CSV}:{line}", f"no patientId in row {row}")
        continue
      try:
        target = int((row.get("Target") or "").strip())
        if target not in (0, 1):
          raise ValueError(f"Target {target} is not 0 or 1")
        box = _parse_box(row)
        if target == 1 and box is None:
          raise ValueError("Target 1 without a box")
        if target == 0 and box is not None:
          raise ValueError("Target 0 with a box")
      except ValueError as e:
        bad.setdefault(patient, f"{LABELS_CSV}:{line}: {e}")
        continue
      targets.setdefault(patient, set()).add(target)
      if box is not None:
        boxes.setdefault(patient, [])
        if box not in boxes[patient]:  # exact duplicate rows add nothing
          boxes[patient].append(box)

  class_info = _read_class_info(manual_dir, report)
  records = []
  for patient in sorted(set(targets) | set(bad)):
    if patient in bad:
      report.skip("csv_row_unparsable", patient, bad[patient])
      continue
    if len(targets[patient]) > 1:
      report.skip("label_conflict", patient, "rows with both Target 0 and Target 1")
      continue
    label = targets[patient].pop()
    if patient in class_info and (class_info[patient] == _POSITIVE_CLASS) != (label == 1):
      report.skip("label_conflict", patient, f"Target {label} but class '{class_info[patient]}'")
      continue
    xywh = np.array(boxes.get(patient, []), np.float64).reshape(-1, 4)
    # (x, y, w, h) -> (ymin, xmin, ymax, xmax)
    yxyx = np.stack(
      [xywh[:, 1], xywh[:, 0], xywh[:, 1] + xywh[:, 3], xywh[:, 0] + xywh[:, 2]], axis=-1
    )
    records.append(
      real_builder.Record(
        id=patient,
        path=os.path.join(manual_dir, IMAGES_DIR, f"{patient}.dcm"),
        label=label,
        group=patient,
        boxes=yxyx,
      )
    )
  return records


def _read_class_info(manual_dir: str, report: build_report.BuildReport) -> dict[str, str]:
  path = os.path.join(manual_dir, CLASS_INFO_CSV)
  if not os.path.exists(path):
    report.info["class_info"] = "absent"
    return {}
  info: dict[str, str] = {}
  with open(path, newline="") as f:
    reader = csv.DictReader(f, skipinitialspace=True)
    reader.fieldnames = [(n or "").strip() for n in reader.fieldnames or []]
    if not {"patientId", "class"} <= set(reader.fieldnames):
      raise ValueError(f"{path}: expected columns patientId, class")
    for row in reader:
      patient = (row.get("patientId") or "").strip()
      if patient:
        info[patient] = (row.get("class") or "").strip()
  report.info["class_info"] = "cross-checked"
  return info


def make_example(
  record: real_builder.Record, options: real_builder.ExampleOptions
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
  """Reads the DICOM and builds the example; raises SkipExample/DicomError."""
  size = options.image_size
  image, info = dicom.load_image(record.path, size, options.image_dtype)
  if options.check_dicom_ids:
    real_builder.image_id_check(record.id, info.patient_id, "PatientID")
  rows, cols = info.shape
  boxes = record.boxes
  if boxes.size:
    limits = np.array([rows, cols, rows, cols], np.float64)
    outside = (boxes < -_BOX_TOLERANCE) | (boxes > limits + _BOX_TOLERANCE)
    if outside.any():
      bad = boxes[outside.any(axis=1)][0]
      raise real_builder.SkipExample(
        "box_outside_image",
        f"box (ymin, xmin, ymax, xmax) {bad.tolist()} is outside the {rows}x{cols} image",
      )
  boxes = np.clip(geometry.scale_boxes(boxes, (rows, cols), size), 0, size)
  mask = geometry.rasterize_boxes(boxes, size)
  example = {
    "id": record.id,
    "image": image,
    "label": record.label,
    "mask": mask[..., None],
    "boxes": boxes.astype(np.float32).reshape(-1, 4),
  }
  return example, []


class RsnaPneumonia(real_builder.RealCxrBuilder):
  """RSNA Pneumonia Detection Challenge (stage 2 train), from the Kaggle files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  LABEL_NAMES = ("no_lung_opacity", "lung_opacity")
  REQUIRED_FILES = (LABELS_CSV, IMAGES_DIR)
  DESCRIPTION = __doc__
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the RSNA Pneumonia Detection Challenge data (accept the rules first):
  https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data
  e.g. kaggle competitions download -c rsna-pneumonia-detection-challenge
Unzip it into the manual directory so that it holds:
  <manual_dir>/{LABELS_CSV}
  <manual_dir>/{CLASS_INFO_CSV}   (optional, cross-checked)
  <manual_dir>/{IMAGES_DIR}/<patientId>.dcm
Then: python -m launch.prepare_data --dataset=rsna_pneumonia \\
  --manual_dir=<manual_dir> --data_dir=<data_dir>"""

  make_example = staticmethod(make_example)

  def _read_records(self, manual_dir, report):
    return read_labels(manual_dir, report)
