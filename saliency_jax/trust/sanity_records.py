"""The sanity checks' per-image records, from the maps and faithfulness files of the maps stage.

  records(manifest, reader, config.sanity, config.study, seed=config.seed, workdir=workdir)

Each similarity check compares the stores of its two states (`sanity.COMPARISONS`), sMPRT also
against smoothed random pairs; eMPRT gives the histogram entropy of the trained and the fully
randomized model's maps; faithfulness reads `sanity/faithfulness/<model>/<method>.npz`. The
criterion of a record is the check's name.
"""

from collections.abc import Sequence
import os
from typing import Any

import numpy as np

from saliency_jax.sanity import complexity
from saliency_jax.trust import criteria
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.map_reader import MapReader
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State
from saliency_jax.trust.record_table import per_image_records
from saliency_jax.trust.sanity import _methods
from saliency_jax.trust.sanity import COMPARISONS
from saliency_jax.trust.sanity import FAITHFULNESS_METRICS
from saliency_jax.trust.sanity import faithfulness_path
from saliency_jax.trust.sanity import FULLY_RANDOMIZED
from saliency_jax.trust.sanity import RANDOM_ORDER
from saliency_jax.trust.sanity import section_enabled


def records(
  manifest: Manifest, reader: MapReader, sanity_config, study_config, *, seed: int, workdir: str
) -> list[dict[str, Any]]:
  """Tidy records of every enabled check (criterion = the check's name)."""
  ids = reader.ground_truth(SetName.EVAL).ids
  data_range = study_config.ssim_data_range
  computed = manifest.computed_methods
  out: list[dict[str, Any]] = []
  for check, (state_a, state_b) in COMPARISONS.items():
    if not section_enabled(sanity_config, check):
      continue
    for model in sanity_config[check].models:
      for method in _methods(sanity_config, check, computed):
        maps_a = reader.read(SetName.EVAL, model, state_a, method)
        maps_b = reader.read(SetName.EVAL, model, state_b, method)
        if maps_a is None or maps_b is None:
          continue  # a method the model cannot give
        values = criteria.similarity(maps_a, maps_b, data_range=data_range)
        if check == "input_invariance":
          values["max_abs_diff"] = np.abs(maps_a - maps_b).reshape(len(ids), -1).max(axis=1)
        out += per_image_records(
          values, ids, criterion=check, method=method, model=model, state=state_b
        )
        if check == "smooth_mprt":
          baseline = criteria.random_pair_baseline(
            maps_a, pairs=study_config.random_pairs, seed=seed, data_range=data_range
          )
          out += per_image_records(
            baseline,
            ids,
            criterion="smooth_random_pairs",
            method=method,
            model=model,
            state=State.BASELINE,
          )
  if section_enabled(sanity_config, "efficient_mprt"):
    bins = sanity_config.efficient_mprt.bins
    for entry in manifest.classifiers:
      if not entry.block_names:
        continue  # nothing was randomized
      last = manifest.cascade_steps(entry)[-1]  # the cascade's end (protocol.cascade_keep)
      for method in manifest.methods:
        before = reader.read(SetName.EVAL, entry.name, State.ORIGINAL, method)
        after = reader.read(SetName.EVAL, entry.name, last, method)
        if before is None or after is None:
          continue
        h0 = complexity.histogram_entropy(before, bins)
        h1 = complexity.histogram_entropy(after, bins)
        out += per_image_records(
          {"entropy": h0},
          ids,
          criterion="efficient_mprt",
          method=method,
          model=entry.name,
          state=State.ORIGINAL,
        )
        out += per_image_records(
          {"entropy": h1, "relative_rise": complexity.relative_rise(h0, h1)},
          ids,
          criterion="efficient_mprt",
          method=method,
          model=entry.name,
          state=FULLY_RANDOMIZED,
        )
  if section_enabled(sanity_config, "faithfulness"):
    out += faithfulness_records(workdir, sanity_config, computed)
  return out


def faithfulness_records(
  workdir: str, sanity_config, methods: Sequence[str]
) -> list[dict[str, Any]]:
  """Records of the faithfulness files the maps stage wrote."""
  f = sanity_config.faithfulness
  out = []
  for model in f.models:
    for method in list(methods) + [RANDOM_ORDER]:
      path = faithfulness_path(workdir, model, method)
      if not os.path.exists(path):
        if method != RANDOM_ORDER and os.path.exists(
          faithfulness_path(workdir, model, RANDOM_ORDER)
        ):
          continue  # a method the model cannot give
        raise FileNotFoundError(
          f"no faithfulness values at {path}: rerun the maps stage (launch.run_all --redo=maps)"
        )
      with np.load(path) as data:
        ids = data["ids"]
        out += per_image_records(
          {m: data[m] for m in FAITHFULNESS_METRICS},
          ids,
          criterion="faithfulness",
          method=method,
          model=model,
          state=State.ORIGINAL,
        )
        for kind in ("deletion", "insertion"):
          curve = data[f"curve_{kind}"]
          out += per_image_records(
            {f"{kind}_step{k}": curve[:, k] for k in range(curve.shape[1])},
            ids,
            criterion="faithfulness_curve",
            method=method,
            model=model,
            state=kind,
          )
  return out
