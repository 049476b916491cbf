"""What the real chest X-ray builders share: config, geometry, skip accounting.

`rsna_pneumonia` and `siim_acr_pneumothorax` subclass `RealCxrBuilder`. A
subclass reads its CSV into `Record`s (one per image; bad rows are skipped and
reported) and turns one record into an example with `make_example` (a
module-level function without shared state, so that it can run in worker
threads); every `SkipExample`, `DicomError` or `RleError` it raises becomes a
counted skip.
Box and mask geometry: `saliency_jax.data.geometry`.
"""

import collections
from collections.abc import Callable, Iterator, Sequence
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from saliency_jax.data import build_report
from saliency_jax.data import dicom
from saliency_jax.data import rle
from saliency_jax.data import splits as splits_lib
from saliency_jax.data import tfds_compat

DEFAULT_IMAGE_SIZE = 320


class SkipExample(Exception):
  """Raised while building one example: leave it out, for `reason`."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


class EmptySplitError(RuntimeError):
  """Every image of a split was skipped (e.g. no decoder for any of them)."""


class ManualDirError(FileNotFoundError):
  """The manual directory is missing or lacks the dataset's files."""


@dataclasses.dataclass(eq=False)
class RealCxrConfig(tfds.core.BuilderConfig):
  """Build options of a real chest X-ray dataset.

  Attributes:
    image_size: S, the stored square size of images and masks.
    image_dtype: "uint8" or "uint16" (the [0, 1] image times 255 or 65535).
    split_seed: seed of the split by patient (ignored with `split_csv`).
    split_fractions: (train, validation, test) fractions of patients.
    split_csv: a CSV with columns Image_ID and Split (the authors' splits);
      images it does not list are left out.
  """

  image_size: int = DEFAULT_IMAGE_SIZE
  image_dtype: str = "uint8"
  split_seed: int = 0
  split_fractions: tuple[float, float, float] = splits_lib.DEFAULT_FRACTIONS
  split_csv: str | None = None


def config_name(
  image_size: int = DEFAULT_IMAGE_SIZE,
  image_dtype: str = "uint8",
  split_seed: int = 0,
  split_fractions: Sequence[float] = splits_lib.DEFAULT_FRACTIONS,
  split_csv: str | None = None,
) -> str:
  """A config name that differs whenever the stored data would differ.

  "320" is the default (320 px, uint8, split by patient with seed 0 and
  80/10/10 fractions); options add "_u16", "_seed3", "_f70-15-15" or
  "_csv<first 8 hex digits of the CSV's sha256>".
  """
  name = str(int(image_size))
  if np.dtype(image_dtype) == np.uint16:
    name += "_u16"
  if split_csv:
    with open(split_csv, "rb") as f:
      name += "_csv" + hashlib.sha256(f.read()).hexdigest()[:8]
    return name
  if split_seed != 0:
    name += f"_seed{int(split_seed)}"
  fractions = splits_lib.check_fractions(split_fractions)
  if not np.allclose(fractions, splits_lib.DEFAULT_FRACTIONS):
    name += "_f" + "-".join(f"{100 * f:g}" for f in fractions)
  return name


def make_config(
  image_size: int = DEFAULT_IMAGE_SIZE,
  *,
  image_dtype: str = "uint8",
  split_seed: int = 0,
  split_fractions: Sequence[float] = splits_lib.DEFAULT_FRACTIONS,
  split_csv: str | None = None,
  name: str | None = None,
) -> RealCxrConfig:
  """A `RealCxrConfig` named by `config_name` unless `name` is given."""
  if np.dtype(image_dtype) not in (np.uint8, np.uint16):
    raise ValueError(f"image_dtype must be uint8 or uint16, got {image_dtype}")
  if image_size < 1:
    raise ValueError(f"image_size must be positive, got {image_size}")
  if split_csv is not None:
    split_csv = os.path.abspath(split_csv)
  name = name or config_name(image_size, image_dtype, split_seed, split_fractions, split_csv)
  return RealCxrConfig(
    name=name,
    description=(
      f"{image_size}x{image_size} {np.dtype(image_dtype).name}, "
      + (
        f"splits from {os.path.basename(split_csv)}"
        if split_csv
        else f"split by patient, seed {split_seed}, fractions {tuple(split_fractions)}"
      )
    ),
    image_size=int(image_size),
    image_dtype=np.dtype(image_dtype).name,
    split_seed=int(split_seed),
    split_fractions=splits_lib.check_fractions(split_fractions),
    split_csv=split_csv,
  )


# ----------------------------------------------------------------------------
# Records and examples


@dataclasses.dataclass
class Record:
  """What the CSV says about one image.

  Attributes:
    id: patientId (RSNA) or ImageId (SIIM).
    path: the DICOM file.
    label: 0 or 1 per the CSV.
    group: the patient, for the split.
    boxes: RSNA boxes (ymin, xmin, ymax, xmax) at the original size.
    rles: SIIM RLE strings (to be unioned).
  """

  id: str
  path: str
  label: int
  group: str = ""
  boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))
  rles: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ExampleOptions:
  """The parts of the config that `make_example` functions need."""

  image_size: int
  image_dtype: str
  check_dicom_ids: bool


# A make_example function returns (example dict, notes) or raises SkipExample.
MakeExample = Callable[[Record, ExampleOptions], tuple[dict[str, Any], list[tuple[str, str]]]]


def _run_one(
  make_example: MakeExample, options: ExampleOptions, record: Record
) -> tuple[str, Any, Any]:
  """Runs make_example; returns ("ok", example, notes) or ("skip", reason, detail)."""
  try:
    example, notes = make_example(record, options)
    return "ok", example, notes
  except SkipExample as e:
    return "skip", e.reason, e.detail
  except dicom.DicomError as e:
    return "skip", f"dicom_{e.reason}", str(e)
  except rle.RleError as e:
    return "skip", f"rle_{e.reason}", str(e)


class _ExampleRunner:
  """Callable running one record through make_example with fixed options."""

  def __init__(self, make_example: MakeExample, options: ExampleOptions):
    self.make_example = make_example
    self.options = options

  def __call__(self, record: Record) -> tuple[str, Any, Any]:
    return _run_one(self.make_example, self.options, record)


def _map_records(
  runner: _ExampleRunner, records: Sequence[Record], num_workers: int
) -> Iterator[tuple[str, Any, Any]]:
  """Runs `runner` over records in order, in `num_workers` threads.

  Threads, not processes: decoding (pydicom's C decoders, NumPy) and resizing
  (scikit-image/SciPy) spend most of their time outside the GIL, and threads
  neither re-import the library in every worker nor fork a process that may
  hold JAX's threads.
  """
  if num_workers <= 1:
    yield from map(runner, records)
    return
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    # Bounded look-ahead keeps memory flat on 26k-image datasets.
    window = 8 * num_workers
    pending = collections.deque()
    for record in records:
      pending.append(pool.submit(runner, record))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def image_id_check(expected: str, found: str | None, what: str) -> None:
  """SkipExample("id_mismatch") when the DICOM names another image."""
  if found is not None and found.strip() and found.strip() != expected:
    raise SkipExample(
      "id_mismatch", f"the CSV id is {expected} but the DICOM {what} is {found.strip()}"
    )


# ----------------------------------------------------------------------------
# The builder


class RealCxrBuilder(
  tfds_compat.ModuleFileCodePath, tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """Base of the real chest X-ray builders (array_record, no TensorFlow).

  Subclasses set VERSION, MANUAL_DOWNLOAD_INSTRUCTIONS, LABEL_NAMES,
  REQUIRED_FILES and implement `_read_records` and `make_example`.

  Besides the tfds arguments (config, data_dir, ...), the constructor takes
  options that do not change what a correct build stores:
    num_workers: threads decoding DICOMs (1: in the calling thread).
    check_dicom_ids: skip an image whose DICOM PatientID (RSNA) or
      SOPInstanceUID (SIIM) differs from the id the CSV gives it.
  """

  BUILDER_CONFIGS = [make_config()]
  LABEL_NAMES: tuple[str, str] = ("negative", "positive")
  # Paths relative to the manual dir that must exist, for the error message.
  REQUIRED_FILES: tuple[str, ...] = ()
  DESCRIPTION = ""
  make_example: MakeExample

  def __init__(
    self, *args, file_format=None, num_workers: int = 1, check_dicom_ids: bool = True, **kwargs
  ):
    # array_record is what tfds.data_source reads without TensorFlow.
    super().__init__(*args, file_format=file_format or "array_record", **kwargs)
    self.num_workers = int(num_workers)
    self.check_dicom_ids = bool(check_dicom_ids)
    self._report: build_report.BuildReport | None = None

  # -- subclass hooks --------------------------------------------------------

  def _read_records(self, manual_dir: str, report: build_report.BuildReport) -> list[Record]:
    raise NotImplementedError

  # -- tfds ------------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    dtype = np.dtype(self.builder_config.image_dtype)
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "id": tfds.features.Text(),
          "image": tfds.features.Tensor(shape=(size, size, 1), dtype=dtype, encoding="zlib"),
          "label": tfds.features.ClassLabel(names=list(self.LABEL_NAMES)),
          "mask": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8, encoding="zlib"),
          "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def manual_dir_error(self, manual_dir: str, missing: Sequence[str]) -> str:
    return (
      f"The {self.name} manual directory {manual_dir!r} is missing "
      f"{', '.join(missing)}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )

  def _manual_dir(self, dl_manager) -> str:
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:
      # tfds: "Manual directory ... does not exist or is empty".
      manual_dir = os.fspath(getattr(dl_manager, "_manual_dir", "") or "")
      raise ManualDirError(
        self.manual_dir_error(manual_dir or "(not given)", list(self.REQUIRED_FILES))
      ) from None
    missing = [f for f in self.REQUIRED_FILES if not os.path.exists(os.path.join(manual_dir, f))]
    if missing:
      raise ManualDirError(self.manual_dir_error(manual_dir, missing))
    return manual_dir

  def _assign_splits(
    self, records: list[Record], report: build_report.BuildReport
  ) -> dict[str, list[Record]]:
    config = self.builder_config
    if config.split_csv:
      assignment = splits_lib.read_split_csv(config.split_csv)
      known = {r.id for r in records}
      unknown = [i for i in assignment if i not in known]
      report.info["split_csv"] = config.split_csv
      report.info["split_csv_ids_not_in_labels"] = len(unknown)
      for image_id in unknown:
        report.note(
          "split_csv_id_not_in_labels",
          image_id,
          "listed in the split CSV but absent from the labels CSV",
        )
      not_listed = [r for r in records if r.id not in assignment]
      report.info["images_not_in_split_csv"] = len(not_listed)
    else:
      assignment = splits_lib.split_examples(
        {r.id: r.group or r.id for r in records},
        seed=config.split_seed,
        fractions=config.split_fractions,
      )
      report.info["split_seed"] = config.split_seed
      report.info["split_fractions"] = list(config.split_fractions)
    by_split: dict[str, list[Record]] = {s: [] for s in splits_lib.SPLITS}
    for record in records:
      if record.id in assignment:
        by_split[assignment[record.id]].append(record)
    return by_split

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    report = self._report
    if report is None:  # _split_generators called outside download_and_prepare
      report = self._report = build_report.BuildReport(self._report_name())
    records = self._read_records(manual_dir, report)
    by_split = self._assign_splits(records, report)
    return {split: self._generate_examples(split, recs) for split, recs in by_split.items() if recs}

  def _generate_examples(self, split: str, records: Sequence[Record]):
    config = self.builder_config
    options = ExampleOptions(config.image_size, config.image_dtype, self.check_dicom_ids)
    runner = _ExampleRunner(type(self).make_example, options)
    report = self._report
    written = 0
    for record, (status, a, b) in zip(records, _map_records(runner, records, self.num_workers)):
      if status == "skip":
        report.skip(a, record.id, b)
        continue
      for name, detail in b:
        report.note(name, record.id, detail)
      report.wrote(split)
      written += 1
      yield record.id, a
    if not written:
      # TFDS cannot write an empty split; say why instead of its assertion.
      raise EmptySplitError(
        f"Every one of the {len(records)} images of split {split!r} was "
        f"skipped, so {self.name} cannot be built.\n{report.format()}"
      )

  def _report_name(self) -> str:
    return f"{self.name}/{self.builder_config.name}/{self.version}"

  def _download_and_prepare(self, dl_manager, download_config=None, **kwargs):
    self._report = build_report.BuildReport(self._report_name())
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config, **kwargs)
    # self.data_dir is still the incomplete directory here, so the report is
    # moved into place together with the dataset.
    self._report.write(self.data_dir)
    logging.info(
      "%s\n(saved as %s in the dataset directory)",
      self._report.format(),
      build_report.REPORT_FILENAME,
    )

  @property
  def report(self) -> build_report.BuildReport | None:
    """The report of the last build done by this builder object."""
    return self._report
