"""The report's figures, in the style of the paper, as PNG files.

  all_figures(manifest, reader, summary, records, directory, num_examples=...)

draws from the summary and the records, and reads the example maps through the `MapReader`.
"""

from collections.abc import Sequence
import os
from typing import Any

import numpy as np

from saliency_jax.trust import record_table
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.map_reader import MapReader
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import Measure
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State
from saliency_jax.trust.plotting import COLORS
from saliency_jax.trust.plotting import panels
from saliency_jax.trust.plotting import plt
from saliency_jax.trust.plotting import save


def cascading_curves(curves: dict[str, Any], path: str, *, metric_label: str, title: str) -> str:
  """One panel per method: similarity to the trained map at each cascading step (mean +/- std
  over replicates), the random-pair baseline (dashed) and, where it was run, independent
  randomization of each block alone (dotted)."""
  methods = list(curves)
  fig, axes = panels(len(methods), 4, 3.4, 2.9)
  low = -0.1
  for ax, method in zip(axes, methods):
    c = curves[method]
    x = np.arange(len(c["steps"]))
    mean = np.array([np.nan if v is None else v for v in c["mean"]])
    std = np.array([np.nan if v is None else v for v in c["std"]])
    ax.plot(x, mean, "o-", color=COLORS[0], ms=3, label=f"cascading (n={len(c['replicates'])})")
    ax.fill_between(x, mean - std, mean + std, color=COLORS[0], alpha=0.2, lw=0)
    if c.get("independent"):
      ind = np.array([np.nan if v is None else v for v in c["independent"]["mean"]])
      n = min(len(ind), len(x) - 1)  # the blocks the cascade reached
      ax.plot(x[1 : 1 + n], ind[:n], "s:", color=COLORS[1], ms=3, label="independent")
    if c["baseline"] is not None:
      ax.axhline(c["baseline"], color="k", ls="--", lw=1, label="random pairs")
    low = min(low, np.nanmin(np.concatenate([mean - std, [0.0]])) - 0.05)
    ax.set_xticks(x)
    ax.set_xticklabels(c["steps"], rotation=60, ha="right", fontsize=7)
    ax.set_title(method, fontsize=10)
    ax.grid(alpha=0.3)
  for ax in axes[: len(methods)]:
    ax.set_ylim(low, 1.05)
  axes[0].set_ylabel(metric_label)
  axes[0].legend(fontsize=7, loc="lower left")
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  return save(fig, path)


def box_plot(
  groups: dict[str, Sequence[np.ndarray]],
  labels: Sequence[str],
  path: str,
  *,
  ylabel: str,
  title: str,
  lines: dict[str, float],
) -> str:
  """Box plots per method; several groups per method (e.g. trained/untrained) side by side,
  horizontal lines for baselines."""
  names = list(groups)
  k = len(labels)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) * k), 4.2))
  width = 0.8 / k
  for g, label in enumerate(labels):
    data = [np.asarray(groups[n][g], np.float64) for n in names]
    data = [d[np.isfinite(d)] for d in data]
    pos = np.arange(len(names)) + (g - (k - 1) / 2) * width
    bp = ax.boxplot(
      [d if d.size else [np.nan] for d in data],
      positions=pos,
      widths=width * 0.9,
      patch_artist=True,
      showfliers=True,
      flierprops=dict(ms=2),
    )
    for patch in bp["boxes"]:
      patch.set_facecolor(COLORS[g])
      patch.set_alpha(0.6)
    ax.plot([], [], "s", color=COLORS[g], alpha=0.6, label=label)
  styles = ["--", ":", "-."]
  for i, (name, value) in enumerate(lines.items()):
    if value is not None:
      ax.axhline(value, color="k", ls=styles[i % 3], lw=1.2, label=f"{name}: {value:.3f}")
  ax.set_xticks(np.arange(len(names)))
  ax.set_xticklabels(names)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8, loc="upper right")
  fig.tight_layout()
  return save(fig, path)


def example_panel(
  raw: np.ndarray,
  masks: np.ndarray,
  boxes: list[np.ndarray],
  maps: dict[str, np.ndarray],
  scores: dict[str, np.ndarray],
  ids: Sequence[str],
  path: str,
) -> str:
  """Rows: images; columns: the image with its ground truth, then each method's map with
  its AUPRC."""
  n = len(raw)
  cols = 1 + len(maps)
  fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 2.0 * n), squeeze=False)
  for r in range(n):
    ax = axes[r, 0]
    ax.imshow(raw[r], cmap="gray")
    if masks[r].any():
      ax.contour(masks[r], levels=[0.5], colors="lime", linewidths=0.8)
    for y0, x0, y1, x1 in np.asarray(boxes[r]).reshape(-1, 4):
      ax.add_patch(
        plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=0.8)
      )
    ax.set_title(str(ids[r]), fontsize=6)
    for c, (method, stack) in enumerate(maps.items(), start=1):
      ax = axes[r, c]
      ax.imshow(stack[r], cmap="inferno", vmin=0, vmax=1)
      if masks[r].any():
        ax.contour(masks[r], levels=[0.5], colors="cyan", linewidths=0.6)
      value = scores[method][r]
      ax.set_title(f"{method}\nAUPRC {value:.2f}" if np.isfinite(value) else method, fontsize=7)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  return save(fig, path)


LOCALIZATION_LABELS = {"unet": "U-Net", "retinanet": "RetinaNet"}


def localization_label(manifest: Manifest) -> str:
  """How the report names the localization baseline: after its architecture."""
  archs = sorted({m.arch for m in manifest.localizers})
  return " / ".join(LOCALIZATION_LABELS.get(a, a) for a in archs) or "localization network"


def all_figures(
  manifest: Manifest,
  reader: MapReader,
  summary: dict[str, Any],
  records,
  directory: str,
  *,
  num_examples: int,
) -> dict[str, str]:
  """Writes every figure of the report; returns {name: path}."""
  os.makedirs(directory, exist_ok=True)
  index = record_table.index_records(records)
  methods = manifest.methods
  out = {}
  labels = {"ssim": "SSIM", "spearman_abs": "Spearman of |map|"}
  for metric, by_arch in summary["curves"].items():
    for arch, by_method in by_arch.items():
      out[f"cascading_{metric}_{arch}"] = cascading_curves(
        by_method,
        os.path.join(directory, f"cascading_{metric}_{arch}.png"),
        metric_label=labels[metric],
        title=f"{arch}: {labels[metric]} between the trained and the randomized model's "
        "maps, randomizing from the logits down",
      )

  ids = record_table.image_ids(index, Measure.UTILITY)
  models = manifest.utility_models

  def column(criterion, metric, method, selection, image_ids):
    return record_table.per_image(index, criterion, metric, method, selection, image_ids)

  utility = {
    m: [
      column(Measure.UTILITY, "auprc", m, [(x, State.ORIGINAL) for x in models], ids),
      column(Measure.UTILITY, "auprc", m, [(x, State.UNTRAINED) for x in models], ids),
    ]
    for m in methods
  }
  table = {row["method"]: row for row in summary["utility"]}
  out["utility"] = box_plot(
    utility,
    ["trained", "untrained"],
    os.path.join(directory, "utility_auprc.png"),
    ylabel="AUPRC",
    title="Localization utility (AUPRC per image)",
    lines={
      "average mask": table[Baseline.AVERAGE_MASK]["auprc"],
      localization_label(manifest): table[Baseline.LOCALIZATION]["auprc"],
    },
  )

  eval_ids = record_table.image_ids(index, Measure.CASCADING)
  loc_models = record_table.models_of(index, Measure.LOCALIZATION_AGREEMENT)
  loc = record_table.per_image(
    index,
    Measure.LOCALIZATION_AGREEMENT,
    "ssim",
    Baseline.LOCALIZATION,
    [(m, State.ORIGINAL) for m in loc_models],
    eval_ids,
  )
  loc_mean = float(np.nanmean(loc)) if np.isfinite(loc).any() else None
  agreement = {}
  labels = []
  for criterion in (Measure.REPEATABILITY, Measure.REPRODUCIBILITY):
    pairs = record_table.models_of(index, criterion)
    if pairs:
      labels.append(criterion)
      for m in methods:
        agreement.setdefault(m, []).append(
          column(criterion, "ssim", m, [(p, State.ORIGINAL) for p in pairs], eval_ids)
        )
  if labels:
    out["agreement"] = box_plot(
      agreement,
      labels,
      os.path.join(directory, "repeatability_reproducibility.png"),
      ylabel="SSIM",
      title="Repeatability and reproducibility (SSIM per image)",
      lines={f"{localization_label(manifest)} replicates": loc_mean},
    )

  truth = reader.ground_truth(SetName.UTILITY)
  count = min(num_examples, len(truth.ids))
  if count and models:
    pick = np.linspace(0, len(truth.ids) - 1, count).astype(int)
    read = {m: reader.read(SetName.UTILITY, models[0], State.ORIGINAL, m) for m in methods}
    maps = {m: v[pick] for m, v in read.items() if v is not None}  # None: not evaluated
    scores = {
      m: column(
        Measure.UTILITY,
        "auprc",
        m,
        [(models[0], State.ORIGINAL)],
        [str(i) for i in truth.ids[pick]],
      )
      for m in maps
    }
    out["examples"] = example_panel(
      truth.raw[pick, ..., 0],
      truth.masks[pick],
      [truth.boxes[i] for i in pick],
      maps,
      scores,
      truth.ids[pick],
      os.path.join(directory, "examples.png"),
    )
  return out
