"""The study's report: report.md and a self-contained report.html with the same content.

The content is built once as a list of sections made of paragraphs, tables and figures, then
rendered twice: Markdown (figures linked from figures/) and HTML (figures embedded as base64,
so the page opens from disk with no server).

  write_report(manifest, reader, config, workdir)

reads summary.json, results.json, progress.json and models/summary.json from the workdir, the
example maps through the `MapReader`, and prints the whole config in the provenance section.
Here: the order of the sections and their text; the blocks and their rendering are in
`report_render`, the scorecard's tables in `report_tables`, provenance and protocol in
`report_provenance`, the checks' sections in `check_report` and `sanity_report`.
"""

import json
import os
import shutil
from typing import Any

import ml_collections

from saliency_jax.trust import check_report
from saliency_jax.trust import figures
from saliency_jax.trust import sanity_report
from saliency_jax.trust.manifest import Manifest
from saliency_jax.trust.map_reader import MapReader
from saliency_jax.trust.report_provenance import protocol_section
from saliency_jax.trust.report_provenance import provenance
from saliency_jax.trust.report_render import Figure
from saliency_jax.trust.report_render import render_html
from saliency_jax.trust.report_render import render_markdown
from saliency_jax.trust.report_render import Table
from saliency_jax.trust.report_tables import details_table
from saliency_jax.trust.report_tables import randomization_table
from saliency_jax.trust.report_tables import scorecard_table
from saliency_jax.trust.report_tables import utility_table


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
        "mean, the verdict of the rule below and its corrected p-value (a mean on the "
        "passing side that FAILs was not significant with this many images).",
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
  curve_captions = {  # figure name prefix (then the architecture) -> caption
    "cascading_ssim_": (
      "cascading randomization from the logits down to the last block the protocol "
      "randomizes, mean SSIM between the trained model's map and the randomized model's map "
      "(band: std over replicates); dotted: one block randomized alone. A trustworthy method "
      "falls below the dashed random-pair line."
    ),
    "cascading_spearman_abs_": (
      "the same with the Spearman rank correlation of |map| (Adebayo et al.; Quantus' MPRT "
      "default)."
    ),
  }
  randomization = []
  for prefix, caption in curve_captions.items():
    for name, path in figure_paths.items():
      if name.startswith(prefix):
        randomization.append(Figure(path, f"{name[len(prefix) :]}: {caption}"))
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
  sections += check_report.sections(summary, figure_paths, localization=loc_label)
  sections += sanity_report.section(summary, figure_paths)
  sections.append(("Statistical details", [details_table(summary)]))
  sections.append(("Provenance", provenance(manifest, config, workdir)))
  return sections


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
