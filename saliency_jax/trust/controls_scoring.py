"""Control maps scored by every criterion like a method, and whether each method beats them.

`records` runs the study's own record functions (`evaluation`) with the controls as the
methods: their maps are generated from the ground truth on read (`ControlReader`), never
stored. `table` compares each method with each control under every verdict rule: the rule's
paired test and direction with the control's per-image values as the baseline, corrected across
methods as the scorecard is. A method "beats" a control when that test rejects; it is flagged
when it fails to beat a control that `controls.APPLICABLE` names for the criterion.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from saliency_jax.trust import controls
from saliency_jax.trust import record_table
from saliency_jax.trust import verdict_tests
from saliency_jax.trust import verdicts
from saliency_jax.trust.manifest import Manifest


class ControlReader:
  """A `MapReader` that reads `control:<NAME>` as that control's maps (generated on read)."""

  def __init__(self, reader, section: ml_collections.ConfigDict, *, seed: int):
    self.reader, self.section, self.seed = reader, section, seed
    self._cache: dict[tuple, np.ndarray] = {}

  def read(self, set_name: str, model: str, state: str, method: str) -> np.ndarray | None:
    if not method.startswith(controls.RECORD_PREFIX):
      return self.reader.read(set_name, model, state, method)
    name = method[len(controls.RECORD_PREFIX) :]
    salt = f"{model}/{state}" if name == controls.NOISE else ""
    key = (str(set_name), name, salt)
    if key not in self._cache:
      truth = self.reader.ground_truth(set_name)
      average = self.reader.average_mask() if name == controls.AVERAGE_MASK else None
      maps = controls.control_maps(
        name,
        ids=[str(i) for i in truth.ids],
        images=truth.raw,
        seed=self.seed,
        salt=salt,
        blob_sigma=self.section.blob_sigma,
        average_mask=average,
      )
      # Rescaled as the reader rescales the methods' maps (protocol.minmax_maps), if it does:
      # each map by its own min and max (a constant map, e.g. SOBEL of a flat image, is NaN).
      if getattr(self.reader, "minmax", False):
        low = maps.min(axis=(1, 2), keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
          maps = ((maps - low) / (maps.max(axis=(1, 2), keepdims=True) - low)).astype(np.float32)
      self._cache[key] = maps
    return self._cache[key]

  def ground_truth(self, set_name: str):
    return self.reader.ground_truth(set_name)

  def average_mask(self) -> np.ndarray:
    return self.reader.average_mask()


def check_section(section: ml_collections.ConfigDict) -> None:
  unknown = [n for n in section.names if n not in controls.CONTROLS]
  if unknown:
    raise ValueError(
      f"config.study.controls.names: unknown {unknown}; known: {list(controls.CONTROLS)}"
    )
  if not section.blob_sigma > 0:
    raise ValueError(f"config.study.controls.blob_sigma must be positive, got {section.blob_sigma}")


def _with_methods(manifest: Manifest, methods: list[str]) -> Manifest:
  data = dict(manifest.data)
  data["run"] = dict(data["run"], methods=list(methods))
  return Manifest(manifest.path, data)


def records(
  manifest: Manifest, reader, study_config: ml_collections.ConfigDict, *, seed: int, protocol=None
) -> list[dict[str, Any]]:
  """Every criterion's records of every configured control (method `control:<NAME>`)."""
  from saliency_jax.trust import evaluation  # pylint: disable=g-import-not-at-top

  section = study_config.controls
  check_section(section)
  names = [controls.record_name(n) for n in section.names]
  as_methods = _with_methods(manifest, names)
  control_reader = ControlReader(reader, section, seed=seed)
  out = evaluation.all_records(
    as_methods, control_reader, study_config, seed=seed, protocol=protocol
  )
  # The record functions also score the baselines, which the study's own records hold.
  return [r for r in out if r["method"] in names]


def table(
  records, manifest: Manifest, study_config: ml_collections.ConfigDict, *, seed: int, protocol=None
) -> dict[str, Any]:
  """What each control scores under each verdict rule, and which methods beat it.

  Returns:
    dict with `scores` (per rule and control: its mean [95% CI], whether the comparison is
    applicable, and the verdict the rule would give the control itself), `comparisons` (per
    rule, control and method: the rule's paired test of the method against the control,
    corrected across methods, and `beats`) and `flags` ({method: ["criterion: CONTROL", ...]}
    for every applicable control the method does not beat).
  """
  from saliency_jax.metrics import statistics  # pylint: disable=g-import-not-at-top

  section = study_config.controls
  index = record_table.index_records(records)
  scores, comparisons = [], []
  flags: dict[str, list[str]] = {m: [] for m in manifest.methods}
  for rule_name, rule in verdicts.rules_from_config(study_config).items():
    criterion = rule.get("criterion", rule_name)
    ids = record_table.image_ids(index, verdicts.source_measure(criterion))
    metric = rule["metric"]
    # Randomization pooled over the classifiers, with the protocol's random-pair baseline.
    scalar = (
      criterion == "randomization" and protocol is not None and protocol.random_pairs == "scalar"
    )
    method_values = {
      m: verdicts.criterion_values(index, manifest, rule, m, ids, scalar_pairs=scalar)[0]
      for m in manifest.methods
    }
    for name in section.names:
      values, baseline, baseline_name = verdicts.criterion_values(
        index, manifest, rule, controls.record_name(name), ids, scalar_pairs=scalar
      )
      applicable = name in controls.APPLICABLE.get(criterion, ())
      own = verdict_tests.paired_test(values, baseline, rule)
      own_verdict = (
        "N/A"
        if not np.isfinite(own.pvalue)
        else "PASS"
        if own.pvalue < study_config.alpha
        else "FAIL"
      )
      scores.append(
        dict(
          criterion=rule_name,
          control=name,
          metric=metric,
          applicable=applicable,
          baseline_name=baseline_name,
          own_p_value=verdict_tests.finite_or_none(own.pvalue),
          own_verdict=own_verdict,
          **verdict_tests.describe(
            values, "value", seed=seed, resamples=study_config.bootstrap_resamples
          ),
        )
      )
      tests = {m: verdict_tests.paired_test(v, values, rule) for m, v in method_values.items()}
      tested = {m: t for m, t in tests.items() if np.isfinite(t.pvalue)}
      corrected = statistics.correct(tested, method=study_config.correction) if tested else {}
      for method, test in tests.items():
        p_adjusted = corrected.get(method, {}).get("pvalue_adjusted")
        beats = p_adjusted is not None and p_adjusted < study_config.alpha
        comparisons.append(
          dict(
            criterion=rule_name,
            control=name,
            method=method,
            metric=metric,
            applicable=applicable,
            alternative=rule["alternative"],
            method_value=verdict_tests.finite_or_none(
              np.nanmean(method_values[method])
              if np.isfinite(method_values[method]).any()
              else None
            ),
            control_value=verdict_tests.finite_or_none(
              np.nanmean(values) if np.isfinite(values).any() else None
            ),
            test=test.test,
            p_value=verdict_tests.finite_or_none(test.pvalue),
            p_adjusted=p_adjusted,
            beats=beats,
          )
        )
        if applicable and not beats:
          flags[method].append(f"{rule_name}: {name}")
  return dict(
    scores=scores,
    comparisons=comparisons,
    flags=flags,
    applicable={k: list(v) for k, v in controls.APPLICABLE.items()},
    not_applicable_why=dict(controls.NOT_APPLICABLE_WHY),
  )
