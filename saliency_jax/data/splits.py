"""Train/validation/test splits of real datasets.

Two sources:

* `split_by_group`: a deterministic random split by patient. Groups (patients)
  are sorted, permuted with `numpy.random.default_rng(seed)`, and cut into
  consecutive runs of round(fraction * n) groups (the last split takes the
  rest). Every image of a patient lands in the same split, and the split of a
  patient depends only on the seed and the full set of patients (not on which
  images a build later skips).
* `read_split_csv`: the authors' published CSV (QTIM-Lab/Assessing-Saliency-
  Maps `pneumonia_splits.csv`, `pneumothorax_splits.csv`): columns `Image_ID`
  and `Split` (plus an unnamed index column), split values train / val / test.
  Image ids may carry a file extension (`<patientId>.png` for RSNA); it is
  stripped. Images absent from the CSV are left out of the dataset.
"""

from collections.abc import Iterable, Mapping, Sequence
import csv
import os

import numpy as np

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)

_SPLIT_ALIASES = {
  "train": "train",
  "training": "train",
  "val": "validation",
  "valid": "validation",
  "validation": "validation",
  "test": "test",
  "testing": "test",
}
_STRIPPED_EXTENSIONS = (".png", ".dcm", ".jpg", ".jpeg")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
  """Validates (train, validation, test) fractions: non-negative, sum to 1."""
  fractions = tuple(float(f) for f in fractions)
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
    raise ValueError(
      "split fractions must be three non-negative numbers (train, "
      f"validation, test) summing to 1, got {fractions}"
    )
  return fractions


def split_by_group(
  groups: Iterable[str], *, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, str]:
  """Assigns each distinct group (patient) to a split.

  Args:
    groups: group ids (duplicates allowed).
    seed: permutation seed.
    fractions: (train, validation, test) fractions of the groups.

  Returns:
    {group: split name}.
  """
  fractions = check_fractions(fractions)
  unique = sorted(set(groups))
  order = np.random.default_rng(seed).permutation(len(unique))
  n = len(unique)
  n_train = int(round(fractions[0] * n))
  n_val = min(n - n_train, int(round(fractions[1] * n)))
  bounds = (n_train, n_train + n_val)
  assignment = {}
  for rank, index in enumerate(order):
    split = SPLITS[0] if rank < bounds[0] else (SPLITS[1] if rank < bounds[1] else SPLITS[2])
    assignment[unique[index]] = split
  return assignment


def split_examples(
  example_groups: Mapping[str, str], *, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, str]:
  """{example id: split} from {example id: group}, splitting by group."""
  by_group = split_by_group(example_groups.values(), seed=seed, fractions=fractions)
  return {ex: by_group[group] for ex, group in example_groups.items()}


def normalize_image_id(image_id: str) -> str:
  """Strips whitespace and a trailing image extension (.png, .dcm, ...)."""
  image_id = image_id.strip()
  lower = image_id.lower()
  for ext in _STRIPPED_EXTENSIONS:
    if lower.endswith(ext):
      return image_id[: -len(ext)]
  return image_id


def read_split_csv(path: str | os.PathLike[str]) -> dict[str, str]:
  """Reads {image id: split} from a CSV with columns Image_ID and Split.

  Raises:
    ValueError: missing columns, an unknown split value, or an id listed twice
      with different splits (the file is wrong as a whole: no partial use).
  """
  path = os.fspath(path)
  assignment: dict[str, str] = {}
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    fields = {name.strip(): name for name in (reader.fieldnames or [])}
    if "Image_ID" not in fields or "Split" not in fields:
      raise ValueError(
        f"{path}: a split CSV needs columns 'Image_ID' and 'Split', found {reader.fieldnames}"
      )
    for line, row in enumerate(reader, start=2):
      image_id = normalize_image_id(row[fields["Image_ID"]] or "")
      value = (row[fields["Split"]] or "").strip().lower()
      if not image_id:
        raise ValueError(f"{path}:{line}: empty Image_ID")
      if value not in _SPLIT_ALIASES:
        raise ValueError(
          f"{path}:{line}: unknown split {value!r} for {image_id}; expected "
          f"one of {sorted(_SPLIT_ALIASES)}"
        )
      split = _SPLIT_ALIASES[value]
      if assignment.setdefault(image_id, split) != split:
        raise ValueError(
          f"{path}:{line}: {image_id} is listed in both {assignment[image_id]} and {split}"
        )
  return assignment


def prepared_splits(name: str, data_dir: str) -> frozenset[str] | None:
  """The splits of the TFDS dataset `name` prepared under `data_dir` (read from its
  dataset_info.json); None where it is not prepared there."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except ValueError:  # neither registered nor found under data_dir (a folder config's name)
    return None
  if not builder.is_prepared():
    return None
  return frozenset(builder.info.splits.keys())
