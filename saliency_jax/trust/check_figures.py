"""The figures of the control-map, CheXlocalize and verdict-robustness sections, as PNG files."""

from __future__ import annotations

from typing import Any

import matplotlib.colors
import matplotlib.lines
import matplotlib.patches
import numpy as np

from saliency_jax.trust.plotting import COLORS
from saliency_jax.trust.plotting import panels
from saliency_jax.trust.plotting import plt
from saliency_jax.trust.plotting import save


def _nan(value) -> float:
  return np.nan if value is None else float(value)


def controls_figure(table: dict[str, Any], methods: list[str], path: str) -> str:
  """Per verdict rule: each method's mean (dots) against each control's mean (lines; solid
  where the method must beat it, dotted where the comparison is not applicable)."""
  rules = list(dict.fromkeys(s["criterion"] for s in table["scores"]))
  controls = list(dict.fromkeys(s["control"] for s in table["scores"]))
  fig, axes = panels(len(rules), min(len(rules), 3), 4.6, 3.4)
  for ax, rule in zip(axes, rules):
    rows = [c for c in table["comparisons"] if c["criterion"] == rule]
    values = {c["method"]: _nan(c["method_value"]) for c in rows}
    x = np.arange(len(methods))
    ax.plot(x, [values.get(m, np.nan) for m in methods], "o", color="k", ms=5)
    for score in (s for s in table["scores"] if s["criterion"] == rule):
      color = COLORS[controls.index(score["control"]) % 10]
      ax.axhline(_nan(score["value"]), color=color, ls="-" if score["applicable"] else ":", lw=1.5)
    missed = [
      i
      for i, m in enumerate(methods)
      if any(c["method"] == m and c["applicable"] and not c["beats"] for c in rows)
    ]
    if missed:
      ax.plot(x[missed], [values.get(methods[i], np.nan) for i in missed], "x", color="r", ms=10)
    ax.set_xticks(x)
    ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=7)
    metric = next((s["metric"] for s in table["scores"] if s["criterion"] == rule), "")
    ax.set_title(f"{rule} ({metric})", fontsize=10)
    ax.grid(alpha=0.3)
  # One legend for the figure: per-panel legends covered the points.
  Line2D = matplotlib.lines.Line2D
  handles = [Line2D([], [], marker="o", color="k", ls="", label="methods")]
  handles += [Line2D([], [], color=COLORS[i % 10], label=c) for i, c in enumerate(controls)]
  handles += [
    Line2D([], [], color="grey", ls=":", label="control not applicable to the rule"),
    Line2D([], [], marker="x", color="r", ls="", ms=8, label="does not beat a control"),
  ]
  fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=7, frameon=False)
  fig.tight_layout(rect=(0, 0, 1, 0.95))
  return save(fig, path)


def chexlocalize_figure(
  rows: list[dict[str, Any]],
  metrics: tuple[str, ...],
  labels: dict[str, str],
  baseline: str,
  path: str,
) -> str:
  """Bars: each method's mean of each metric with its bootstrap 95% CI; dashed lines: the
  localization network's."""
  shown = [r for r in rows if r["method"] != baseline]
  base = next((r for r in rows if r["method"] == baseline), None)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shown) + 2), 3.6))
  width = 0.8 / len(metrics)
  x = np.arange(len(shown))
  for j, metric in enumerate(metrics):
    means = np.array([_nan(r[metric]["mean"]) for r in shown])
    low = np.array([_nan(r[metric]["low"]) for r in shown])
    high = np.array([_nan(r[metric]["high"]) for r in shown])
    err = np.nan_to_num(np.stack([means - low, high - means]), nan=0.0).clip(min=0)
    ax.bar(
      x + (j - (len(metrics) - 1) / 2) * width,
      means,
      width,
      yerr=err,
      capsize=2,
      color=COLORS[j],
      label=labels[metric],
    )
    if base is not None and base[metric]["mean"] is not None:
      ax.axhline(base[metric]["mean"], color=COLORS[j], ls="--", lw=1)
  ax.set_xticks(x)
  ax.set_xticklabels([r["method"] for r in shown], rotation=45, ha="right", fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=7, ncol=len(metrics))
  return save(fig, path)


_VERDICT_CODE = {"FAIL": 0, "N/A": 1, "PASS": 2}


def robustness_figure(
  rows: list[dict[str, Any]], choices: list[str], methods: list[str], path: str
) -> str:
  """Per verdict rule: the verdict of every method (rows) at every grid point (columns, the
  run as configured first): green PASS, red FAIL, grey N/A."""
  rules = list(dict.fromkeys(r["criterion"] for r in rows))
  cmap = matplotlib.colors.ListedColormap(["#cf222e", "#bbbbbb", "#1a7f37"])
  fig, axes = panels(len(rules), 1, max(6.0, 0.35 * len(choices) + 2), 0.3 * len(methods) + 0.9)
  for i, (ax, rule) in enumerate(zip(axes, rules)):
    grid = np.full((len(methods), len(choices)), _VERDICT_CODE["N/A"], float)
    for r in rows:
      if r["criterion"] == rule and r["method"] in methods and r["choice"] in choices:
        grid[methods.index(r["method"]), choices.index(r["choice"])] = _VERDICT_CODE[r["verdict"]]
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, aspect="auto")
    ax.set_yticks(range(len(methods)))
    ax.set_yticklabels(methods, fontsize=7)
    ax.set_xticks(range(len(choices)))
    # The grid points are the same in every panel: named once, under the last one, so the
    # rotated names do not run into the next panel's title.
    last = i == len(rules) - 1
    ax.set_xticklabels(choices if last else [], rotation=60, ha="right", fontsize=7)
    ax.axvline(0.5, color="k", lw=1.5)
    ax.set_title(rule, fontsize=10)
  legend = [
    matplotlib.patches.Patch(color=cmap(code / 2), label=verdict)
    for verdict, code in sorted(_VERDICT_CODE.items(), key=lambda kv: -kv[1])
  ]
  axes[0].legend(handles=legend, loc="lower left", bbox_to_anchor=(0, 1.08), ncol=3, fontsize=7)
  return save(fig, path)
