"""The criteria stage's checks beyond the paper's four criteria, each a switchable section of
`config.study`:

  controls      control maps scored by every criterion like a method (`controls_scoring`)
  chexlocalize  CheXlocalize's mIoU (Otsu, tuned threshold), hit rate and the percentage
                decrease from the localization network (`chexlocalize_scoring`)
  robustness    the verdict rules re-run over a grid of protocol choices (`robustness`)

`records` adds their per-image records to the study's; `summaries` adds their sections of
`summary.json` (and writes `robustness.json`/`robustness.csv`, one row per grid point, method and
rule).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from saliency_jax.trust import chexlocalize_scoring
from saliency_jax.trust import controls
from saliency_jax.trust import controls_scoring
from saliency_jax.trust import record_table
from saliency_jax.trust import robustness
from saliency_jax.trust.manifest import Manifest

ROBUSTNESS_FIELDS = [
  "choice",
  "grayscale",
  "similarity",
  "data_range",
  "criterion",
  "method",
  "verdict",
  "value",
  "baseline",
  "p_adjusted",
]


def enabled(study_config: ml_collections.ConfigDict, check: str) -> bool:
  section = study_config.get(check)
  return bool(section is not None and section.enabled)


def check_config(study_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field of an enabled check's section that holds a bad value."""
  if enabled(study_config, "controls"):
    controls_scoring.check_section(study_config.controls)
  if enabled(study_config, "chexlocalize"):
    chexlocalize_scoring.check_section(study_config.chexlocalize)
  if enabled(study_config, "robustness"):
    robustness.check_section(study_config.robustness)


def records(
  manifest: Manifest, reader, study_config: ml_collections.ConfigDict, *, seed: int, protocol=None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """(per-image records of the enabled checks, what their summaries need besides records);
  `protocol`: config.protocol, whose image sets and baselines the controls follow."""
  check_config(study_config)
  out: list[dict[str, Any]] = []
  extras: dict[str, Any] = {}
  methods = list(manifest.methods)
  if enabled(study_config, "controls"):
    out += controls_scoring.records(manifest, reader, study_config, seed=seed, protocol=protocol)
    names = [controls.record_name(n) for n in study_config.controls.names]
    methods += names
    reader = controls_scoring.ControlReader(reader, study_config.controls, seed=seed)
  if enabled(study_config, "chexlocalize"):
    chex, thresholds = chexlocalize_scoring.records(manifest, reader, study_config, methods)
    out += chex
    extras["chexlocalize"] = dict(thresholds=thresholds, methods=methods)
  return out, extras


def summaries(
  records_: list[dict[str, Any]],
  extras: dict[str, Any],
  manifest: Manifest,
  reader,
  study_config: ml_collections.ConfigDict,
  *,
  seed: int,
  scorecard: list[dict[str, Any]],
  workdir: str,
  protocol=None,
) -> dict[str, Any]:
  """The enabled checks' sections of summary.json; `protocol`: config.protocol, which the
  robustness grid's verdicts follow (default: the paper's)."""
  out: dict[str, Any] = {}
  if enabled(study_config, "controls"):
    out["controls"] = controls_scoring.table(
      records_, manifest, study_config, seed=seed, protocol=protocol
    )
  if enabled(study_config, "chexlocalize"):
    chex = extras["chexlocalize"]
    out["chexlocalize"] = dict(
      thresholds=chex["thresholds"],
      rows=chexlocalize_scoring.summary(
        records_,
        chex["thresholds"],
        chex["methods"],
        seed=seed,
        resamples=study_config.bootstrap_resamples,
      ),
    )
  if enabled(study_config, "robustness"):
    grid = robustness.run_grid(
      manifest, reader, study_config, seed=seed, configured_scorecard=scorecard, protocol=protocol
    )
    record_table.write_table(grid["rows"], ROBUSTNESS_FIELDS, workdir, "robustness")
    out["robustness"] = grid
  return out
