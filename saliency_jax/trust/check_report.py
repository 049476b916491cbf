"""The report's sections of the control maps, CheXlocalize's metrics and verdict robustness.

`figures(summary, methods, directory)` draws them; `sections(summary, paths)` returns
(heading, blocks) for `report.build_sections`, each with its figure, table and rule text. A
check that the run did not do (its config section disabled) has no section.
"""

from __future__ import annotations

import os
from typing import Any

from saliency_jax.trust import check_figures
from saliency_jax.trust import chexlocalize_scoring
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.report_render import Figure
from saliency_jax.trust.report_render import Table

_CHEXLOCALIZE_LABELS = {
  "iou_otsu": "mIoU (Otsu)",
  "iou_tuned": "mIoU (tuned threshold)",
  "hit": "hit rate",
}


def figures(summary: dict[str, Any], methods: list[str], directory: str) -> dict[str, str]:
  os.makedirs(directory, exist_ok=True)
  paths = {}
  if summary.get("controls"):
    paths["controls"] = check_figures.controls_figure(
      summary["controls"], methods, os.path.join(directory, "controls.png")
    )
  if summary.get("chexlocalize"):
    paths["chexlocalize"] = check_figures.chexlocalize_figure(
      summary["chexlocalize"]["rows"],
      chexlocalize_scoring.METRICS,
      _CHEXLOCALIZE_LABELS,
      Baseline.LOCALIZATION,
      os.path.join(directory, "chexlocalize.png"),
    )
  if summary.get("robustness"):
    paths["robustness"] = check_figures.robustness_figure(
      summary["robustness"]["rows"],
      summary["robustness"]["choices"],
      methods,
      os.path.join(directory, "robustness.png"),
    )
  return paths


def _ci(entry: dict[str, Any] | None, key: str = "mean", digits: int = 3, unit: str = "") -> str:
  """entry[key] [low, high] of a summary entry ("-" where the value is undefined)."""
  if not entry or entry.get(key) is None:
    return "-"
  text = f"{entry[key]:.{digits}f}{unit}"
  if entry.get("low") is not None and entry.get("high") is not None:
    text += f" [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"
  return text


def _pct(entry: dict[str, Any] | None) -> str:
  """decrease% [low, high] of a percentage-decrease entry."""
  return _ci(entry, "decrease", digits=1, unit="%")


def _controls_section(table: dict[str, Any], path: str) -> list:
  applicable = "; ".join(f"{c}: {', '.join(names)}" for c, names in table["applicable"].items())
  why = " ".join(f"{c}: {text}" for c, text in table["not_applicable_why"].items())
  scores = [
    [
      s["criterion"],
      s["control"],
      s["metric"].upper(),
      _ci(
        {
          "mean": s["value"],
          "low": (s["value_ci"] or [None])[0],
          "high": (s["value_ci"] or [None, None])[1],
        }
      ),
      "yes" if s["applicable"] else "no (shown only)",
      s["own_verdict"],
    ]
    for s in table["scores"]
  ]
  flags = [
    [method, "; ".join(missed) if missed else "beats every applicable control"]
    for method, missed in table["flags"].items()
  ]
  return [
    (
      "Control maps: what an uninformative map scores",
      [
        "Control maps know nothing of the model (Binder et al. 2023; Yona & Greenfeld "
        "2021): NOISE (uniform, drawn afresh per image, model and state), SOBEL (the "
        "image's Sobel edges), BLOB (a centred Gaussian), AVERAGE_MASK (the mean positive "
        "training mask). Each is scored by every criterion like a method.",
        f"**Rule**: a method beats a control when the criterion's own rule (its metric, "
        f"one-sided paired test and direction) rejects with the control's per-image values "
        f"as the baseline, corrected across methods as the scorecard. A method is flagged "
        f"when it does not beat a control the criterion can compare with ({applicable}). "
        f"Left out: {why}",
        Figure(
          path,
          "Each method's mean (dots) against each control's (lines; dotted: "
          "shown, not compared); red crosses: a method that does not beat an "
          "applicable control.",
        ),
        Table(
          [
            "rule",
            "control",
            "metric",
            "mean [95% CI]",
            "compared",
            "the rule's verdict for the control itself",
          ],
          scores,
        ),
        Table(["method", "applicable controls not beaten"], flags),
      ],
    )
  ]


def _chexlocalize_section(data: dict[str, Any], path: str, localization: str) -> list:
  rows = []
  for r in data["rows"]:
    thresholds = ", ".join(f"{m} {t:.1f}" for m, t in r["thresholds"].items() if t is not None)
    rows.append(
      [
        r["method"] if r["method"] != Baseline.LOCALIZATION else f"{localization} (baseline)",
        _ci(r["iou_otsu"]),
        _pct(r.get("iou_otsu_decrease")),
        _ci(r["iou_tuned"]) + (f" (t = {thresholds})" if thresholds else ""),
        _pct(r.get("iou_tuned_decrease")),
        _ci(r["hit"]),
        _pct(r.get("hit_decrease")),
      ]
    )
  return [
    (
      "CheXlocalize localization metrics",
      [
        "CheXlocalize's metrics (Saporta et al. 2022) on the utility images, as its code "
        "defines them: each map min-max normalized; **mIoU (Otsu)**: pixels above Otsu's "
        "threshold of the map quantized to 256 levels; **mIoU (tuned)**: pixels above the "
        "threshold in 0.2 ... 0.8 that maximizes the mean IoU of this method and model on "
        "the validation set's positive images; **hit rate**: the map's first maximum "
        "inside the mask. 95% CIs: CheXlocalize's bootstrap over images (order statistics "
        "of the resample means). **Decrease**: the percentage decrease from the "
        f"localization network ({localization}) to the method, 100 (baseline - method) / "
        "baseline, with its CI from the same resamples. Not reproduced: CheXlocalize fills "
        "the outer contours of the Otsu segmentation (holes included).",
        Figure(
          path,
          "Mean of each CheXlocalize metric per method with its bootstrap 95% "
          f"CI; dashed: the {localization}'s.",
        ),
        Table(
          [
            "map",
            "mIoU Otsu [95% CI]",
            "decrease from baseline",
            "mIoU tuned [95% CI]",
            "decrease from baseline",
            "hit rate [95% CI]",
            "decrease from baseline",
          ],
          rows,
        ),
      ],
    )
  ]


def _robustness_section(data: dict[str, Any], path: str) -> list:
  rows = [
    [
      r["method"],
      r["criterion"],
      r["verdict"],
      r["status"]
      + (f" under: {'; '.join(r['flips'])}" if r["flips"] else "")
      + (f" (N/A under {len(r['undefined'])})" if r["undefined"] else ""),
    ]
    for r in data["summary"]
  ]
  flips = sum(r["status"] == "flips" for r in data["summary"])
  return [
    (
      "Verdict robustness",
      [
        f"The configured verdict rules re-run at {len(data['choices']) - 1} other grid "
        "points: the maps' grayscale (PAIR's |.| with the 99th-percentile clip, without "
        "the clip, or the signed diverging map), the similarity (SSIM at each data_range, "
        "Spearman of |map| or of the signed map, HOG, IoU of the top pixels), each rule's "
        "test, direction and baseline as configured. **Rule**: a verdict HOLDS when every "
        "grid point with a defined verdict agrees with the run's, and FLIPS otherwise "
        f"(under the choices named). {flips} of {len(data['summary'])} verdicts flip.",
        Figure(
          path,
          "Verdict of every method (rows) at every grid point (columns; left of "
          "the line: the run as configured). Green PASS, red FAIL, grey N/A.",
        ),
        Table(["method", "rule", "verdict", "across the grid"], rows),
      ],
    )
  ]


def sections(
  summary: dict[str, Any],
  paths: dict[str, str],
  *,
  localization: str = "localization network",
) -> list:
  """(heading, blocks) of every check the run did, in the report's order; `localization`
  names the localization baseline (U-Net, RetinaNet)."""
  out = []
  if summary.get("controls"):
    out += _controls_section(summary["controls"], paths["controls"])
  if summary.get("chexlocalize"):
    out += _chexlocalize_section(summary["chexlocalize"], paths["chexlocalize"], localization)
  if summary.get("robustness"):
    out += _robustness_section(summary["robustness"], paths["robustness"])
  return out
