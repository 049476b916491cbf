"""The config's checks against what the run reads: the dataset's cohort and splits, and the
ImageNet weights of the architectures trained here. `config_check.validate` runs them for a
study that trains (not for models and images given from Python); each reports a problem with
`fail(field, problem)`.
"""

import os

from saliency_jax.data import splits
from saliency_jax.trust import checks


def check_cohort_and_init(config, fail, synthetic: bool, detector_weights: str | None) -> None:
  """The cohort the protocol asks for is the dataset's, and each architecture trained here has
  the weights `protocol.init` asks for (`detector_weights`: the localization detector's
  backbone, which needs them too; None without a detector)."""
  p = config.protocol
  data_config = config.data.name.partition("/")[2]
  if p.get("cohort") == "authors_split":
    if synthetic:
      fail(
        "protocol.cohort",
        "the synthetic dataset has no authors' split: set protocol.cohort = 'any'",
      )
    elif "_csv" not in data_config:
      fail(
        "protocol.cohort",
        f"data.name = {config.data.name!r} is not a dataset prepared "
        "with the authors' split (launch.prepare_data --split_csv=...; its config name has "
        "'_csv'). Without it RSNA keeps the 'No Lung Opacity / Not Normal' images the "
        "authors left out. To run on another cohort anyway: "
        "--config.protocol.cohort=any",
      )
  # Architectures trained here from ImageNet weights (a model given with its weights is not).
  archs = sorted(
    {
      dict(spec)["arch"]
      for spec in config.models
      if dict(spec).get("arch") and not dict(spec).get("weights")
    }
  )
  if detector_weights is not None:
    archs.append(detector_weights)
  weights = config.weights
  for arch in sorted(set(weights.keys()) - set(archs)):
    fail(f"weights.{arch}", f"no model has this architecture ({archs})")
  if p.get("init") == "imagenet":
    for arch in archs:
      path = weights.get(arch, "")
      if not path:
        fail(
          f"weights.{arch}",
          "empty: the paper's networks start from ImageNet weights. "
          "Pass the Keras notop weight file, or train from random initialization with "
          "--config.protocol.init=random",
        )
      elif not os.path.exists(path):
        fail(f"weights.{arch}", f"{path!r} does not exist")
  elif p.get("init") == "random":
    for arch in archs:
      if weights.get(arch, ""):
        fail(
          f"weights.{arch}",
          "set, but protocol.init = 'random' trains from random "
          "initialization: clear it or set protocol.init = 'imagenet'",
        )


def _split_readers(config) -> dict[str, list[str]]:
  """{split: what in the config reads it, with how to do without}."""
  from saliency_jax.trust import sanity  # pylint: disable=g-import-not-at-top

  trained = [
    spec["name"]
    for spec in map(dict, config.models)
    if not (spec.get("weights") or spec.get("keras_model"))
  ]
  trainers = []
  if trained:
    trainers.append(f"models {trained} (trained here: give them `weights` to load instead)")
  if len(config.localization.seeds):
    trainers.append("the localization networks (localization.seeds = () for none)")
  if sanity.enabled(config, "data_randomization"):
    trainers.append("sanity.data_randomization (enabled=False to skip)")
  tuning = ["study.chexlocalize (thresholds tuned on validation images; enabled=False to skip)"]
  return {
    "train": trainers + ["the utility baseline's average training mask"],
    "validation": trainers + (tuning if checks.enabled(config.study, "chexlocalize") else []),
    "test": ["the utility and eval image sets"],
  }


def check_splits(config, fail, synthetic: bool) -> None:
  """Every split the run reads exists: the synthetic dataset's counts, or the splits of the
  prepared real dataset (one not prepared yet under data.data_dir is not checked here)."""
  d = config.data
  if synthetic:
    counts = (d.num_train, d.num_val, d.num_test)
    present = {split for split, n in zip(splits.SPLITS, counts) if n > 0}
  else:
    present = splits.prepared_splits(d.name, d.data_dir) if d.data_dir else None
    if present is None:
      return
  for split, readers in _split_readers(config).items():
    if readers and split not in present:
      fail(
        "data.name",
        f"the dataset {d.name!r} has no {split!r} split, which these read: "
        + "; ".join(readers)
        + ". Give it one (labels.csv's split column or launch.prepare_data --split_fractions "
        "for image_mask_folder; data.num_* for the synthetic dataset) or turn those off.",
      )
