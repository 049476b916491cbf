"""Names shared by the study's stages, as data: one home for every name a record or a path holds.

The enums are `StrEnum`s: a member is the string it names, so it goes into JSON, CSV, paths and
f-strings as that string, and a plain string read back from `results.json` compares equal to it.

  SetName     the two image sets: `utility` (all positive test images) and `eval` (the seeded
              subset for the similarity criteria)
  State       a model's state: `original` (trained), `untrained` (every block re-initialized),
              `baseline` (a record of a baseline); `cascade_<block>` and `independent_<block>`
              are built by `cascade_state` / `independent_state`
  Criterion   the four criteria a verdict is given for (the scorecard's columns)
  Measure     what a record measured (its `criterion` field): the criteria's own values and the
              baselines' (`random_pairs`, `localization_agreement`), and the randomization steps
  Baseline    "methods" that are baselines: the average training mask and the localization
              network's output
  NO_MODEL    the `model` field of a record that belongs to no model (the average mask)
  RecordKey   (criterion, metric, method, model, state): the key of a column of per-image values
"""

import enum
from typing import NamedTuple


class SetName(enum.StrEnum):
  UTILITY = "utility"  # all positive test images (the paper's utility set)
  EVAL = "eval"  # the seeded subset for the SSIM criteria (the paper's 100)
  VALIDATION = "validation"  # positive validation images (CheXlocalize's threshold tuning)


class State(enum.StrEnum):
  ORIGINAL = "original"  # the trained model
  UNTRAINED = "untrained"  # every block re-initialized (the last cascading step)
  BASELINE = "baseline"  # a baseline's record (average mask, U-Net, random pairs)


CASCADE_PREFIX = "cascade_"
INDEPENDENT_PREFIX = "independent_"


def cascade_state(block: str) -> str:
  """The state with `block` and every block above it re-initialized."""
  return f"{CASCADE_PREFIX}{block}"


def independent_state(block: str) -> str:
  """The state with only `block` re-initialized."""
  return f"{INDEPENDENT_PREFIX}{block}"


class Criterion(enum.StrEnum):
  UTILITY = "utility"
  RANDOMIZATION = "randomization"
  REPEATABILITY = "repeatability"
  REPRODUCIBILITY = "reproducibility"


class Measure(enum.StrEnum):
  UTILITY = "utility"
  CASCADING = "cascading_randomization"
  INDEPENDENT = "independent_randomization"
  RANDOM_PAIRS = "random_pairs"
  REPEATABILITY = "repeatability"
  REPRODUCIBILITY = "reproducibility"
  LOCALIZATION_AGREEMENT = "localization_agreement"


class Baseline(enum.StrEnum):
  AVERAGE_MASK = "AVERAGE_MASK"  # the mean positive training mask, used as a map
  LOCALIZATION = "UNET"  # the localization network's output, scored like a map


NO_MODEL = "-"

CRITERIA = tuple(Criterion)


class RecordKey(NamedTuple):
  """The key of one column of per-image values in `record_table.index_records`."""

  criterion: str
  metric: str
  method: str
  model: str
  state: str
