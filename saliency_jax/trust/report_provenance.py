"""The report's account of where its numbers came from: the run's provenance (when, on what,
with which versions, models and config) and its protocol choices next to the paper's."""

import datetime
from importlib import metadata
import json
import os
import platform
import sys
from typing import Any

import jax
import ml_collections

from saliency_jax.trust import protocol
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.names import SetName
from saliency_jax.trust.report_render import Block
from saliency_jax.trust.report_render import Table
from saliency_jax.trust.report_tables import fmt

_PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "grain",
  "tensorflow-datasets",
  "numpy",
  "scikit-image",
  "scipy",
  "matplotlib",
)


def provenance(manifest: Manifest, config: ml_collections.ConfigDict, workdir: str) -> list[Block]:
  progress_path = os.path.join(workdir, "progress.json")
  stages = {}
  if os.path.exists(progress_path):
    with open(progress_path) as f:
      stages = json.load(f)
  versions = []
  for name in _PACKAGES:
    try:
      versions.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
      pass
  models_path = os.path.join(workdir, "models", "summary.json")
  trained = {}
  if os.path.exists(models_path):
    with open(models_path) as f:
      trained = json.load(f)
  s = config.study
  return [
    Table(
      ["item", "value"],
      [
        ["written", datetime.datetime.now().isoformat(timespec="seconds")],
        ["dataset", f"{config.data.name} ({config.data.image_size} px)"],
        ["SSIM data_range", str(s.ssim_data_range)],
        ["map target", s.target],
        ["evaluation images (SSIM criteria)", str(len(manifest.image_ids(SetName.EVAL)))],
        ["utility images", str(len(manifest.image_ids(SetName.UTILITY)))],
        ["random pairs per image", str(s.random_pairs)],
        ["seed", str(config.seed)],
        ["devices", ", ".join(str(d) for d in jax.devices())],
        ["python", f"{sys.version.split()[0]} on {platform.platform()}"],
        ["versions", "; ".join(versions)],
      ],
    ),
    # Every validation metric of each model: AUC (classifiers), Dice (U-Net), mAP at IoU
    # 0.40-0.75 and the RSNA challenge score (RetinaNet).
    Table(
      ["model", "architecture", "validation metric", "value"],
      [
        [name, e.get("arch", "-"), key, fmt(value)]
        for name, e in trained.items()
        for key, value in e.items()
        if key.startswith("val_")
      ],
    ),
    Table(
      ["stage", "wall time (s)"], [[name, fmt(e.get("seconds"), 1)] for name, e in stages.items()]
    ),
    "Configuration:",
    "```\n" + config.to_json_best_effort(indent=2) + "\n```",
  ]


def protocol_section(config, used: dict[str, Any] | None = None) -> list[Block]:
  """The protocol choices of the run next to the paper's (saliency_jax/trust/protocol.py);
  `used`: the protocol the scoring ran with (summary.json's), where it differs from config's."""
  if used is not None:
    config = ml_collections.ConfigDict(config.to_dict())
    config.protocol = ml_collections.ConfigDict(used)
  differs = protocol.differs(config)
  return [
    (
      "Every choice below changes reported numbers or verdicts. "
      + (
        f"This run differs from the paper in {len(differs)}: "
        + ", ".join(f"`{f}`" for f in differs)
        + "."
        if differs
        else "This run makes the paper's choice in each."
      )
    ),
    Table(
      ["choice", "field", "value in this run", "paper's value", "consequence where they differ"],
      protocol.table(config),
    ),
  ]
