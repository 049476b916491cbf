"""The sanity checks beyond the paper inside the study: their names, map states and config.

Each check is a section of `config.sanity` with `enabled` and its settings:

  data_randomization  models trained on permuted labels (train stage, resumable like the
                      others: models/<name>_permuted_labels/); their maps (state
                      "data_randomized") compared with the trained model's.
  smooth_mprt         maps averaged over noisy copies (states "smoothed_original" and
                      "smoothed_untrained"), trained vs fully randomized model.
  efficient_mprt      histogram entropy of the trained and the fully randomized model's maps.
  random_logit        maps of another class (state "other_class") vs the explained class's.
  input_invariance    maps of the shifted input from the model with its first layer adjusted
                      (state "input_shifted") vs the original maps.
  faithfulness        deletion / insertion / ROAD / SIC / AIC of the trained model's maps,
                      computed in the maps stage (sanity/faithfulness/<model>/<method>.npz).

Map states are stores like the paper's (maps/eval/<model>/<state>/<method>), so any criterion
(e.g. the robustness grid) can read them with a `MapReader`; `COMPARISONS` names which pair of
states each similarity check compares. The maps stage makes the maps and faithfulness values
(it has the models: `sanity_maps.generate_maps(stage)`); scoring reads them with the run
manifest, a `MapReader` and `config.sanity` (`sanity_records.records`,
`sanity_scoring.summarize`). Records use the study's tidy fields. Here: the checks' names and
states, which of them a config runs, and its validation.
"""

from collections.abc import Sequence
import os

from saliency_jax.sanity import faithfulness
from saliency_jax.trust.names import State

CHECKS = (
  "data_randomization",
  "smooth_mprt",
  "efficient_mprt",
  "random_logit",
  "input_invariance",
  "faithfulness",
)
DATA_RANDOMIZED = "data_randomized"
SMOOTHED_ORIGINAL = "smoothed_original"
SMOOTHED_UNTRAINED = "smoothed_untrained"
OTHER_CLASS = "other_class"
INPUT_SHIFTED = "input_shifted"
PERMUTED_SUFFIX = "_permuted_labels"
RANDOM_ORDER = "RANDOM_ORDER"  # faithfulness baseline: pixels removed in a random order
FULLY_RANDOMIZED = "fully_randomized"  # record state of eMPRT's randomized model

# check -> (state of the first maps, state of the second maps) of a similarity check.
COMPARISONS = {
  "data_randomization": (State.ORIGINAL, DATA_RANDOMIZED),
  "smooth_mprt": (SMOOTHED_ORIGINAL, SMOOTHED_UNTRAINED),
  "random_logit": (State.ORIGINAL, OTHER_CLASS),
  "input_invariance": (State.ORIGINAL, INPUT_SHIFTED),
}
FAITHFULNESS_METRICS = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "sic", "aic")


def enabled(config, check: str) -> bool:
  """Whether the whole config runs `check`."""
  return section_enabled(config.get("sanity", None), check)


def section_enabled(sanity_config, check: str) -> bool:
  """Whether `config.sanity` (None: no checks) runs `check`."""
  return bool(sanity_config is not None and check in sanity_config and sanity_config[check].enabled)


def _methods(sanity_config, check: str, computed: Sequence[str]) -> list[str]:
  """The methods a check makes maps of: sMPRT's `methods` (empty: all), else all."""
  if check == "smooth_mprt" and sanity_config.smooth_mprt.methods:
    return list(sanity_config.smooth_mprt.methods)
  return list(computed)


def enabled_checks(config) -> list[str]:
  return [c for c in CHECKS if enabled(config, c)]


def validate(config) -> None:
  """Clear errors for a bad `config.sanity` before any stage runs."""
  sanity = config.get("sanity", None)
  if sanity is None:
    return
  unknown = sorted(set(sanity) - set(CHECKS))
  if unknown:
    raise ValueError(f"config.sanity has unknown checks {unknown}; known: {list(CHECKS)}")
  names = [m["name"] for m in config.models]
  for check in enabled_checks(config):
    for model in sanity[check].get("models", ()):
      if model not in names:
        raise ValueError(
          f"config.sanity.{check}.models names {model!r}, not one of config.models {names}"
        )
  if enabled(config, "smooth_mprt"):
    bad = [m for m in sanity.smooth_mprt.methods if m not in config.methods.names]
    if bad:
      raise ValueError(f"config.sanity.smooth_mprt.methods {bad} are not in config.methods.names")
  if enabled(config, "faithfulness"):
    f = sanity.faithfulness
    if f.baseline not in faithfulness.BASELINES:
      raise ValueError(
        f"config.sanity.faithfulness.baseline must be one of "
        f"{faithfulness.BASELINES}, got {f.baseline!r}"
      )
    for field in ("road_percentages", "pic_thresholds"):
      values = list(f[field])
      if not values or min(values) <= 0 or max(values) >= 1 or values != sorted(values):
        raise ValueError(
          f"config.sanity.faithfulness.{field} must be ascending fractions in (0, 1), got {values}"
        )


def faithfulness_path(workdir: str, model: str, method: str) -> str:
  return os.path.join(workdir, "sanity", "faithfulness", model, f"{method}.npz")
