"""The run manifest, `<workdir>/run_manifest.json`: what the maps stage decided and the
configuration each stage ran with.

Scoring and reporting read the run from the manifest, the records, the config section they need
and a `MapReader`, never from the `Study` (so they never load a dataset or touch training).

  manifest = Manifest.load(workdir)        # an empty manifest where none was written yet
  manifest.models                          # [ModelEntry(name, arch, block_names, role)]
  manifest.classifiers / manifest.localizers
  manifest.image_ids(SetName.EVAL)         # the image ids of a set, in map order
  manifest.methods                         # every method the criteria score (ours, external)
  manifest.computed_methods                # the methods whose maps the maps stage computed
  manifest.utility_models                  # which models serve which criterion
  manifest.independent_models
  manifest.skipped                         # [{model, what, why}] not evaluated, and why
  manifest.cascade_steps(model)            # original, cascade_<block>, ... (logits first)

Each stage records the configuration it ran with (JSON-able, e.g. a `ConfigDict.to_dict()`):

  manifest.record_stage("maps", {...}); manifest.save()
  manifest.stage_config("maps")            # None where that stage never recorded one
"""

import dataclasses
import json
import os
from typing import Any

from saliency_jax.trust.names import cascade_state
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State

FILENAME = "run_manifest.json"
CLASSIFIER = "classifier"
LOCALIZER = "localizer"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  name: str
  arch: str
  block_names: tuple[str, ...]  # top-level blocks, logits first (the cascading order)
  role: str  # CLASSIFIER or LOCALIZER


class Manifest:
  """The run manifest of one workdir (see the module docstring)."""

  def __init__(self, path: str, data: dict[str, Any] | None = None):
    self.path = path
    self.data: dict[str, Any] = data if data is not None else {}

  @classmethod
  def load(cls, workdir: str) -> "Manifest":
    path = os.path.join(workdir, FILENAME)
    data = None
    if os.path.exists(path):
      with open(path) as f:
        data = json.load(f)
    return cls(path, data)

  def save(self) -> None:
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.data, f, indent=2)
    os.replace(tmp, self.path)

  # The configuration each stage ran with.

  def record_stage(self, stage: str, config: dict[str, Any]) -> None:
    """Records the configuration `stage` ran with (call save() to write it)."""
    self.data.setdefault("stages", {})[stage] = json.loads(json.dumps(config, default=str))

  def stage_config(self, stage: str) -> dict[str, Any] | None:
    return self.data.get("stages", {}).get(stage)

  # What the maps stage decided.

  def record_run(
    self,
    *,
    models: list[ModelEntry],
    image_ids: dict[str, list[str]],
    methods: list[str],
    computed_methods: list[str],
    utility_models: list[str],
    independent_models: list[str],
    skipped: list[dict[str, str]] | None = None,
    cascade_keep: int = 0,
  ) -> None:
    """Records the maps stage's decisions (call save() to write them)."""
    self.data["run"] = dict(
      models=[
        dict(name=m.name, arch=m.arch, block_names=list(m.block_names), role=m.role) for m in models
      ],
      image_ids={str(k): [str(i) for i in v] for k, v in image_ids.items()},
      methods=list(methods),
      computed_methods=list(computed_methods),
      utility_models=list(utility_models),
      independent_models=list(independent_models),
      skipped=[dict(s) for s in skipped or []],
      cascade_keep=int(cascade_keep),
    )

  @property
  def has_run(self) -> bool:
    return "run" in self.data

  def _run(self) -> dict[str, Any]:
    if "run" not in self.data:
      raise FileNotFoundError(f"{self.path} holds no run: run the maps stage first")
    return self.data["run"]

  @property
  def models(self) -> list[ModelEntry]:
    return [
      ModelEntry(m["name"], m["arch"], tuple(m["block_names"]), m["role"])
      for m in self._run()["models"]
    ]

  @property
  def classifiers(self) -> list[ModelEntry]:
    return [m for m in self.models if m.role == CLASSIFIER]

  @property
  def localizers(self) -> list[ModelEntry]:
    return [m for m in self.models if m.role == LOCALIZER]

  def model(self, name: str) -> ModelEntry:
    for m in self.models:
      if m.name == name:
        return m
    raise KeyError(f"no model {name!r} in {self.path}")

  def image_ids(self, set_name: SetName | str) -> list[str]:
    return list(self._run()["image_ids"][str(set_name)])

  @property
  def methods(self) -> list[str]:
    return list(self._run()["methods"])

  @property
  def computed_methods(self) -> list[str]:
    return list(self._run()["computed_methods"])

  @property
  def utility_models(self) -> list[str]:
    return list(self._run()["utility_models"])

  @property
  def independent_models(self) -> list[str]:
    return list(self._run()["independent_models"])

  @property
  def skipped(self) -> list[dict[str, str]]:
    """[{model, what, why}]: methods and criteria a model could not give (e.g. a model known
    only by its logits has no blocks to randomize); their stores do not exist."""
    return list(self.data.get("run", {}).get("skipped", []))

  def cascade_steps(self, model: ModelEntry | str) -> list[str]:
    """original, then cascade_<block> from the logits down, stopping `cascade_keep` blocks
    above the bottom (the blocks the cascade left trained: protocol.cascade_keep)."""
    entry = self.model(model) if isinstance(model, str) else model
    blocks = list(entry.block_names)
    blocks = blocks[: max(len(blocks) - self._run().get("cascade_keep", 0), 1)]
    return [State.ORIGINAL] + [cascade_state(b) for b in blocks]
