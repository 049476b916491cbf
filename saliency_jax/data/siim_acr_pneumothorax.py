"""TFDS builder `siim_acr_pneumothorax`: SIIM-ACR Pneumothorax Segmentation.

Manual directory (from https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation/data,
the original stage-1 release: train-rle.csv and dicom-images-train/):

  train-rle.csv                      ImageId, EncodedPixels
  dicom-images-train/**/<ImageId>.dcm   (any depth: <study>/<series>/...)

`EncodedPixels` is the competition's relative column-major RLE
(`saliency_jax.data.rle`), "-1" for no pneumothorax; an image with several
regions has several rows, which are unioned. The header's leading space
(" EncodedPixels") is tolerated.

Each example: "id" (ImageId), "image" [S, S, 1], "label" (1 when any region),
"mask" [S, S, 1] (decoded at the DICOM's size, then resized by nearest
neighbour at pixel centers, see `real_builder`), "boxes" empty [0, 4] (the ground
truth is the mask).

The split by patient groups images by the DICOM PatientID (read from the
headers); an image whose header cannot be read is its own group (it is skipped
later anyway).

Skipped (and reported): a row that does not parse, an image without a DICOM
file (or with two), a bad DICOM, a DICOM whose SOPInstanceUID is another
image, an RLE that is malformed or runs past the image.
"""

import collections
import csv
import os
from typing import Any

import numpy as np
import pydicom
import tensorflow_datasets as tfds

from saliency_jax.data import build_report
from saliency_jax.data import dicom
from saliency_jax.data import geometry
from saliency_jax.data import real_builder
from saliency_jax.data import rle

RLE_CSV = "train-rle.csv"
IMAGES_DIR = "dicom-images-train"


def index_dicoms(images_dir: str) -> dict[str, list[str]]:
  """{file stem: [paths]} of every .dcm below `images_dir`."""
  found: dict[str, list[str]] = collections.defaultdict(list)
  for root, _, files in os.walk(images_dir):
    for name in files:
      if name.lower().endswith(".dcm"):
        found[name[:-4]].append(os.path.join(root, name))
  return found


def _patient_id(path: str) -> str | None:
  try:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    value = ds.get("PatientID")
    return str(value).strip() or None if value is not None else None
  except Exception:  # pylint: disable=broad-except
    return None  # reported when the image itself is read


def read_rles(manual_dir: str, report: build_report.BuildReport) -> list[real_builder.Record]:
  """Records from train-rle.csv joined with the DICOM files."""
  path = os.path.join(manual_dir, RLE_CSV)
  rles: dict[str, list[str]] = {}
  with open(path, newline="") as f:
    reader = csv.reader(f, skipinitialspace=True)
    header = [h.strip() for h in next(reader, [])]
    if header[:2] != ["ImageId", "EncodedPixels"]:
      raise ValueError(f"{path}: expected header 'ImageId, EncodedPixels', found {header}")
    for line, row in enumerate(reader, start=2):
      if not row:
        continue
      if len(row) != 2 or not row[0].strip() or not row[1].strip():
        report.skip(
          "csv_row_unparsable",
          (row[0].strip() if row and row[0].strip() else f"{RLE_CSV}:{line}"),
          f"{RLE_CSV}:{line}: expected 'ImageId, EncodedPixels', got {row}",
        )
        if row and row[0].strip():
          rles[row[0].strip()] = None  # the image's mask is incomplete
        continue
      image_id = row[0].strip()
      if image_id in rles and rles[image_id] is None:
        continue
      rles.setdefault(image_id, []).append(row[1].strip())

  files = index_dicoms(os.path.join(manual_dir, IMAGES_DIR))
  report.info["dicom_files_without_labels"] = len(set(files) - set(rles))
  records = []
  for image_id in sorted(rles):
    if rles[image_id] is None:
      continue  # already reported
    paths = files.get(image_id, [])
    if not paths:
      report.skip("dicom_missing_file", image_id, f"no {image_id}.dcm under {IMAGES_DIR}/")
      continue
    if len(paths) > 1:
      report.skip("duplicate_file", image_id, f"several files: {paths[:3]}")
      continue
    positive = any(r not in ("-1", "") for r in rles[image_id])
    records.append(
      real_builder.Record(
        id=image_id,
        path=paths[0],
        label=int(positive),
        group=_patient_id(paths[0]) or image_id,
        rles=tuple(rles[image_id]),
      )
    )
  return records


def make_example(
  record: real_builder.Record, options: real_builder.ExampleOptions
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
  """Reads the DICOM, decodes the RLE at its size and resizes both."""
  size = options.image_size
  image, info = dicom.load_image(record.path, size, options.image_dtype)
  if options.check_dicom_ids:
    real_builder.image_id_check(record.id, info.sop_instance_uid, "SOPInstanceUID")
  rows, cols = info.shape
  full_mask = rle.rle_decode_union(record.rles, rows, cols)
  notes = []
  if record.label and not full_mask.any():
    # e.g. "0 0": runs of length zero. The label follows the pixels.
    raise real_builder.SkipExample(
      "rle_empty_positive", "EncodedPixels is not -1 but marks no pixel"
    )
  mask, redrawn = geometry.resize_mask(full_mask, size)
  if redrawn:
    notes.append(
      (
        "mask_redrawn_after_resize",
        f"{int(full_mask.sum())} pixels at {rows}x{cols} vanished under nearest resizing to {size}",
      )
    )
  example = {
    "id": record.id,
    "image": image,
    "label": record.label,
    "mask": mask[..., None],
    "boxes": np.zeros((0, 4), np.float32),
  }
  return example, notes


class SiimAcrPneumothorax(real_builder.RealCxrBuilder):
  """SIIM-ACR Pneumothorax Segmentation (train), from the Kaggle files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  LABEL_NAMES = ("no_pneumothorax", "pneumothorax")
  REQUIRED_FILES = (RLE_CSV, IMAGES_DIR)
  DESCRIPTION = __doc__
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the SIIM-ACR Pneumothorax Segmentation data (accept the rules first):
  https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation/data
  (the original stage-1 DICOM release, train-rle.csv and dicom-images-train/;
  the competition distributed the DICOMs through the Google Cloud Healthcare
  API, and copies with this layout are published as Kaggle datasets)
Put it into the manual directory so that it holds:
  <manual_dir>/{RLE_CSV}
  <manual_dir>/{IMAGES_DIR}/<study>/<series>/<ImageId>.dcm
Then: python -m launch.prepare_data --dataset=siim_acr_pneumothorax \\
  --manual_dir=<manual_dir> --data_dir=<data_dir>"""

  make_example = staticmethod(make_example)

  def _read_records(self, manual_dir, report):
    return read_rles(manual_dir, report)
