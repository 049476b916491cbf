"""Which finished stages ran with another config than this run's.

Each stage records in the run manifest, when it finishes, the config sections it reads
(`STAGE_CONFIG`); a rerun compares them with its own config, and the first finished stage
whose sections changed runs again with every stage after it.
"""

from collections.abc import Callable, Sequence
import json
from typing import Any

import ml_collections

from saliency_jax.trust.manifest import Manifest

STAGES = ("data", "train", "maps", "criteria", "report")
# The config sections each stage reads (None: the whole config).
STAGE_CONFIG = {
  "data": ("seed", "data"),
  "train": ("seed", "data", "models", "train", "localization", "weights", "protocol", "sanity"),
  "maps": ("seed", "data", "models", "localization", "methods", "study", "protocol", "sanity"),
  "criteria": ("seed", "study", "protocol", "sanity"),
  "report": None,
}


def stage_config(config: ml_collections.ConfigDict, stage: str) -> dict[str, Any]:
  """The config sections `stage` reads, as plain data."""
  sections = STAGE_CONFIG[stage]
  return {k: v for k, v in config.to_dict().items() if sections is None or k in sections}


def changed_fields(recorded: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
  """ "field: then -> now" for each field of a stage's config that changed since it ran with
  `recorded` ([] where the manifest recorded no config for it)."""
  if recorded is None:
    return []
  now = json.loads(json.dumps(now, default=str))
  recorded = {k: v for k, v in recorded.items() if k != "workdir"}  # where, not what
  return _differences(recorded, {k: v for k, v in now.items() if k != "workdir"})


def stage_to_redo(
  stages: Sequence[str], done: Callable[[str], bool], changed: Callable[[str], list[str]]
) -> tuple[str, list[str]] | None:
  """(stage, changed fields) of the first done stage whose config changed: it runs again with
  every stage after it (they used its results). A run of `stages` that leaves it out is
  refused, naming the fields. None: no done stage changed."""
  for stage in STAGES:
    fields = changed(stage) if done(stage) else []
    if not fields:
      continue
    if stage not in stages:
      raise ValueError(
        f"the {stage} stage ran with another config ({summary(fields)}), so the stages after "
        f"it would mix the results of two configs: run it again (add {stage} to --stages or "
        "leave --stages out), or use another workdir."
      )
    return stage, fields
  return None


def summary(fields: list[str]) -> str:
  """The first changed fields, for one line of text."""
  return "; ".join(fields[:5]) + (" ..." if len(fields) > 5 else "")


def numbers_config(
  config: ml_collections.ConfigDict, manifest: Manifest
) -> ml_collections.ConfigDict:
  """The config the scores came from: each section as the last stage reading it ran with
  (the current config for sections no finished stage reads)."""
  sections = config.to_dict()
  for stage in ("data", "train", "maps", "criteria"):
    sections.update(manifest.stage_config(stage) or {})
  return ml_collections.ConfigDict(sections)


def _differences(then: Any, now: Any, prefix: str = "") -> list[str]:
  """ "path: then -> now" for every leaf that differs between two JSON-like trees."""
  if isinstance(then, dict) and isinstance(now, dict):
    out = []
    for key in sorted(set(then) | set(now)):
      out += _differences(then.get(key), now.get(key), f"{prefix}{key}.")
    return out
  return [] if then == now else [f"{prefix[:-1]}: {then} -> {now}"]
