"""The study's report: report.md and a self-contained report.html with the same content.

The content is built once as a list of sections made of paragraphs, tables and figures, then
rendered twice: Markdown (figures linked from figures/) and HTML (figures embedded as base64,
so the page opens from disk with no server).

  write_report(manifest, reader, config, workdir)

reads summary.json, results.json, progress.json and models/summary.json from the workdir, the
example maps through the `MapReader`, and prints the whole config in the provenance section.
"""

import base64
from collections.abc import Sequence
import dataclasses
import datetime
import html
from importlib import metadata
import json
import os
import platform
import shutil
import sys
from typing import Any

import jax
import ml_collections

from saliency_jax.trust import check_report
from saliency_jax.trust import figures
from saliency_jax.trust import protocol
from saliency_jax.trust import sanity_report
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.map_reader import MapReader
from saliency_jax.trust.names import Baseline
from saliency_jax.trust.names import SetName

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


@dataclasses.dataclass
class Table:
  header: Sequence[str]
  rows: Sequence[Sequence[Any]]


@dataclasses.dataclass
class Figure:
  path: str
  caption: str


Block = str | Table | Figure


def _fmt(value, digits: int = 3) -> str:
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
  verdict."""
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
      cells.append(f"{_value_ci(r, 'value')} vs {_fmt(r.get('baseline'))} **{r['verdict']}**")
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
      _fmt(r["auprc"]),
      _fmt(r["pointing_game"]),
      _fmt(r["iou_otsu"]),
      str(r["auprc_excluded"]),
    ]
    for r in summary["utility"]
  ]
  return Table(["map", "model", "AUPRC", "pointing game", "Otsu IoU", "excluded (AUPRC)"], rows)


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
        [name, e.get("arch", "-"), key, _fmt(value)]
        for name, e in trained.items()
        for key, value in e.items()
        if key.startswith("val_")
      ],
    ),
    Table(
      ["stage", "wall time (s)"], [[name, _fmt(e.get("seconds"), 1)] for name, e in stages.items()]
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


def build_sections(
  manifest: Manifest,
  config: ml_collections.ConfigDict,
  workdir: str,
  summary: dict[str, Any],
  figure_paths: dict[str, str],
):
  methods = manifest.methods
  s = config.study
  loc_label = figures.localization_label(manifest)
  tests = {"wilcoxon": "Wilcoxon signed-rank test", "paired_t": "paired t-test"}
  corrections = {"holm": "Holm", "bh": "Benjamini-Hochberg"}
  scalar = {r["criterion"] for r in summary["scorecard"] if r.get("baseline_kind") == "scalar"}

  def rule_text(c, r):
    if r["test"] == "every_image":
      return (
        f"**{c}**: PASS when {r['text']} on every image (metric {r['metric'].upper()}, "
        "no test: a property each map must have)."
      )
    per_arch = any(x.get("architecture") for x in summary["scorecard"] if x["criterion"] == c)
    return (
      f"**{c}**: PASS when {r['text']} (metric {r['metric'].upper()}, one-sided "
      f"{tests.get(r['test'], r['test'])} "
      + (
        "over images against the baseline's single number (one-sample)"
        if c in scalar
        else "over images paired with the baseline"
      )
      + f", alternative '{r['alternative']}', "
      f"{corrections.get(s.correction, s.correction)}-corrected across methods"
      + (", one verdict per architecture" if per_arch else "")
      + f", alpha = {s.alpha})."
    )

  rules = [rule_text(c, r) for c, r in summary["rules"].items()]
  sections = [
    (
      "Scorecard",
      [
        "Each cell: the method's mean over images [bootstrap 95% CI] vs the baseline's "
        "mean, and the verdict of the rule below.",
        scorecard_table(summary, methods),
      ]
      + rules
      + [
        f"SSIM uses data_range = {s.ssim_data_range} (the paper's 2020 scikit-image "
        "took 2.0 from the float dtype; 1.0 is the textbook value for [0, 1] maps). "
        "Undefined values (a constant map, an empty mask) are excluded from means and "
        "tests and counted in the tables.",
      ],
    ),
  ]
  sections.append(("Protocol", protocol_section(config, summary.get("protocol"))))
  if manifest.skipped:
    sections.append(
      (
        "Not evaluated",
        [
          "What a model does not expose disables only the methods and criteria that need it:",
          Table(
            ["model", "method or criterion", "why"],
            [[e["model"], e["what"], e["why"]] for e in manifest.skipped],
          ),
        ],
      )
    )
  if "examples" in figure_paths:
    sections.append(
      (
        "Examples",
        [
          Figure(
            figure_paths["examples"],
            "Test images with their ground truth (green outline, yellow boxes) and each "
            "method's map from the trained model, with its AUPRC.",
          )
        ],
      )
    )
  sections.append(
    (
      "1. Localization utility",
      [
        Figure(
          figure_paths["utility"],
          "AUPRC per image for trained and untrained (fully randomized) models; lines: "
          f"the average-mask and {loc_label} baselines.",
        ),
        utility_table(summary, loc_label),
      ],
    )
  )
  randomization = []
  for name, path in figure_paths.items():
    if name.startswith("cascading_ssim_"):
      randomization.append(
        Figure(
          path,
          (
            f"{name[len('cascading_ssim_') :]}: cascading randomization from the logits down "
            "to the last block the protocol randomizes, mean SSIM between the trained model's "
            "map and the randomized model's map (band: std over replicates); dotted: one block "
            "randomized alone. A trustworthy method falls below the dashed random-pair line."
          ),
        )
      )
  for name, path in figure_paths.items():
    if name.startswith("cascading_spearman_abs_"):
      randomization.append(
        Figure(
          path,
          (
            f"{name[len('cascading_spearman_abs_') :]}: the same with the Spearman rank "
            "correlation of |map| (Adebayo et al.; Quantus' MPRT default)."
          ),
        )
      )
  steps = randomization_table(summary)
  if steps is not None:
    randomization.append(steps)
  sections.append(("2. Sensitivity to weight randomization", randomization))
  if "agreement" in figure_paths:
    sections.append(
      (
        "3-4. Repeatability and reproducibility",
        [
          Figure(
            figure_paths["agreement"],
            "SSIM between maps of replicates of the same architecture (repeatability) and of "
            f"different architectures (reproducibility); line: SSIM between the two {loc_label} "
            "replicates' outputs.",
          )
        ],
      )
    )
  sections += check_report.sections(
    summary, figure_paths, Table, Figure, localization=figures.localization_label(manifest)
  )
  sections += sanity_report.section(summary, figure_paths, Table, Figure)
  sections.append(("Statistical details", [details_table(summary)]))
  sections.append(("Provenance", provenance(manifest, config, workdir)))
  return sections


def _md_table(table: Table) -> str:
  lines = [
    "| " + " | ".join(table.header) + " |",
    "|" + "|".join("---" for _ in table.header) + "|",
  ]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table.rows]
  return "\n".join(lines)


def render_markdown(title: str, sections, workdir: str) -> str:
  out = [f"# {title}", ""]
  for heading, blocks in sections:
    out += [f"## {heading}", ""]
    for block in blocks:
      if isinstance(block, Table):
        out.append(_md_table(block))
      elif isinstance(block, Figure):
        rel = os.path.relpath(block.path, workdir)
        out.append(f"![{block.caption}]({rel})\n\n*{block.caption}*")
      else:
        out.append(block)
      out.append("")
  return "\n".join(out)


def _html_inline(text: str) -> str:
  parts = html.escape(text).split("**")
  return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _html_cell(text: str) -> str:
  cell = _html_inline(str(text))
  for verdict, color in (("PASS", "#1a7f37"), ("FAIL", "#cf222e")):
    cell = cell.replace(f"<b>{verdict}</b>", f'<b style="color:{color}">{verdict}</b>')
  return cell


def render_html(title: str, sections) -> str:
  style = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;"
    "padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;"
    "font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%}figure{margin:1.5em 0}"
    "figcaption{color:#555;font-size:0.9em}pre{background:#f6f8fa;padding:1em;"
    "overflow-x:auto;font-size:0.8em}"
  )
  out = [
    f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
    f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
  ]
  for heading, blocks in sections:
    out.append(f"<h2>{html.escape(heading)}</h2>")
    for block in blocks:
      if isinstance(block, Table):
        out.append(
          "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.header) + "</tr>"
        )
        for row in block.rows:
          out.append("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>")
        out.append("</table>")
      elif isinstance(block, Figure):
        with open(block.path, "rb") as f:
          data = base64.b64encode(f.read()).decode()
        out.append(
          f"<figure><img alt='{html.escape(block.caption)}' "
          f"src='data:image/png;base64,{data}'><figcaption>"
          f"{html.escape(block.caption)}</figcaption></figure>"
        )
      elif block.startswith("```"):
        out.append(f"<pre>{html.escape(block.strip('`').strip())}</pre>")
      else:
        out.append(f"<p>{_html_inline(block)}</p>")
  out.append("</body></html>")
  return "\n".join(out)


def write_report(
  manifest: Manifest, reader: MapReader, config: ml_collections.ConfigDict, workdir: str
) -> str:
  """Writes figures/, report.md and report.html; returns the HTML path."""
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "results.json")) as f:
    records = json.load(f)
  figure_dir = os.path.join(workdir, "figures")
  shutil.rmtree(figure_dir, ignore_errors=True)  # no stale figures from an earlier config
  figure_paths = figures.all_figures(
    manifest, reader, summary, records, figure_dir, num_examples=config.study.num_example_images
  )
  figure_paths.update(check_report.figures(summary, manifest.methods, figure_dir))
  figure_paths.update(sanity_report.figures(summary, figure_dir))
  title = f"Trustworthiness of saliency maps: {config.data.name}"
  sections = build_sections(manifest, config, workdir, summary, figure_paths)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(render_markdown(title, sections, workdir))
  path = os.path.join(workdir, "report.html")
  with open(path, "w") as f:
    f.write(render_html(title, sections))
  return path
