"""The report's tables of the scorecard: verdicts per method, where each randomization verdict
was read, the statistics of every row, and the utility means. Each returns a `Table` built from
summary.json."""

from collections.abc import Sequence
from typing import Any

from saliency_jax.trust.names import Baseline
from saliency_jax.trust.report_render import Table


def fmt(value, digits: int = 3) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def _fmt_p(value) -> str:
  if value is None:
    return "-"
  return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _value_ci(row, prefix: str) -> str:
  value = row.get(prefix)
  if value is None:
    return "-"
  ci = row.get(f"{prefix}_ci")
  text = f"{value:.3f}"
  if ci:
    text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
  return text


def _column(row) -> tuple[str, str | None]:
  """A scorecard column: the rule, and the architecture of a per-architecture verdict."""
  return row["criterion"], row.get("architecture")


def scorecard_table(summary: dict[str, Any], methods: Sequence[str]) -> Table:
  """Method x verdict (rule, per architecture where it is): value with 95% CI, baseline,
  verdict and its corrected p-value (a mean on the passing side can still FAIL: too few images
  for the test to reach alpha)."""
  columns = list(dict.fromkeys(_column(r) for r in summary["scorecard"]))
  by_key = {(r["method"], _column(r)): r for r in summary["scorecard"]}
  rows = []
  for method in methods:
    cells = [method]
    for column in columns:
      r = by_key.get((method, column))
      if r is None:
        cells.append("-")
        continue
      cell = f"{_value_ci(r, 'value')} vs {fmt(r.get('baseline'))} **{r['verdict']}**"
      if r.get("p_adjusted") is not None:
        cell += f" (p {_fmt_p(r['p_adjusted'])})"
      cells.append(cell)
    rows.append(cells)
  header = [
    f"{rule}{f' {arch}' if arch else ''} ({summary['rules'][rule]['metric'].upper()})"
    for rule, arch in columns
  ]
  return Table(["method"] + header, rows)


def randomization_table(summary: dict[str, Any]) -> Table | None:
  """Per randomization verdict: the step it was read at and where the curve first passed
  the baseline."""
  rows = [
    [
      r["criterion"],
      r.get("architecture") or "all (pooled)",
      r["method"],
      ", ".join(r.get("replicates", [])),
      r.get("step") or "-",
      r.get("first_step_past_baseline") or "never",
      r["baseline_kind"],
      r["verdict"],
    ]
    for r in summary["scorecard"]
    if "step" in r
  ]
  if not rows:
    return None
  return Table(
    [
      "rule",
      "architecture",
      "method",
      "replicates",
      "verdict read at",
      "first step past the baseline",
      "baseline",
      "verdict",
    ],
    rows,
  )


def details_table(summary: dict[str, Any]) -> Table:
  rows = []
  for r in summary["scorecard"]:
    rows.append(
      [
        r["criterion"],
        r["method"],
        r["metric"],
        _value_ci(r, "value"),
        f"{r['baseline_name']}: {_value_ci(r, 'baseline')}",
        f"{r['pairs']} ({r['pairs_excluded']} excluded)"
        + (f" [{r['architecture']}]" if r.get("architecture") else ""),
        r.get("test") or "-",
        r["alternative"],
        _fmt_p(r.get("p_value")),
        _fmt_p(r.get("p_adjusted")),
        r["verdict"],
      ]
    )
  return Table(
    [
      "rule",
      "method",
      "metric",
      "mean [95% CI]",
      "baseline mean [95% CI]",
      "images",
      "test",
      "alternative",
      "p",
      "p (corrected)",
      "verdict",
    ],
    rows,
  )


def utility_table(summary: dict[str, Any], localization: str = "U-Net") -> Table:
  names = {
    Baseline.AVERAGE_MASK: "average mask (baseline)",
    Baseline.LOCALIZATION: f"{localization} (baseline)",
  }
  rows = [
    [
      names.get(r["method"], r["method"]),
      r["state"],
      fmt(r["auprc"]),
      fmt(r["pointing_game"]),
      fmt(r["iou_otsu"]),
      str(r["auprc_excluded"]),
    ]
    for r in summary["utility"]
  ]
  return Table(["map", "model", "AUPRC", "pointing game", "Otsu IoU", "excluded (AUPRC)"], rows)
