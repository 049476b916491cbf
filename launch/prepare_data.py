r"""Builds a real dataset (RSNA Pneumonia, SIIM-ACR, or your own image folder) as TFDS.

  python -m launch.prepare_data --dataset=rsna_pneumonia \
    --manual_dir=/data/rsna --data_dir=/data/tfds --image_size=320 --split_seed=0
  python -m launch.prepare_data --dataset=siim_acr_pneumothorax \
    --manual_dir=/data/siim --data_dir=/data/tfds \
    --split_csv=pneumothorax_splits.csv
  python -m launch.prepare_data --dataset=image_mask_folder \
    --manual_dir=/data/my_images --data_dir=/data/tfds --split_fractions=0,0,1

Prints the skip report (also saved as skip_report.json in the dataset's
directory) and the name to read the dataset with. Rerunning after an
interruption starts the build again; rerunning after success does nothing.
"""

from collections.abc import Sequence
import sys

from absl import app
from absl import flags
from absl import logging

from saliency_jax.data import build_report
from saliency_jax.data import prepare_real
from saliency_jax.data import real_builder

_DATASET = flags.DEFINE_enum(
  "dataset", None, sorted(prepare_real.BUILDERS), "Which dataset to build."
)
_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir",
  None,
  "Directory holding the Kaggle files (see the error "
  "message of a run without them for the layout).",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write into.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 320, "Stored square image and mask size.")
_IMAGE_DTYPE = flags.DEFINE_enum("image_dtype", "uint8", ["uint8", "uint16"], "Stored image type.")
_SPLIT_SEED = flags.DEFINE_integer("split_seed", 0, "Seed of the split by patient.")
_SPLIT_FRACTIONS = flags.DEFINE_list(
  "split_fractions", ["0.8", "0.1", "0.1"], "Train, validation, test fractions of patients."
)
_SPLIT_CSV = flags.DEFINE_string(
  "split_csv",
  None,
  "CSV with columns Image_ID and Split (e.g. the "
  "authors' pneumonia_splits.csv / pneumothorax_splits.csv); overrides the "
  "seeded split, and images it does not list are left out.",
)
_FLOAT_RANGE = flags.DEFINE_list(
  "float_range",
  ["-1", "1"],
  "image_mask_folder: the range of float .npy images (the authors' samples: -1,1).",
)
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 1, "Threads decoding DICOM files.")
_CHECK_DICOM_IDS = flags.DEFINE_bool(
  "check_dicom_ids",
  True,
  "Skip images whose DICOM PatientID (RSNA) or SOPInstanceUID (SIIM) differs from the CSV's id.",
)

_OVERWRITE = flags.DEFINE_bool(
  "overwrite",
  False,
  "Rebuild even if this dataset config was built "
  "already (e.g. after installing a missing DICOM decoder).",
)

flags.mark_flags_as_required(["dataset", "manual_dir", "data_dir"])

_HOW_TO_READ = """\
How to read the report: "written" counts the examples per split; every other
line is a reason an image was left out, with its count and the first few ids
and messages. dicom_* reasons come from the DICOM file (missing_file,
unreadable, truncated_pixel_data, missing_plugin: install the named package,
then rerun with --overwrite);
csv_row_unparsable and label_conflict from the CSV; rle_* from an RLE string;
box_outside_image and id_mismatch from a CSV that does not match its DICOM.
A few skips on the Kaggle data are expected; hundreds mean a wrong layout
or a missing decoder."""


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  try:
    name, report = prepare_real.prepare(
      _DATASET.value,
      manual_dir=_MANUAL_DIR.value,
      data_dir=_DATA_DIR.value,
      image_size=_IMAGE_SIZE.value,
      image_dtype=_IMAGE_DTYPE.value,
      split_seed=_SPLIT_SEED.value,
      split_fractions=[float(f) for f in _SPLIT_FRACTIONS.value],
      split_csv=_SPLIT_CSV.value,
      num_workers=_NUM_WORKERS.value,
      check_dicom_ids=_CHECK_DICOM_IDS.value,
      overwrite=_OVERWRITE.value,
      float_range=[float(v) for v in _FLOAT_RANGE.value],
    )
  except (real_builder.ManualDirError, real_builder.EmptySplitError) as e:
    sys.exit(f"prepare_data: {e}")
  logging.info("Built %s in %s", name, _DATA_DIR.value)
  print(build_report.format_report(report))
  print(_HOW_TO_READ)
  print(
    f"\nRead it with:\n  import saliency_jax.data, tensorflow_datasets as tfds\n"
    f"  tfds.data_source({name!r}, data_dir={_DATA_DIR.value!r})\n"
    f"In a study config:\n  config.data.name = {name!r}\n"
    f"  config.data.data_dir = {_DATA_DIR.value!r}"
  )


if __name__ == "__main__":
  app.run(main)
