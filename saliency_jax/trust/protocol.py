"""The protocol choices on which a verdict depends, each named, with the paper's value.

Arun et al. (2021) drew their verdicts with choices that the paper does not all state; they are
read from the authors' scripts (QTIM-Lab/Assessing-Saliency-Maps, `scripts/`). Every choice is a
field of the run's config (most under `config.protocol`), `configs/default.py` holds the paper's
value, and the report prints `table(config)`: each choice, its value in the run, the paper's,
and what differs when they differ.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Choice:
  """One protocol choice.

  Attributes:
    name: what is chosen, in a few words (the table's first column).
    field: where it lives in the config (dotted path).
    paper: the authors' value.
    values: the accepted values (None: `check` below validates the field).
    consequence: what a run that differs from the paper reports differently.
    paper_for: the authors' value for a run's config where it depends on the dataset (e.g. the
      localization network's agreement: SIIM's U-Net masks, RSNA's RetinaNet score maps).
  """

  name: str
  field: str
  paper: Any
  values: tuple | None
  consequence: str
  paper_for: Callable[[Any], Any] | None = None

  def paper_value(self, config) -> Any:
    return self.paper if self.paper_for is None else self.paper_for(config)


def _field(config, path: str) -> Any:
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def utility_baselines(config) -> tuple[str, ...]:
  """The baselines the run's utility rules compare with (the rules' `baseline`)."""
  from saliency_jax.trust import verdicts  # pylint: disable=g-import-not-at-top

  return tuple(
    rule["baseline"]
    for rule in verdicts.rules_from_config(config.study).values()
    if rule["criterion"] == "utility"
  )


CHOICES: tuple[Choice, ...] = (
  Choice(
    "target class of randomized models",
    "protocol.randomized_target",
    "recomputed",
    ("recomputed", "trained"),
    "every randomized state explains the trained model's class, not its own prediction",
  ),
  Choice(
    "cascade: blocks left trained at the bottom",
    "protocol.cascade_keep",
    2,
    None,
    "the curve (and the randomization verdict, read at its last step) goes further "
    "down than the authors' (they stopped above mixed0 and the stem)",
  ),
  Choice(
    "randomization verdict over architectures",
    "protocol.randomization_pooling",
    "per_architecture",
    ("per_architecture", "pooled"),
    "one verdict averages the architectures, values and baseline",
  ),
  Choice(
    "random-pair baseline",
    "protocol.random_pairs",
    "scalar",
    ("scalar", "per_image"),
    "the baseline is per image and per model (paired test), not one number per method "
    "from replicate 1's original maps (one-sample test)",
  ),
  Choice(
    "utility baselines (rules' `baseline`)",
    "study.rules",
    ("average_mask", "localization_network"),
    None,
    "the scorecard compares utility with other baselines than the paper's two",
  ),
  Choice(
    "localization-network agreement",
    "protocol.localization_agreement",
    "binary_uint8",
    ("binary_uint8", "probability"),
    "the authors compared binary uint8 masks (range 255) of their U-Nets (SIIM) and the "
    "score maps of their RetinaNets (RSNA); this run does the other",
    paper_for=lambda config: "probability" if _arch(config) == "retinanet" else "binary_uint8",
  ),
  Choice(
    "images of repeatability/reproducibility",
    "protocol.agreement_images",
    "utility",
    ("utility", "eval"),
    "agreement is measured on the sampled evaluation set, not on all utility images",
  ),
  Choice(
    "which utility images",
    "protocol.utility_images",
    "first",
    ("first", "sampled"),
    "a seeded sample of the positive test images, not the first ones in test order",
  ),
  Choice(
    "min-max normalization of every map",
    "protocol.minmax_maps",
    True,
    (True, False),
    "GGCAM (a product of two [0, 1] maps) is scored without rescaling to [0, 1]",
  ),
  Choice(
    "IG / SIG baseline",
    "protocol.ig_baseline",
    "minus_one",
    ("minus_one", "black"),
    "the baseline is a black image in each model's input space (for ImageNet scaling not -1)",
  ),
  Choice(
    "stored map precision",
    "study.map_dtype",
    "float32",
    ("float32",),
    "(only float32: float16 merges distinct values into ties and moves AUPRC)",
  ),
  Choice(
    "precision of the maps' model passes",
    "methods.settings.*.compute_dtype",
    "float32",
    None,
    "these methods' model passes ran in bfloat16 (each image's metrics move by up to about "
    "0.03, their means by about 0.005: docs/benchmarks.md)",
  ),
  Choice(
    "cohort (dataset split)",
    "protocol.cohort",
    "authors_split",
    ("authors_split", "any"),
    "the dataset is not the authors' split (e.g. RSNA with the 'No Lung Opacity / Not "
    "Normal' class)",
  ),
  Choice(
    "classifier initialization",
    "protocol.init",
    "imagenet",
    ("imagenet", "random"),
    "classifiers train from random initialization, not ImageNet weights",
  ),
  Choice(
    "XRAI region scores to grayscale",
    "protocol.xrai_grayscale",
    "abs",
    ("abs", "shifted"),
    "XRAI's region scores are shifted so the lowest is darkest, where PAIR's grayscale "
    "of |score| makes strongly negative regions bright",
  ),
)

BY_FIELD = {c.field: c for c in CHOICES}


def paper_protocol() -> ml_collections.ConfigDict:
  """`config.protocol` with the paper's value of every choice that lives there."""
  return ml_collections.ConfigDict(
    {c.field.split(".", 1)[1]: c.paper for c in CHOICES if c.field.startswith("protocol.")}
  )


def _arch(config) -> str:
  try:
    return config.localization.arch
  except (KeyError, AttributeError):
    return "unet"


def compute_dtypes(config) -> str:
  """ "float32", or each other compute dtype with the methods that set it ("bfloat16: SG, IG")."""
  settings = config.get("methods", {}).get("settings", {}) or {}
  by_dtype: dict[str, list[str]] = {}
  for method, method_settings in settings.items():
    dtype = (method_settings or {}).get("compute_dtype", "float32")
    if dtype != "float32":
      by_dtype.setdefault(dtype, []).append(method)
  return "; ".join(f"{d}: {', '.join(m)}" for d, m in sorted(by_dtype.items())) or "float32"


def value(config, choice: Choice) -> Any:
  """The run's value of a choice; the paper's where the config does not set it."""
  if choice.field == "study.rules":
    return utility_baselines(config)
  if choice.field == "methods.settings.*.compute_dtype":
    return compute_dtypes(config)
  try:
    return _field(config, choice.field)
  except (KeyError, AttributeError):
    return choice.paper


def table(config) -> list[list[str]]:
  """Rows of the protocol table: choice, field, value in this run, paper's value, consequence."""
  rows = []
  for choice in CHOICES:
    current, paper = value(config, choice), choice.paper_value(config)
    rows.append(
      [
        choice.name,
        f"`{choice.field}`",
        _text(current),
        _text(paper),
        "as the paper" if _same(current, paper) else choice.consequence,
      ]
    )
  return rows


def differs(config) -> list[str]:
  """Fields whose value is not the paper's."""
  return [c.field for c in CHOICES if not _same(value(config, c), c.paper_value(config))]


def _same(a, b) -> bool:
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return tuple(a) == tuple(b)
  return a == b


def _text(v) -> str:
  if isinstance(v, (list, tuple)):
    return ", ".join(str(x) for x in v) or "(none)"
  return str(v)


def check(config, fail: Callable[[str, str], None]) -> None:
  """Calls fail(field, problem) for every protocol value outside its accepted values."""
  known = {c.field.split(".", 1)[1] for c in CHOICES if c.field.startswith("protocol.")}
  protocol = config.get("protocol")
  if protocol is None:
    fail("protocol", "missing (start from configs/default.py)")
    return
  for key in sorted(set(protocol) - known):
    fail(f"protocol.{key}", f"unknown protocol choice; known: {', '.join(sorted(known))}")
  for key in sorted(known - set(protocol)):
    fail(f"protocol.{key}", "missing")
  for choice in CHOICES:
    if choice.values is None or choice.field == "study.rules":
      continue
    try:
      current = _field(config, choice.field)
    except KeyError:
      continue
    if current not in choice.values or type(current) is not type(choice.paper):
      fail(choice.field, f"{current!r} is not one of {', '.join(map(repr, choice.values))}")
  keep = protocol.get("cascade_keep")
  if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 0):
    fail("protocol.cascade_keep", f"must be an integer >= 0, got {keep!r}")
