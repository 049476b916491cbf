"""Checks a study's whole config before the first stage, naming every bad field.

`validate(config)` raises `ConfigError` listing each problem as "<field>: <problem>", so a
misspelt method, a negative count or an image size the U-Net cannot halve stops the run in a
second instead of after training. The schema is configs/default.py's: a field it does not have
is an error (a typo would otherwise be silently ignored), except the synthetic dataset's own
fields (SYNTHETIC_DATA_FIELDS), which only a synthetic run may set.
"""

import os
from typing import Any

from saliency_jax import attributions
from saliency_jax import models
from saliency_jax.data import pipeline
from saliency_jax.models import plugin
from saliency_jax.trust import checks
from saliency_jax.trust import config_check_data
from saliency_jax.trust import protocol
from saliency_jax.trust import verdict_tests
from saliency_jax.trust import verdicts

SYNTHETIC = "synthetic_cxr"
SYNTHETIC_DATA_FIELDS = {
  "num_train": int,
  "num_val": int,
  "num_test": int,
  "positive_fraction": float,
  "difficulty": float,
}
# Training fields only a detector (localization.arch "retinanet") has.
DETECTOR = "retinanet"
DETECTOR_TRAIN_FIELDS = ("max_boxes", "box_loss")
DETECTOR_WEIGHTS = "resnet50"  # the RetinaNet backbone's Keras ImageNet weights
# Optional top-level sections with their own check (not in configs/default.py): the sanity
# checks beyond the paper (configs/synthetic.py), checked by saliency_jax.trust.sanity.
OPTIONAL_SECTIONS = ("sanity",)
TRAIN_DTYPES = ("float32", "bfloat16")
RULE_KEYS = {"criterion", "metric", "baseline", "alternative", "test", "text"}
ALTERNATIVES = ("greater", "less")
CORRECTIONS = ("holm", "bh")
TARGETS = ("predicted", "label")


class ConfigError(ValueError):
  """The config has problems; `problems` lists (field, problem)."""

  def __init__(self, problems: list[tuple[str, str]]):
    self.problems = problems
    super().__init__("invalid config:\n" + "\n".join(f"  {f}: {p}" for f, p in problems))


def _default_schema():
  from configs import default  # pylint: disable=g-import-not-at-top

  return default.get_config()


def validate(config, schema=None, *, given: bool = False) -> None:
  """Raises ConfigError naming every problem of `config` (None if there is none).

  `given`: models and images come from Python (saliency_jax.api), so config.data and
  config.models do not describe them, nothing is trained and there are no localization
  networks: those sections are not checked.
  """
  problems: list[tuple[str, str]] = []

  def fail(field: str, problem: str) -> None:
    problems.append((field, problem))

  schema = _default_schema() if schema is None else schema
  synthetic = given or config.get("data", {}).get("name", "") == SYNTHETIC
  detector = config.get("localization", {}).get("arch", "") == DETECTOR
  _check_keys(config, schema, "", fail, synthetic, detector)
  if problems:  # the checks below read the fields the schema promises
    raise ConfigError(problems)
  if given:
    names = [dict(spec)["name"] for spec in config.models]
  else:
    _check_data(config, fail, synthetic)
    names = _check_models(config, fail)
    _check_train(config.train, "train", fail)
    _check_train(config.localization.train, "localization.train", fail)
    _check_localization(config, fail)
  _check_methods(config, fail)
  _check_study(config, names, fail)
  try:  # the checks beyond the paper: their own sections of config.study
    checks.check_config(config.study)
  except ValueError as e:
    fail("study", str(e))
  if config.get("sanity") is not None:
    from saliency_jax.trust import sanity  # pylint: disable=g-import-not-at-top

    try:
      sanity.validate(config)
    except ValueError as e:
      fail("sanity", str(e))
  protocol.check(config, fail)
  if not given:
    detector_weights = DETECTOR_WEIGHTS if detector else None
    config_check_data.check_cohort_and_init(config, fail, synthetic, detector_weights)
    config_check_data.check_splits(config, fail, synthetic)
  if problems:
    raise ConfigError(problems)


def _check_keys(config, schema, prefix: str, fail, synthetic: bool, detector: bool) -> None:
  """Every field of `config` must exist in `schema` (sections recursively)."""
  open_sections = {
    "weights",
    "methods.settings",
    "methods.custom",
    "study.rules",
    "localization.kwargs",
  }
  for key in config.keys():
    field = f"{prefix}{key}"
    if key not in schema:
      if not prefix and key in OPTIONAL_SECTIONS:
        continue
      if prefix == "data." and key in SYNTHETIC_DATA_FIELDS:
        # Left over from configs/synthetic.py (a command line cannot delete a field): only a
        # changed value, which would act on nothing, is an error.
        if not synthetic and config[key] != _synthetic_defaults()[key]:
          fail(field, f"only the synthetic dataset ({SYNTHETIC}) has this field")
        continue
      if prefix == "localization.train." and key in DETECTOR_TRAIN_FIELDS:
        if not detector:
          fail(field, f"only a detector (localization.arch = {DETECTOR!r}) has this field")
        continue
      fail(field, "unknown field (misspelt?); known: " + ", ".join(sorted(schema.keys())))
      continue
    if field in open_sections:
      continue
    value, expected = config[key], schema[key]
    if hasattr(expected, "keys") and hasattr(value, "keys"):
      _check_keys(value, expected, field + ".", fail, synthetic, detector)
  if prefix == "data." and config.get("name") == SYNTHETIC:
    for name in sorted(set(SYNTHETIC_DATA_FIELDS) - set(config.keys())):
      fail(f"data.{name}", "the synthetic dataset needs this field (see configs/synthetic.py)")


def _synthetic_defaults():
  from configs import synthetic  # pylint: disable=g-import-not-at-top

  return synthetic.get_config().data


def _positive(fail, field: str, value: Any, minimum: int = 1) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    fail(field, f"must be an integer >= {minimum}, got {value!r}")


def _check_data(config, fail, synthetic: bool) -> None:
  d = config.data
  _positive(fail, "data.image_size", d.image_size)
  if d.style not in pipeline.STYLES:
    fail("data.style", f"{d.style!r} is not one of {pipeline.STYLES}")
  _positive(fail, "data.channels", d.channels)
  if synthetic:
    for name in ("num_train", "num_val", "num_test"):
      _positive(fail, f"data.{name}", d[name], minimum=0)
    if not 0.0 <= d.positive_fraction <= 1.0:
      fail("data.positive_fraction", f"must be in [0, 1], got {d.positive_fraction}")
    if not d.difficulty > 0:
      fail("data.difficulty", f"must be > 0, got {d.difficulty}")


def _check_models(config, fail) -> list[str]:
  names = []
  if not config.models:
    fail("models", "no classifier")
  for i, spec in enumerate(config.models):
    field = f"models[{i}]"
    spec = dict(spec)
    for key in sorted(set(spec) - plugin._SPEC_KEYS):  # pylint: disable=protected-access
      fail(f"{field}.{key}", "unknown model field; known: " + ", ".join(sorted(plugin._SPEC_KEYS)))  # pylint: disable=protected-access
    if "name" not in spec:
      fail(f"{field}.name", "missing")
    given = [k for k in ("arch", "module", "keras_model") if spec.get(k)]
    if len(given) != 1:
      fail(field, f"needs exactly one of arch, module, keras_model; got {given or 'none'}")
    trained_here = not (spec.get("weights") or spec.get("keras_model"))
    if trained_here and "seed" not in spec:
      fail(f"{field}.seed", "missing (the model is trained here)")
    if spec.get("arch") is not None and not _known_arch(spec["arch"]):
      fail(
        f"{field}.arch",
        f"unknown architecture {spec['arch']!r}; known: {', '.join(models.MODEL_NAMES)}",
      )
    if "style" in spec and spec["style"] not in pipeline.STYLES:
      fail(f"{field}.style", f"{spec['style']!r} is not one of {pipeline.STYLES}")
    if "name" in spec:
      if spec["name"] in names:
        fail(f"{field}.name", f"{spec['name']!r} is used twice")
      names.append(spec["name"])
    if spec.get("arch") is not None and _known_arch(spec["arch"]):
      try:  # kwargs the architecture does not take (or an import path that does not import)
        models.create(spec["arch"], num_classes=2, **spec.get("kwargs", {}))
      except (TypeError, ValueError) as e:
        fail(f"{field}.kwargs", str(e))
  return names


def _known_arch(arch: str) -> bool:
  return arch in models.MODEL_NAMES


def _check_train(section, field: str, fail) -> None:
  for key in ("batch_size", "num_steps", "eval_every", "log_every"):
    _positive(fail, f"{field}.{key}", section[key])
  if not section.learning_rate > 0:
    fail(f"{field}.learning_rate", f"must be > 0, got {section.learning_rate}")
  if section.weight_decay < 0:
    fail(f"{field}.weight_decay", f"must be >= 0, got {section.weight_decay}")
  if section.dtype not in TRAIN_DTYPES:
    fail(f"{field}.dtype", f"{section.dtype!r} is not one of {TRAIN_DTYPES}")


def _check_localization(config, fail) -> None:
  loc = config.localization
  if loc.arch not in models.MODEL_NAMES:
    fail(
      "localization.arch",
      f"unknown localization network {loc.arch!r}; known: {', '.join(models.MODEL_NAMES)}",
    )
    return
  try:
    module = models.create(loc.arch, num_classes=1, **dict(loc.kwargs))
  except (TypeError, ValueError) as e:
    fail("localization.kwargs", str(e))
    return
  if loc.arch != "unet":
    return
  depth = int(module.depth)
  if config.data.image_size % (2**depth):
    fail(
      "localization.kwargs.depth",
      f"the U-Net halves the image {depth} times: "
      f"data.image_size = {config.data.image_size} is not divisible by {2**depth}",
    )


def _check_methods(config, fail) -> None:
  m = config.methods
  names = list(m.names)
  custom = set(m.custom.keys())
  for name in names:
    if name not in attributions.METHODS and name not in custom:
      fail(
        "methods.names",
        f"unknown method {name!r}; known: {', '.join(sorted(attributions.METHODS))}",
      )
  if len(set(names)) != len(names):
    fail("methods.names", f"a method is listed twice: {names}")
  for name in m.settings.keys():
    # Settings of a known method this run leaves out are kept for the runs that include it.
    if name not in attributions.METHODS and name not in custom:
      fail(
        f"methods.settings.{name}",
        f"settings of an unknown method; known: {', '.join(sorted(attributions.METHODS))}",
      )
      continue
    if name not in attributions.METHODS:
      continue  # a custom method checks its own settings
    overrides = m.settings[name]
    overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
    unknown = sorted(set(overrides) - set(attributions.METHODS[name].default_settings))
    for key in unknown:
      fail(
        f"methods.settings.{name}.{key}",
        "unknown setting; known: " + ", ".join(sorted(attributions.METHODS[name].default_settings)),
      )
    if "baseline" in overrides and name in ("IG", "SIG"):
      fail(f"methods.settings.{name}.baseline", "set by protocol.ig_baseline; set that instead")
    if "region_scores" in overrides and name == "XRAI":
      fail(
        f"methods.settings.{name}.region_scores", "set by protocol.xrai_grayscale; set that instead"
      )
  _positive(fail, "methods.max_grads_in_flight", m.max_grads_in_flight, minimum=0)  # 0: auto


def _check_study(config, names: list[str], fail) -> None:
  s = config.study
  if s.target not in TARGETS:
    fail("study.target", f"{s.target!r} is not one of {TARGETS}")
  _positive(fail, "study.num_eval_images", s.num_eval_images, minimum=2)
  _positive(fail, "study.num_utility_images", s.num_utility_images, minimum=0)
  _positive(fail, "study.random_pairs", s.random_pairs)
  if not s.ssim_data_range > 0:
    fail("study.ssim_data_range", f"must be > 0 (the maps' value range), got {s.ssim_data_range}")
  if not 0 < s.alpha < 1:
    fail("study.alpha", f"must be in (0, 1), got {s.alpha}")
  if s.correction not in CORRECTIONS:
    fail("study.correction", f"{s.correction!r} is not one of {CORRECTIONS}")
  _positive(fail, "study.bootstrap_resamples", s.bootstrap_resamples)
  _positive(fail, "study.num_example_images", s.num_example_images, minimum=0)
  _positive(fail, "study.chunk_size", s.chunk_size)
  for field in ("utility_models", "independent_randomization"):
    for name in s[field]:
      if name not in names:
        fail(f"study.{field}", f"{name!r} is not a model name ({names})")
  if s.external_maps and not os.path.isdir(s.external_maps):
    fail("study.external_maps", f"{s.external_maps!r} is not a directory")
  _check_rules(s.rules, fail)


def _check_rules(rules, fail) -> None:
  for name, rule in rules.items():
    field = f"study.rules.{name}"
    rule = dict(rule)
    for key in sorted(set(rule) - RULE_KEYS):
      fail(f"{field}.{key}", f"unknown rule field; known: {', '.join(sorted(RULE_KEYS))}")
    criterion = rule.get("criterion", name)
    if criterion not in verdicts.BASELINES:
      fail(f"{field}.criterion", f"{criterion!r} is not one of {tuple(verdicts.BASELINES)}")
      continue
    allowed = verdicts.BASELINES[criterion]
    if rule.get("baseline") not in allowed:
      fail(
        f"{field}.baseline",
        f"{rule.get('baseline')!r} is not a baseline of {criterion} ({', '.join(allowed)})",
      )
    if rule.get("metric") not in verdicts.METRICS[criterion]:
      fail(
        f"{field}.metric",
        f"{rule.get('metric')!r} is not one of {tuple(verdicts.METRICS[criterion])}",
      )
    if rule.get("alternative") not in ALTERNATIVES:
      fail(f"{field}.alternative", f"{rule.get('alternative')!r} is not one of {ALTERNATIVES}")
    if rule.get("test", "wilcoxon") not in verdict_tests.TESTS:
      fail(f"{field}.test", f"{rule.get('test')!r} is not one of {tuple(verdict_tests.TESTS)}")
