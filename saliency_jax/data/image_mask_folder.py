"""TFDS builder `image_mask_folder`: your own images and ground truth, from a directory.

Manual directory:
  images/<id>.png | .npy | .dcm     the images (subfolders allowed; <id> is the file name
                                    without extension and must be unique)
  masks/<id>.png | .npy             optional: ground-truth masks (non-zero = finding), at the
                                    image's size
  boxes.csv                         optional: id,x,y,width,height (one row per box, pixels of the
                                    image file, (x, y) the top-left corner)
  rle.csv                           optional: id,EncodedPixels (the SIIM-ACR relative,
                                    column-major run-length format; -1 for none)
  labels.csv                        optional: id,label[,split] (label 0/1; split
                                    train/validation/test); without it, an image is positive
                                    when its ground truth marks any pixel

Ground truth from several sources is unioned. Images: PNG (8/16-bit, grayscale or RGB), NPY
([H, W], [H, W, 1] or [H, W, 3]; uint8, uint16, or float mapped from `float_range`, by
default [-1, 1] as the authors' released sample `.npy` files), DICOM (as the RSNA/SIIM
builders read it). Colour images whose channels are equal (grayscale replicated, as those
samples) keep one channel; others are averaged over channels, with a note in the report.
Splits: the `split` column of labels.csv, else the config's split CSV or seeded fractions (e.g.
`split_fractions=(0, 0, 1)` puts every image in the test split).

Each example is stored as by the RSNA/SIIM builders: "id", "image" [S, S, 1], "label", "mask"
[S, S, 1], "boxes" [n, 4]. Skipped (and counted in the skip report): an unreadable or
malformed image or mask, values outside `float_range`, a mask of another size, a box outside
the image, an RLE that does not decode, a labels.csv row that does not parse, a negative label
with ground truth (label_conflict), an id listed in a CSV without an image.
"""

from collections.abc import Sequence
import csv
import dataclasses
import hashlib
import math
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from saliency_jax.data import build_report
from saliency_jax.data import dicom
from saliency_jax.data import geometry
from saliency_jax.data import real_builder
from saliency_jax.data import rle
from saliency_jax.data import splits as splits_lib

IMAGES_DIR = "images"
MASKS_DIR = "masks"
LABELS_CSV = "labels.csv"
BOXES_CSV = "boxes.csv"
RLE_CSV = "rle.csv"
IMAGE_EXTENSIONS = (".png", ".npy", ".dcm")
MASK_EXTENSIONS = (".png", ".npy")
DEFAULT_FLOAT_RANGE = (-1.0, 1.0)
_BOX_TOLERANCE = 1e-3


@dataclasses.dataclass(eq=False)
class FolderConfig(real_builder.RealCxrConfig):
  """`RealCxrConfig` plus the range float NPY images are mapped from (to [0, 1])."""

  float_range: tuple[float, float] = DEFAULT_FLOAT_RANGE


def make_config(
  manual_dir: str,
  image_size: int = real_builder.DEFAULT_IMAGE_SIZE,
  *,
  float_range: Sequence[float] = DEFAULT_FLOAT_RANGE,
  **kwargs: Any,
) -> FolderConfig:
  """A config whose name tells folders and float ranges apart (so one data_dir may hold the
  builds of several folders); other arguments as `real_builder.make_config`."""
  lo, hi = (float(v) for v in float_range)
  if not hi > lo:
    raise ValueError(f"float_range must be (low, high) with high > low, got {float_range}")
  base = real_builder.make_config(image_size, **kwargs)
  tag = hashlib.sha256(f"{os.path.abspath(manual_dir)}|{lo}|{hi}".encode()).hexdigest()[:8]
  fields = {
    f.name: getattr(base, f.name) for f in dataclasses.fields(real_builder.RealCxrConfig) if f.init
  }
  fields.update(name=f"{base.name}_dir{tag}", float_range=(lo, hi))
  return FolderConfig(**fields)


@dataclasses.dataclass
class FolderRecord(real_builder.Record):
  mask_path: str = ""
  split: str = ""
  float_range: tuple[float, float] = DEFAULT_FLOAT_RANGE


# ----------------------------------------------------------------------------
# Reading files


def _index(
  directory: str, extensions: Sequence[str], report: build_report.BuildReport, what: str
) -> dict[str, str]:
  """{id: path} of the files under `directory`; an id found twice is skipped."""
  found: dict[str, list[str]] = {}
  for root, _, files in os.walk(directory):
    for name in files:
      stem, ext = os.path.splitext(name)
      if ext.lower() in extensions:
        found.setdefault(stem, []).append(os.path.join(root, name))
  unique = {}
  for image_id, paths in sorted(found.items()):
    if len(paths) > 1:
      report.skip("duplicate_file", image_id, f"several {what} files: {sorted(paths)[:3]}")
    else:
      unique[image_id] = paths[0]
  return unique


def _unit_channels(array: np.ndarray, path: str) -> tuple[np.ndarray, list[tuple[str, str]]]:
  """[H, W], [H, W, 1] or [H, W, 3/4] -> [H, W] (equal channels kept, others averaged)."""
  if array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4):
    channels = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    if all(
      np.array_equal(channels[..., 0], channels[..., c]) for c in range(1, channels.shape[-1])
    ):
      return channels[..., 0], []
    return channels.mean(axis=-1), [
      ("channels_averaged", f"{path}: {channels.shape[-1]} unequal channels")
    ]
  if array.ndim != 2:
    raise real_builder.SkipExample(
      "image_bad_shape", f"{path}: shape {array.shape}, expected [H, W] or [H, W, C]"
    )
  return array, []


def _read_png(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as image:
      return np.asarray(image)
  except (OSError, ValueError) as e:
    raise real_builder.SkipExample("png_unreadable", f"{path}: {e}") from None


def _read_npy(path: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise real_builder.SkipExample("npy_unreadable", f"{path}: {e}") from None


def read_unit_image(
  path: str, float_range=DEFAULT_FLOAT_RANGE
) -> tuple[np.ndarray, list[tuple[str, str]]]:
  """An image file as float64 [H, W] in [0, 1], and notes about it."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".dcm":
    return np.asarray(dicom.read_dicom(path).pixels, np.float64), []
  array = np.asarray(_read_png(path) if ext == ".png" else _read_npy(path))
  if array.dtype in (np.uint8, np.uint16):
    unit = array.astype(np.float64) / np.iinfo(array.dtype).max
  elif np.issubdtype(array.dtype, np.floating):
    lo, hi = float_range
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
      raise real_builder.SkipExample("value_out_of_range", f"{path}: non-finite values")
    if array.min() < lo - 1e-6 or array.max() > hi + 1e-6:
      raise real_builder.SkipExample(
        "value_out_of_range",
        f"{path}: values in [{array.min():.4g}, {array.max():.4g}], "
        f"outside float_range [{lo}, {hi}]",
      )
    unit = np.clip((array - lo) / (hi - lo), 0.0, 1.0)
  else:
    raise real_builder.SkipExample(
      "image_bad_dtype", f"{path}: dtype {array.dtype}; expected uint8, uint16 or float"
    )
  return _unit_channels(unit, path)


def read_mask(path: str) -> np.ndarray:
  """A mask file as bool [H, W] (non-zero in any channel = finding)."""
  array = np.asarray(_read_png(path) if path.lower().endswith(".png") else _read_npy(path))
  if array.ndim == 3:
    array = array.any(axis=-1)
  if array.ndim != 2:
    raise real_builder.SkipExample("mask_bad_shape", f"{path}: shape {array.shape}")
  return array != 0


# ----------------------------------------------------------------------------
# Records


def _csv_rows(path: str, needed: Sequence[str]):
  with open(path, newline="") as f:
    reader = csv.DictReader(f, skipinitialspace=True)
    reader.fieldnames = [(n or "").strip() for n in reader.fieldnames or []]
    if not set(needed) <= set(reader.fieldnames):
      raise ValueError(f"{path}: expected columns {list(needed)}, found {reader.fieldnames}")
    for line, row in enumerate(reader, start=2):
      yield line, {k: (v or "").strip() for k, v in row.items() if k}


def _read_boxes(path: str, report) -> tuple[dict[str, list], set[str]]:
  boxes, bad = {}, set()
  for line, row in _csv_rows(path, ("id", "x", "y", "width", "height")):
    image_id = splits_lib.normalize_image_id(row["id"])
    try:
      x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
      if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError("not a finite box of positive size")
    except ValueError as e:
      report.skip("csv_row_unparsable", image_id, f"{BOXES_CSV}:{line}: {e}")
      bad.add(image_id)
      continue
    boxes.setdefault(image_id, []).append((y, x, y + h, x + w))
  return boxes, bad


def _read_labels(path: str, report) -> tuple[dict[str, tuple[int, str]], set[str]]:
  labels, bad = {}, set()
  for line, row in _csv_rows(path, ("id", "label")):
    image_id = splits_lib.normalize_image_id(row["id"])
    split = row.get("split", "").lower()
    try:
      label = int(row["label"])
      if label not in (0, 1):
        raise ValueError(f"label {row['label']!r} is not 0 or 1")
      if split and split not in splits_lib._SPLIT_ALIASES:  # pylint: disable=protected-access
        raise ValueError(f"unknown split {split!r}")
      split = splits_lib._SPLIT_ALIASES.get(split, "")  # pylint: disable=protected-access
      if image_id in labels and labels[image_id] != (label, split):
        raise ValueError("listed twice with different values")
    except ValueError as e:
      report.skip("csv_row_unparsable", image_id, f"{LABELS_CSV}:{line}: {e}")
      bad.add(image_id)
      continue
    labels[image_id] = (label, split)
  return labels, bad


def read_records(
  manual_dir: str, report: build_report.BuildReport, float_range=DEFAULT_FLOAT_RANGE
) -> list[FolderRecord]:
  images = _index(os.path.join(manual_dir, IMAGES_DIR), IMAGE_EXTENSIONS, report, "image")
  masks_dir = os.path.join(manual_dir, MASKS_DIR)
  masks = _index(masks_dir, MASK_EXTENSIONS, report, "mask") if os.path.isdir(masks_dir) else {}
  path = os.path.join(manual_dir, BOXES_CSV)
  boxes, bad = _read_boxes(path, report) if os.path.exists(path) else ({}, set())
  rles: dict[str, list[str]] = {}
  path = os.path.join(manual_dir, RLE_CSV)
  if os.path.exists(path):
    for _, row in _csv_rows(path, ("id", "EncodedPixels")):
      rles.setdefault(splits_lib.normalize_image_id(row["id"]), []).append(row["EncodedPixels"])
  path = os.path.join(manual_dir, LABELS_CSV)
  labels, bad_labels = _read_labels(path, report) if os.path.exists(path) else (None, set())
  bad |= bad_labels
  report.info["labels"] = "labels.csv" if labels is not None else "ground truth present"
  report.info["float_range"] = list(float_range)
  listed = set(masks) | set(boxes) | set(rles) | set(labels or {})
  for image_id in sorted(listed - set(images) - bad):
    report.skip(
      "image_missing_file", image_id, f"ground truth or label but no image under {IMAGES_DIR}/"
    )
  records = []
  for image_id, image_path in images.items():
    if image_id in bad:
      continue
    if labels is not None and image_id not in labels:
      report.skip("label_missing", image_id, f"not listed in {LABELS_CSV}")
      continue
    label, split = labels[image_id] if labels is not None else (-1, "")
    records.append(
      FolderRecord(
        id=image_id,
        path=image_path,
        label=label,
        group=image_id,
        boxes=np.asarray(boxes.get(image_id, []), np.float64).reshape(-1, 4),
        rles=tuple(rles.get(image_id, ())),
        mask_path=masks.get(image_id, ""),
        split=split,
        float_range=tuple(float_range),
      )
    )
  return records


def make_example(
  record: FolderRecord, options: real_builder.ExampleOptions
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
  size = options.image_size
  pixels, notes = read_unit_image(record.path, record.float_range)
  rows, cols = pixels.shape
  image = dicom.quantize(dicom.resize_unit_image(pixels, (size, size)), options.image_dtype)
  truth = np.zeros((rows, cols), bool)
  if record.mask_path:
    mask = read_mask(record.mask_path)
    if mask.shape != (rows, cols):
      raise real_builder.SkipExample(
        "mask_shape_mismatch", f"{record.mask_path}: {mask.shape}, the image is {rows}x{cols}"
      )
    truth |= mask
  if record.rles:
    truth |= rle.rle_decode_union(record.rles, rows, cols).astype(bool)
  mask, redrawn = geometry.resize_mask(truth, size)
  if redrawn:
    notes.append(
      (
        "mask_redrawn_after_resize",
        f"{int(truth.sum())} pixels vanished under nearest resizing to {size}",
      )
    )
  boxes = record.boxes
  if boxes.size:
    limits = np.array([rows, cols, rows, cols], np.float64)
    outside = (boxes < -_BOX_TOLERANCE) | (boxes > limits + _BOX_TOLERANCE)
    if outside.any():
      raise real_builder.SkipExample(
        "box_outside_image",
        f"box (ymin, xmin, ymax, xmax) "
        f"{boxes[outside.any(axis=1)][0].tolist()} is outside the {rows}x{cols} image",
      )
    boxes = np.clip(geometry.scale_boxes(boxes, (rows, cols), size), 0, size)
    mask |= geometry.rasterize_boxes(boxes, size)
  has_truth = bool(mask.any())
  label = record.label if record.label >= 0 else int(has_truth)
  if label == 0 and has_truth:
    raise real_builder.SkipExample(
      "label_conflict", "label 0 in labels.csv but ground truth marks pixels"
    )
  if label == 1 and not has_truth:
    notes.append(("positive_without_ground_truth", "label 1, no mask, box or RLE"))
  example = {
    "id": record.id,
    "image": image[..., None],
    "label": label,
    "mask": mask[..., None],
    "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
  }
  return example, notes


class ImageMaskFolder(real_builder.RealCxrBuilder):
  """Images with masks, boxes or RLE from a directory (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  REQUIRED_FILES = (IMAGES_DIR,)
  DESCRIPTION = __doc__
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put your images (and ground truth) into the manual directory:
  <manual_dir>/{IMAGES_DIR}/<id>.png|.npy|.dcm
  <manual_dir>/{MASKS_DIR}/<id>.png|.npy, {BOXES_CSV}, {RLE_CSV}, {LABELS_CSV} (all optional)
Then: python -m launch.prepare_data --dataset=image_mask_folder \\
  --manual_dir=<manual_dir> --data_dir=<data_dir>"""
  BUILDER_CONFIGS = [FolderConfig(name="default")]

  make_example = staticmethod(make_example)

  def _read_records(self, manual_dir, report):
    return read_records(manual_dir, report, self.builder_config.float_range)

  def _assign_splits(self, records, report):
    if not any(r.split for r in records):
      return super()._assign_splits(records, report)
    missing = [r.id for r in records if not r.split]
    if missing:
      raise ValueError(
        f"{LABELS_CSV} gives a split to some images but not to {missing[:3]} "
        f"({len(missing)} images)"
      )
    report.info["splits"] = LABELS_CSV
    by_split: dict[str, list] = {s: [] for s in splits_lib.SPLITS}
    for record in records:
      by_split[record.split].append(record)
    return by_split
