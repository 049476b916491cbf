"""Building the real chest X-ray datasets from their manual directories.

`prepare(name, manual_dir=..., data_dir=..., image_size=320, ...)` builds
`rsna_pneumonia`, `siim_acr_pneumothorax` or `image_mask_folder` (unless already built) and returns
the name to read it with, `tfds.data_source(read_name, data_dir=data_dir)`, and
its skip report.

Restarting: TFDS writes into `<data_dir>/<name>/<config>/incomplete.XXXXXX_<version>/`
and renames it when done, so an interrupted build never looks finished and a
rerun starts again from the CSV. A build killed outright leaves that
incomplete directory behind; `prepare` removes such leftovers first
(`clean_incomplete=True`), so run one build per dataset config at a time.
"""

from collections.abc import Sequence
import glob
import logging
import os
import shutil
from typing import Any

import tensorflow_datasets as tfds

from saliency_jax.data import build_report
from saliency_jax.data import image_mask_folder
from saliency_jax.data import real_builder
from saliency_jax.data import rsna_pneumonia
from saliency_jax.data import siim_acr_pneumothorax
from saliency_jax.data import splits as splits_lib

BUILDERS: dict[str, type[real_builder.RealCxrBuilder]] = {
  "rsna_pneumonia": rsna_pneumonia.RsnaPneumonia,
  "siim_acr_pneumothorax": siim_acr_pneumothorax.SiimAcrPneumothorax,
  "image_mask_folder": image_mask_folder.ImageMaskFolder,
}


def remove_incomplete(data_dir: str, name: str, config_name: str) -> list[str]:
  """Deletes leftover `incomplete.*` build directories of one dataset config."""
  pattern = os.path.join(data_dir, name, config_name, tfds.core.constants.INCOMPLETE_PREFIX + "*")
  removed = []
  for path in sorted(glob.glob(pattern)):
    if os.path.isdir(path):
      shutil.rmtree(path)
      removed.append(path)
  return removed


def prepare(
  name: str,
  *,
  manual_dir: str,
  data_dir: str,
  image_size: int = real_builder.DEFAULT_IMAGE_SIZE,
  image_dtype: str = "uint8",
  split_seed: int = 0,
  split_fractions: Sequence[float] = splits_lib.DEFAULT_FRACTIONS,
  split_csv: str | None = None,
  check_dicom_ids: bool = True,
  num_workers: int = 1,
  clean_incomplete: bool = True,
  overwrite: bool = False,
  float_range: Sequence[float] = image_mask_folder.DEFAULT_FLOAT_RANGE,
) -> tuple[str, dict[str, Any]]:
  """Builds one real dataset; returns (read name, skip report dict).

  `float_range` is the range float NPY images of `image_mask_folder` are read from.

  A dataset already built with the same settings is reused, unless
  `overwrite` (e.g. after installing a missing decoder): then it is rebuilt
  and replaces the old one when the new build succeeds.

  Raises:
    KeyError: unknown dataset name.
    real_builder.ManualDirError: the manual directory lacks the files (the message
      says where to download them and how to lay them out).
  """
  if name not in BUILDERS:
    raise KeyError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
  options = dict(
    image_dtype=image_dtype,
    split_seed=split_seed,
    split_fractions=split_fractions,
    split_csv=split_csv,
  )
  if name == "image_mask_folder":
    config = image_mask_folder.make_config(
      manual_dir, image_size, float_range=float_range, **options
    )
  else:
    config = real_builder.make_config(image_size, **options)
  cls = BUILDERS[name]
  # TFDS takes a listed config by name only, an unlisted one as an object.
  builder = cls(
    config=config.name if config.name in cls.builder_configs else config,
    data_dir=data_dir,
    num_workers=num_workers,
    check_dicom_ids=check_dicom_ids,
  )
  if clean_incomplete and (overwrite or not builder.is_prepared()):
    for path in remove_incomplete(data_dir, name, config.name):
      logging.info("Removed the leftover of an interrupted build: %s", path)
  mode = (
    tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    if overwrite
    else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode)
  )
  report = build_report.load_report(builder.data_dir)
  return f"{name}/{config.name}", report
