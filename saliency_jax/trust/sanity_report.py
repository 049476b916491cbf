"""The report's section on the sanity checks beyond the paper: rules, figures, tables."""

import os
from typing import Any

import numpy as np

from saliency_jax.trust.plotting import COLORS
from saliency_jax.trust.plotting import plt
from saliency_jax.trust.plotting import save
from saliency_jax.trust.report_render import Figure
from saliency_jax.trust.report_render import Table
from saliency_jax.trust.sanity import FAITHFULNESS_METRICS
from saliency_jax.trust.sanity import RANDOM_ORDER

TITLES = {
  "data_randomization": "Data randomization",
  "smooth_mprt": "Smooth MPRT",
  "efficient_mprt": "Efficient MPRT",
  "random_logit": "Random logit",
  "input_invariance": "Input invariance",
  "faithfulness": "Faithfulness: deletion",
}
CAPTIONS = {
  "data_randomization": (
    "SSIM between the trained model's maps and the maps of the same "
    "architecture trained on permuted labels (bars, 95% CI) vs random "
    "pairs of images (dots): a trustworthy method is below the dots."
  ),
  "smooth_mprt": (
    "SSIM between smoothed maps of the trained and the fully randomized model "
    "(bars) vs smoothed maps of two different images (dots): a trustworthy "
    "method is below the dots."
  ),
  "efficient_mprt": (
    "Histogram entropy of the fully randomized model's maps (bars) vs the "
    "trained model's (dots): a method sensitive to the parameters rises."
  ),
  "random_logit": (
    "SSIM between the explained class's map and another class's (bars) vs "
    "random pairs of images (dots): a class-sensitive method is below."
  ),
  "input_invariance": (
    "SSIM between the maps of the image and of the shifted image through "
    "the adjusted model (same outputs; bars) vs 1 - tolerance (dots): an "
    "input-invariant method is at 1."
  ),
  "faithfulness": (
    "Deletion area (bars, lower is faithful) vs removing pixels in a random order (dots)."
  ),
}


def _bars(rows: list[dict[str, Any]], path: str, title: str) -> str:
  methods = [r["method"] for r in rows]
  fig, ax = plt.subplots(figsize=(max(4.0, 0.75 * len(methods) + 1.5), 3.2))
  x = np.arange(len(methods))
  values = np.array([np.nan if r["value"] is None else r["value"] for r in rows])
  low = [0.0 if not r["value_ci"] else r["value"] - r["value_ci"][0] for r in rows]
  high = [0.0 if not r["value_ci"] else r["value_ci"][1] - r["value"] for r in rows]
  colors = [{"PASS": "#1a7f37", "FAIL": "#cf222e"}.get(r["verdict"], "#888888") for r in rows]
  ax.bar(x, np.nan_to_num(values), yerr=[low, high], color=colors, alpha=0.75, capsize=3)
  baseline = [np.nan if r["baseline"] is None else r["baseline"] for r in rows]
  ax.plot(x, baseline, "ko", ms=5, label=rows[0]["baseline_name"])
  ax.set_xticks(x)
  ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
  ax.set_ylabel(rows[0]["metric"].upper() if rows[0]["metric"] == "ssim" else rows[0]["metric"])
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7, loc="best")
  ax.grid(alpha=0.3, axis="y")
  return save(fig, path)


def _curves(rows: list[dict[str, Any]], path: str, baseline: str) -> str:
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
  for ax, kind in zip(axes, ("deletion", "insertion")):
    for i, row in enumerate(rows):
      curve = np.array([np.nan if v is None else v for v in row[f"{kind}_curve"]])
      style = (
        dict(color="k", ls="--") if row["method"] == RANDOM_ORDER else dict(color=COLORS[i % 10])
      )
      ax.plot(np.linspace(0, 1, len(curve)), curve, label=row["method"], lw=1.2, **style)
    ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
    ax.set_ylabel("probability of the explained class")
    ax.set_title(f"{kind} ({baseline} baseline)", fontsize=10)
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, loc="best")
  return save(fig, path)


def figures(summary: dict[str, Any], figure_dir: str) -> dict[str, str]:
  """One bar chart per check, and the mean deletion / insertion curves."""
  sanity = summary.get("sanity")
  if not sanity:
    return {}
  os.makedirs(figure_dir, exist_ok=True)
  out = {}
  for check in sanity["rules"]:
    rows = [r for r in sanity["scorecard"] if r["criterion"] == check]
    if rows:
      out[f"sanity_{check}"] = _bars(
        rows, os.path.join(figure_dir, f"sanity_{check}.png"), TITLES[check]
      )
  if sanity["faithfulness"]:
    out["sanity_faithfulness_curves"] = _curves(
      sanity["faithfulness"],
      os.path.join(figure_dir, "sanity_faithfulness_curves.png"),
      sanity["faithfulness_baseline"],
    )
  return out


def _fmt(value) -> str:
  return "-" if value is None else f"{value:.3f}"


def section(summary: dict[str, Any], figure_paths: dict[str, str]):
  """The report's blocks for the checks ([] when none ran)."""
  sanity = summary.get("sanity")
  if not sanity:
    return []
  blocks: list[Any] = [
    "Checks the field added after the paper, each a column of the scorecard with its rule. "
    "Their maps come from the same engine and settings as the paper's criteria."
  ]
  for check, rule in sanity["rules"].items():
    blocks.append(f"**{TITLES[check]}**: PASS when {rule['text']}.")
    if f"sanity_{check}" in figure_paths:
      blocks.append(Figure(figure_paths[f"sanity_{check}"], CAPTIONS[check]))
  if sanity.get("permuted_models"):
    blocks.append(
      "Permuted-label models (validation AUC on permuted validation labels, so "
      "about 0.5 when nothing generalizes): "
      + ", ".join(f"{k}: {_fmt(v)}" for k, v in sanity["permuted_models"].items())
    )
  if "random_logit" in sanity["rules"]:
    blocks.append(
      "With two classes the random other class is the only other class. A softmax "
      "over two logits depends only on their difference, so where the two logits' "
      "gradients are opposite, |map| is the same for both classes: the test then "
      "asks whether a method separates the classes beyond that."
    )
  if sanity["faithfulness"]:
    rows = [
      [r["method"].replace(RANDOM_ORDER, "random order (baseline)")]
      + [_fmt(r[m]) for m in FAITHFULNESS_METRICS]
      + [str(r["sic_excluded"])]
      for r in sanity["faithfulness"]
    ]
    blocks.append(
      Table(
        [
          "map",
          "deletion AUC (lower better)",
          "insertion AUC (higher)",
          "ROAD MoRF (lower)",
          "ROAD LeRF (higher)",
          "SIC (higher)",
          "AIC (higher)",
          "PIC skipped",
        ],
        rows,
      )
    )
    blocks.append(
      "ROAD: mean output over the removal fractions with noisy linear imputation "
      "(Rong et al. 2022). SIC/AIC: PAIR's performance information curves "
      "(Kapishnikov et al. 2019); an image is skipped where PIC is undefined "
      "(prediction below the minimum, or blurring does not lower it)."
    )
    if "sanity_faithfulness_curves" in figure_paths:
      blocks.append(
        Figure(
          figure_paths["sanity_faithfulness_curves"],
          "Mean deletion and insertion curves of each method (dashed: random order).",
        )
      )
  return [("Sanity checks beyond the paper", blocks)]
