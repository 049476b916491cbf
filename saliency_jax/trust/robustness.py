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

# Grayscale variants: the method-setting overrides under which a variant's maps are made.
CONFIGURED = "configured"
GRAYSCALE = {
    CONFIGURED: {},                            # the maps stage's own maps
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
    raise ValueError(f"config.robustness.grayscale: unknown {unknown}; known: "
                     f"{list(GRAYSCALE)}")
  unknown = [s for s in section.similarity if s not in criteria.SIMILARITY_NAMES]
  if unknown:
    raise ValueError(f"config.robustness.similarity: unknown {unknown}; known: "
                     f"{list(criteria.SIMILARITY_NAMES)}")
  if not all(r > 0 for r in section.ssim_data_ranges):
    raise ValueError(f"config.robustness.ssim_data_ranges must be positive, got "
                     f"{tuple(section.ssim_data_ranges)}")
  if not 0 < section.top_k_fraction <= 1:
    raise ValueError(f"config.robustness.top_k_fraction must be in (0, 1], got "
                     f"{section.top_k_fraction}")


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


def study_config_for(study_config: ml_collections.ConfigDict, rules: dict[str, dict[str, Any]],
                     choice: Choice) -> ml_collections.ConfigDict:
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
  return tuple(dict.fromkeys(r["metric"] for r in rules.values()
                             if r["metric"] in criteria.SIMILARITY_NAMES))


def _rule_key(row: dict[str, Any]) -> str:
  return str(row.get("rule_name") or row["criterion"])


def verdict_rows(choice: Choice, scorecard_rows: Iterable[dict[str, Any]]) -> list[dict]:
  """Tidy rows of one grid point: choice fields, method, criterion, metric, verdict, values."""
  out = []
  for row in scorecard_rows:
    out.append(dict(choice=choice.label, grayscale=choice.grayscale,
                    similarity=row["metric"], data_range=choice.data_range,
                    criterion=_rule_key(row), method=row["method"],
                    verdict=row["verdict"], value=row.get("value"),
                    baseline=row.get("baseline"), p_adjusted=row.get("p_adjusted")))
  return out


def compare(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per method and criterion: the run's verdict, whether it holds, and where it flips.

  `rows` are `verdict_rows` of every grid point, the as-configured point among them. A grid
  point whose verdict is N/A (no defined value) neither confirms nor flips it: it is listed
  under `undefined`.
  """
  configured = {(r["method"], r["criterion"]): r["verdict"] for r in rows
                if r["choice"] == AS_CONFIGURED.label}
  if not configured:
    raise ValueError("the grid has no as-configured point to compare with")
  out = []
  for (method, criterion), verdict in configured.items():
    flips, undefined, points = [], [], 0
    for r in rows:
      if (r["method"], r["criterion"]) != (method, criterion) or r["choice"] == \
          AS_CONFIGURED.label:
        continue
      points += 1
      if r["verdict"] == "N/A":
        undefined.append(r["choice"])
      elif r["verdict"] != verdict:
        flips.append(r["choice"])
    status = "N/A" if verdict == "N/A" else ("flips" if flips else "holds")
    out.append(dict(method=method, criterion=criterion, verdict=verdict, status=status,
                    flips=flips, undefined=undefined, grid_points=points))
  return out
