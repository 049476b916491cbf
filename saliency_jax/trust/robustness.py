"""Verdict robustness: the configured verdict rules re-run over a grid of protocol choices.

The paper's verdicts rest on choices it does not vary: how a map is made 2-D (|.| and PAIR's
99th-percentile clip), SSIM's data_range, and SSIM itself as the similarity. A grid point is a
`Choice` (grayscale, similarity, data_range); at each point the criteria are recomputed with
that similarity (and the maps of that grayscale) and the configured rules are applied as they
are, with only their similarity metric and SSIM's data_range replaced. A verdict HOLDS when
every grid point where it is defined agrees with the run's own verdict, and FLIPS otherwise,
naming the choices under which it flips.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import ml_collections

from saliency_jax.trust import criteria
from saliency_jax.trust.names import Baseline

# Grayscale variants: the method-setting overrides under which a variant's maps are made.
CONFIGURED = "configured"
GRAYSCALE = {
  CONFIGURED: {},  # the maps stage's own maps
  "no_clip": {"grayscale_percentile": 100},  # |.| min-max, no 99th-percentile clip
  "diverging": {"visualization": "diverging"},  # signed: PAIR's VisualizeImageDiverging
}


class Choice(NamedTuple):
  """One grid point. similarity None: each rule's own metric; data_range None: the run's."""

  grayscale: str
  similarity: str | None
  data_range: float | None

  @property
  def label(self) -> str:
    if self == AS_CONFIGURED:
      return "as configured"
    parts = [] if self.grayscale == CONFIGURED else [f"grayscale {self.grayscale}"]
    if self.similarity is not None:
      sim = self.similarity
      if self.data_range is not None:
        sim += f" (data_range {self.data_range:g})"
      parts.append(sim)
    return ", ".join(parts) or "as configured"


AS_CONFIGURED = Choice(CONFIGURED, None, None)


def check_section(section: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field of `config.robustness` that holds a bad value."""
  unknown = [g for g in section.grayscale if g not in GRAYSCALE]
  if unknown:
    raise ValueError(f"config.robustness.grayscale: unknown {unknown}; known: {list(GRAYSCALE)}")
  unknown = [s for s in section.similarity if s not in criteria.SIMILARITY_NAMES]
  if unknown:
    raise ValueError(
      f"config.robustness.similarity: unknown {unknown}; known: {list(criteria.SIMILARITY_NAMES)}"
    )
  if not all(r > 0 for r in section.ssim_data_ranges):
    raise ValueError(
      f"config.robustness.ssim_data_ranges must be positive, got {tuple(section.ssim_data_ranges)}"
    )
  if not 0 < section.top_k_fraction <= 1:
    raise ValueError(
      f"config.robustness.top_k_fraction must be in (0, 1], got {section.top_k_fraction}"
    )


def choices(section: ml_collections.ConfigDict) -> list[Choice]:
  """The grid: the run as configured first, then every grayscale x similarity (x data_range
  for SSIM) of `config.robustness`."""
  check_section(section)
  out = [AS_CONFIGURED]
  for grayscale in section.grayscale:
    for similarity in section.similarity:
      ranges = tuple(section.ssim_data_ranges) if similarity == "ssim" else (None,)
      for data_range in ranges:
        choice = Choice(grayscale, similarity, None if data_range is None else float(data_range))
        if choice not in out:
          out.append(choice)
  return out


def study_config_for(
  study_config: ml_collections.ConfigDict, rules: dict[str, dict[str, Any]], choice: Choice
) -> ml_collections.ConfigDict:
  """`study_config` with the rules of `choice`: each rule whose metric is a similarity gets
  the choice's similarity, SSIM the choice's data_range; every other field as configured."""
  config = ml_collections.ConfigDict(study_config.to_dict())
  new_rules = {name: dict(rule) for name, rule in rules.items()}
  if choice.similarity is not None:
    for rule in new_rules.values():
      if rule["metric"] in criteria.SIMILARITY_NAMES:
        rule["metric"] = choice.similarity
  config.rules = ml_collections.ConfigDict(new_rules)
  if choice.data_range is not None:
    config.ssim_data_range = choice.data_range
  return config


def similarity_names(rules: dict[str, dict[str, Any]], choice: Choice) -> tuple[str, ...]:
  """The similarity metrics the records of `choice` need."""
  if choice.similarity is not None:
    return (choice.similarity,)
  return tuple(
    dict.fromkeys(r["metric"] for r in rules.values() if r["metric"] in criteria.SIMILARITY_NAMES)
  )


def _rule_key(row: dict[str, Any]) -> str:
  """The rule, and the architecture of a per-architecture verdict (protocol)."""
  key = str(row.get("rule_name") or row["criterion"])
  return f"{key} {row['architecture']}" if row.get("architecture") else key


def verdict_rows(choice: Choice, scorecard_rows: Iterable[dict[str, Any]]) -> list[dict]:
  """Tidy rows of one grid point: choice fields, method, criterion, metric, verdict, values."""
  out = []
  for row in scorecard_rows:
    out.append(
      dict(
        choice=choice.label,
        grayscale=choice.grayscale,
        similarity=row["metric"],
        data_range=choice.data_range,
        criterion=_rule_key(row),
        method=row["method"],
        verdict=row["verdict"],
        value=row.get("value"),
        baseline=row.get("baseline"),
        p_adjusted=row.get("p_adjusted"),
      )
    )
  return out


def compare(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per method and criterion: the run's verdict, whether it holds, and where it flips.

  `rows` are `verdict_rows` of every grid point, the as-configured point among them. A grid
  point whose verdict is N/A (no defined value) neither confirms nor flips it: it is listed
  under `undefined`.
  """
  configured = {
    (r["method"], r["criterion"]): r["verdict"] for r in rows if r["choice"] == AS_CONFIGURED.label
  }
  if not configured:
    raise ValueError("the grid has no as-configured point to compare with")
  out = []
  for (method, criterion), verdict in configured.items():
    flips, undefined, points = [], [], 0
    for r in rows:
      if (r["method"], r["criterion"]) != (method, criterion) or r["choice"] == AS_CONFIGURED.label:
        continue
      points += 1
      if r["verdict"] == "N/A":
        undefined.append(r["choice"])
      elif r["verdict"] != verdict:
        flips.append(r["choice"])
    status = "N/A" if verdict == "N/A" else ("flips" if flips else "holds")
    out.append(
      dict(
        method=method,
        criterion=criterion,
        verdict=verdict,
        status=status,
        flips=flips,
        undefined=undefined,
        grid_points=points,
      )
    )
  return out


def variant_method(method: str, grayscale: str) -> str:
  """The store name of `method`'s maps made with the grayscale variant `grayscale`."""
  return method if grayscale == CONFIGURED else f"{method}@{grayscale}"


class VariantReader:
  """A `MapReader` that reads the computed methods' maps of one grayscale variant; the
  baselines' maps (localization network, average mask) are the same in every variant, and an
  external method has no variant (N/A)."""

  def __init__(self, reader, grayscale: str, computed_methods: Sequence[str]):
    self.reader, self.grayscale = reader, grayscale
    self.computed = set(computed_methods)

  def read(self, set_name: str, model: str, state: str, method: str):
    if self.grayscale == CONFIGURED or method == Baseline.LOCALIZATION:
      return self.reader.read(set_name, model, state, method)
    if method not in self.computed:
      return None  # an external method's maps have no grayscale variant: N/A
    if (model, method) in getattr(self.reader, "skipped", ()):
      return None  # a method this model cannot give (the manifest's `skipped`)
    maps = self.reader.read(set_name, model, state, variant_method(method, self.grayscale))
    if maps is None:
      raise FileNotFoundError(
        f"no {self.grayscale} maps of {method} ({set_name}/{model}/{state}): the maps stage "
        "makes them when config.study.robustness is enabled; rerun it with --redo=maps"
      )
    return maps

  def ground_truth(self, set_name: str):
    return self.reader.ground_truth(set_name)

  def average_mask(self):
    return self.reader.average_mask()


def run_grid(
  manifest,
  reader,
  study_config: ml_collections.ConfigDict,
  *,
  seed: int,
  configured_scorecard: list[dict[str, Any]],
  protocol=None,
) -> dict[str, Any]:
  """The configured rules at every grid point of `study_config.robustness`.

  At each point the records the verdicts read (utility of the trained maps, similarity at the
  last cascading step and of random pairs, agreement of replicates and architectures) are
  recomputed by the study's own record functions with the point's maps and similarity, and
  `verdicts.scorecard` applies the rules of `study_config_for`. The as-configured point is the
  run's own scorecard.

  Returns:
    dict with `choices` (labels, the run first), `rows` (`verdict_rows` of every point) and
    `summary` (`compare`).
  """
  from saliency_jax.trust import evaluation  # pylint: disable=g-import-not-at-top
  from saliency_jax.trust import verdicts  # pylint: disable=g-import-not-at-top

  section = study_config.robustness
  grid = choices(section)
  rules = verdicts.rules_from_config(study_config)
  rows = verdict_rows(AS_CONFIGURED, configured_scorecard)
  utility: dict[str, list] = {}
  for choice in grid[1:]:
    variant = VariantReader(reader, choice.grayscale, manifest.computed_methods)
    config = study_config_for(study_config, rules, choice)
    names = similarity_names(rules, choice)
    if choice.grayscale not in utility:
      utility[choice.grayscale] = evaluation.utility_records(manifest, variant, trained_only=True)
    records = utility[choice.grayscale] + evaluation.randomization_records(
      manifest,
      variant,
      config,
      seed=seed,
      similarity=names,
      top_k_fraction=section.top_k_fraction,
      last_step_only=True,
    )
    records += evaluation.agreement_records(
      manifest, variant, config, protocol, similarity=names, top_k_fraction=section.top_k_fraction
    )
    rows += verdict_rows(
      choice, verdicts.scorecard(records, manifest, config, seed=seed, protocol=protocol)
    )
  return dict(choices=[c.label for c in grid], rows=rows, summary=compare(rows))
