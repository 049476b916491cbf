"""Pass/fail verdicts: each criterion's per-image values against its baseline, with a test.

A rule (in the config, printed in the report) names the criterion whose records it reads, the
metric, the baseline and the direction in which a trustworthy method differs from it. The
verdict is PASS when a one-sided test over images (Wilcoxon signed-rank by default) rejects "no
better than the baseline" at `alpha` after correcting across methods (Holm by default); FAIL
otherwise; N/A when the run has no data for the criterion (e.g. a single replicate has no
repeatability pair). A per-image baseline gets a paired test; a scalar baseline (the authors'
random-pair number, protocol.random_pairs = "scalar") a one-sample test against it.

Randomization (protocol.randomization_pooling): one verdict per architecture, over its
replicates (the authors' figure: the InceptionV3 replicates), or one pooled over all
classifiers; each read at the last step of the cascade, and each row also names the first step
at which the curve passes the baseline.

Everything here reads the records (`results.json`), the run manifest and the config's `study`
and `protocol` sections; no Study, dataset or model:

  summarize_study(records, manifest, config.study, seed=config.seed, protocol=config.protocol)
  scorecard(records, manifest, config.study, seed=config.seed, protocol=config.protocol)
"""

import collections
from typing import Any

import ml_collections
import numpy as np

from saliency_jax.trust import criteria
from saliency_jax.trust import protocol as protocol_lib
from saliency_jax.trust import summary_tables
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import CASCADE_PREFIX
from saliency_jax.trust.names import Criterion
from saliency_jax.trust.names import Measure
from saliency_jax.trust.names import NO_MODEL
from saliency_jax.trust.names import RecordKey
from saliency_jax.trust.names import State
from saliency_jax.trust.record_table import image_ids
from saliency_jax.trust.record_table import Index
from saliency_jax.trust.record_table import index_records
from saliency_jax.trust.record_table import models_of
from saliency_jax.trust.record_table import per_image
from saliency_jax.trust.verdict_tests import apply_tests
from saliency_jax.trust.verdict_tests import describe
from saliency_jax.trust.verdict_tests import finite_or_none
from saliency_jax.trust.verdict_tests import paired_test

# What each criterion's rule may compare with and measure (a rule's `baseline` and `metric`).
BASELINES = {
  Criterion.UTILITY: ("average_mask", "localization_network"),
  Criterion.RANDOMIZATION: ("random_pairs",),
  Criterion.REPEATABILITY: ("localization_network",),
  Criterion.REPRODUCIBILITY: ("localization_network",),
}
METRICS = {
  Criterion.UTILITY: criteria.UTILITY_METRICS,
  Criterion.RANDOMIZATION: criteria.SIMILARITY_NAMES,
  Criterion.REPEATABILITY: criteria.SIMILARITY_NAMES,
  Criterion.REPRODUCIBILITY: criteria.SIMILARITY_NAMES,
}

# Rules by name; a rule's `criterion` says which records it reads (default: its name). Plain
# strings, so a command-line override type-checks.
DEFAULT_RULES = {
  "utility": dict(
    criterion="utility",
    metric="auprc",
    baseline="average_mask",
    alternative="greater",
    test="wilcoxon",
    text="AUPRC of the trained model's maps is higher than the average-mask baseline's",
  ),
  "utility_localization": dict(
    criterion="utility",
    metric="auprc",
    baseline="localization_network",
    alternative="greater",
    test="wilcoxon",
    text=(
      "AUPRC of the trained model's maps is higher than the localization network's "
      "(mean over its replicates)"
    ),
  ),
  "randomization": dict(
    criterion="randomization",
    metric="ssim",
    baseline="random_pairs",
    alternative="less",
    test="wilcoxon",
    text=(
      "SSIM between the trained and the randomized model's maps (the cascade's last "
      "step) is lower than SSIM between maps of two different images (random pairs)"
    ),
  ),
  "repeatability": dict(
    criterion="repeatability",
    metric="ssim",
    baseline="localization_network",
    alternative="greater",
    test="wilcoxon",
    text=(
      "SSIM between maps of two replicates of the same architecture is higher than "
      "SSIM between the two localization-network replicates' outputs"
    ),
  ),
  "reproducibility": dict(
    criterion="reproducibility",
    metric="ssim",
    baseline="localization_network",
    alternative="greater",
    test="wilcoxon",
    text=(
      "SSIM between maps of the two architectures is higher than SSIM between the two "
      "localization-network replicates' outputs"
    ),
  ),
}


def criterion_values(
  index: Index,
  manifest: Manifest,
  rule: dict[str, Any],
  method: str,
  ids: list[str],
  *,
  classifiers=None,
  scalar_pairs: bool = False,
) -> tuple[np.ndarray, np.ndarray | float, str]:
  """(method's per-image values, the baseline (per image, or one number), baseline name).

  `classifiers`: the classifiers a randomization verdict reads (default: all); with
  `scalar_pairs` its baseline is the authors' number: the mean random-pair similarity of the
  first of them (replicate 1's original maps).
  """
  criterion, metric, kind = rule["criterion"], rule["metric"], rule["baseline"]
  if kind not in BASELINES.get(criterion, (kind,)):
    raise ValueError(f"{kind!r} is not a baseline of {criterion}: {BASELINES[criterion]}")
  if criterion == Criterion.UTILITY:
    selection = [(m, State.ORIGINAL) for m in manifest.utility_models]
    values = per_image(index, Measure.UTILITY, metric, method, selection, ids)
    if kind == "localization_network":
      loc = [(m, State.BASELINE) for m in models_of(index, Measure.UTILITY, Baseline.LOCALIZATION)]
      return (
        values,
        per_image(index, Measure.UTILITY, metric, Baseline.LOCALIZATION, loc, ids),
        "localization network",
      )
    baseline = per_image(
      index, Measure.UTILITY, metric, Baseline.AVERAGE_MASK, [(NO_MODEL, State.BASELINE)], ids
    )
    return values, baseline, "average mask"
  if criterion == Criterion.RANDOMIZATION:
    classifiers = manifest.classifiers if classifiers is None else classifiers
    classifiers = [c for c in classifiers if c.block_names]  # a model with no blocks: N/A
    last = [(c.name, manifest.cascade_steps(c)[-1]) for c in classifiers]
    values = per_image(index, Measure.CASCADING, metric, method, last, ids)
    if scalar_pairs:
      if not classifiers:  # no model with blocks to randomize: N/A
        return values, float("nan"), "random pairs"
      first = classifiers[0].name
      pairs = per_image(index, Measure.RANDOM_PAIRS, metric, method, [(first, State.BASELINE)], ids)
      return values, float(criteria.mean_of_defined(pairs)), f"random pairs ({first}, one number)"
    baseline = per_image(
      index,
      Measure.RANDOM_PAIRS,
      metric,
      method,
      [(c.name, State.BASELINE) for c in classifiers],
      ids,
    )
    return values, baseline, "random pairs"
  pairs = [(m, State.ORIGINAL) for m in models_of(index, criterion, method)]
  values = per_image(index, criterion, metric, method, pairs, ids)
  loc_pairs = [
    (m, State.ORIGINAL)
    for m in models_of(index, Measure.LOCALIZATION_AGREEMENT, Baseline.LOCALIZATION)
  ]
  baseline = per_image(
    index, Measure.LOCALIZATION_AGREEMENT, metric, Baseline.LOCALIZATION, loc_pairs, ids
  )
  return values, baseline, "localization network"


def verdict_groups(manifest: Manifest, criterion: str, protocol) -> list[tuple[str | None, list]]:
  """(architecture or None, the classifiers one verdict reads) for each verdict of a rule."""
  if criterion != Criterion.RANDOMIZATION or protocol.randomization_pooling == "pooled":
    return [(None, manifest.classifiers)]
  archs: dict[str, list] = collections.OrderedDict()
  for clf in manifest.classifiers:
    archs.setdefault(clf.arch, []).append(clf)
  return list(archs.items())


def first_step_past(
  index: Index, manifest: Manifest, classifiers, rule, method: str, baseline: float | None
) -> str | None:
  """The first cascade step at which the curve (mean over the classifiers of each one's mean
  over images) passes `baseline` in the rule's direction; None if it never does."""
  if baseline is None or not classifiers:
    return None
  steps = [manifest.cascade_steps(c) for c in classifiers]
  for k in range(1, min(len(s) for s in steps)):
    means = [
      float(
        criteria.mean_of_defined(
          list(
            index.get(
              RecordKey(Measure.CASCADING, rule["metric"], method, c.name, s[k]), {}
            ).values()
          )
        )
      )
      for c, s in zip(classifiers, steps)
    ]
    mean = float(criteria.mean_of_defined(means))
    if np.isfinite(mean) and (
      mean < baseline if rule["alternative"] == "less" else mean > baseline
    ):
      return steps[0][k].replace(CASCADE_PREFIX, "")
  return None


def scorecard(
  records, manifest: Manifest, study_config: ml_collections.ConfigDict, *, seed: int, protocol=None
) -> list[dict[str, Any]]:
  """One row per rule x method (x architecture for a per-architecture randomization verdict):
  value (95% CI), baseline, test, p-values, verdict."""
  protocol = protocol_lib.paper_protocol() if protocol is None else protocol
  index = index_records(records)
  s = study_config
  rules = rules_from_config(study_config)
  scalar_pairs = protocol.random_pairs == "scalar"
  rows = []
  for name, rule in rules.items():
    criterion = rule["criterion"]
    ids = image_ids(index, source_measure(criterion))
    for arch, classifiers in verdict_groups(manifest, criterion, protocol):
      group_rows, results = [], {}
      randomization = criterion == Criterion.RANDOMIZATION
      classifiers = [c for c in classifiers if c.block_names]  # none: nothing to randomize
      for method in manifest.methods:
        values, baseline, baseline_name = criterion_values(
          index,
          manifest,
          rule,
          method,
          ids,
          classifiers=classifiers,
          scalar_pairs=randomization and scalar_pairs,
        )
        scalar = np.ndim(baseline) == 0
        row = dict(
          criterion=name,
          method=method,
          metric=rule["metric"],
          baseline_name=baseline_name,
          rule=rule["text"],
          alternative=rule["alternative"],
          architecture=arch,
          baseline_kind="scalar" if scalar else "per_image",
        )
        row.update(describe(values, "value", seed=seed, resamples=s.bootstrap_resamples))
        if scalar:
          row.update(
            baseline=finite_or_none(baseline),
            baseline_std=None,
            baseline_ci=None,
            baseline_n=1,
            baseline_excluded=0,
          )
        else:
          row.update(describe(baseline, "baseline", seed=seed, resamples=s.bootstrap_resamples))
        if randomization:
          row["replicates"] = [c.name for c in classifiers]
          row["step"] = (
            manifest.cascade_steps(classifiers[0])[-1].replace(CASCADE_PREFIX, "")
            if classifiers
            else None
          )
          row["first_step_past_baseline"] = first_step_past(
            index, manifest, classifiers, rule, method, row["baseline"]
          )
        results[method] = paired_test(values, baseline, rule)
        group_rows.append(row)
      apply_tests(group_rows, results, s.correction, s.alpha)
      rows += group_rows
  return rows


def rules_from_config(study_config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """The config's rules (all of DEFAULT_RULES where it has none), each completed from the
  default rule of its name; a rule the config leaves out is not scored."""
  configured = study_config.get("rules", None)
  configured = DEFAULT_RULES if configured is None else configured.to_dict()
  rules = {}
  order = list(DEFAULT_RULES)  # the defaults' order first (a ConfigDict sorts its keys)
  for name, rule in sorted(
    configured.items(),
    key=lambda item: (order.index(item[0]) if item[0] in order else len(order), item[0]),
  ):
    rules[name] = {**DEFAULT_RULES.get(name, {}), **rule}
    rules[name].setdefault("criterion", name)
  return rules


def summarize_study(
  records, manifest: Manifest, study_config: ml_collections.ConfigDict, *, seed: int, protocol=None
) -> dict[str, Any]:
  protocol = protocol_lib.paper_protocol() if protocol is None else protocol
  return dict(
    scorecard=scorecard(records, manifest, study_config, seed=seed, protocol=protocol),
    rules=rules_from_config(study_config),
    protocol=protocol.to_dict(),
    curves=summary_tables.curves(records, manifest, protocol),
    utility=summary_tables.utility_table(records, manifest),
  )


def source_measure(criterion: str) -> str:
  """The measure whose records give a criterion's image ids."""
  return {Criterion.RANDOMIZATION: Measure.CASCADING}.get(criterion, criterion)
