"""The whole study on the tiny config: every stage, every method, the report's contents."""

import json
import os
import subprocess
import sys

import pytest

from configs import tiny
from saliency_jax import trust
from saliency_jax.trust import map_reader

METHODS = ("GRAD", "SG", "IG", "SIG", "GCAM", "XRAI", "GBP", "GGCAM")
CRITERIA = ("utility", "randomization", "repeatability", "reproducibility")
RULES = ("utility", "utility_localization", "randomization", "repeatability", "reproducibility")
SANITY = (
  "data_randomization",
  "smooth_mprt",
  "efficient_mprt",
  "random_logit",
  "input_invariance",
  "faithfulness",
)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny_study"))
  study = trust.Study(tiny.get_config(), workdir)
  report = study.run()
  return study, workdir, report


def test_every_stage_is_recorded(finished_study):
  _, workdir, report = finished_study
  assert os.path.exists(report)
  with open(os.path.join(workdir, "progress.json")) as f:
    progress = json.load(f)
  assert list(progress) == list(trust.STAGES)
  assert all(entry["done"] for entry in progress.values())


def test_scorecard_covers_every_method_and_criterion(finished_study):
  _, workdir, _ = finished_study
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  cells = {(r["method"], r["criterion"]) for r in summary["scorecard"]}
  smoothed = tiny.get_config().sanity.smooth_mprt.methods
  randomization = ("randomization small_vgg", "randomization small_densenet")
  cells = {
    (m, c if c != "randomization" else f"{c} {r['architecture']}")
    for r in summary["scorecard"]
    for m, c in [(r["method"], r["criterion"])]
    if r.get("architecture") is not None or c != "randomization"
  }
  assert cells == (
    {
      (m, c)
      for m in METHODS
      for c in [x for x in RULES if x != "randomization"] + list(randomization) + list(SANITY)
      if c != "smooth_mprt"
    }
    | {(m, "smooth_mprt") for m in smoothed}
  )
  for row in summary["scorecard"]:
    assert row["verdict"] in ("PASS", "FAIL", "N/A")
    if row["criterion"] == "input_invariance":  # a property of every map, not a test
      assert row["test"] == "every image" and row["p_value"] is None
    elif row["verdict"] != "N/A":
      assert row["test"].startswith("Wilcoxon") and row["p_adjusted"] is not None


def test_report_shows_every_method_criterion_and_figure(finished_study):
  _, workdir, _ = finished_study
  with open(os.path.join(workdir, "report.md")) as f:
    md = f.read()
  with open(os.path.join(workdir, "report.html")) as f:
    page = f.read()
  for text in (
    METHODS
    + CRITERIA
    + SANITY
    + (
      "SSIM data_range",
      "Provenance",
      "average mask",
      "Sanity checks beyond the paper",
      "ROAD LeRF",
    )
  ):
    assert text in md and text in page
  for name in (
    "cascading_ssim_small_vgg.png",
    "cascading_ssim_small_densenet.png",
    "utility_auprc.png",
    "examples.png",
    "repeatability_reproducibility.png",
    "sanity_faithfulness_curves.png",
  ) + tuple(f"sanity_{c}.png" for c in SANITY):
    assert os.path.getsize(os.path.join(workdir, "figures", name)) > 10_000
    assert f"figures/{name}" in md
  # Self-contained: figures embedded, no links to files.
  assert page.count("data:image/png;base64,") >= 4 and "figures/" not in page


def test_results_are_tidy_records(finished_study):
  _, workdir, _ = finished_study
  with open(os.path.join(workdir, "results.json")) as f:
    records = json.load(f)
  keys = {"criterion", "metric", "method", "model", "state", "image_id", "value"}
  assert records and all(set(r) == keys for r in records)
  criteria = {r["criterion"] for r in records}
  assert {
    "utility",
    "cascading_randomization",
    "independent_randomization",
    "random_pairs",
    "repeatability",
    "reproducibility",
    "localization_agreement",
    "smooth_random_pairs",
    "faithfulness_curve",
  } | set(SANITY) <= criteria


def test_sanity_checks_leave_their_traces(finished_study):
  _, workdir, _ = finished_study
  # The permuted-label model was trained like the others, and resumes from its checkpoints.
  assert os.path.exists(os.path.join(workdir, "models", "A1_permuted_labels", "checkpoints"))
  with open(os.path.join(workdir, "models", "summary.json")) as f:
    assert "val_auc_permuted_labels" in json.load(f)["A1_permuted_labels"]
  for state in ("data_randomized", "smoothed_original", "smoothed_untrained", "other_class"):
    assert os.path.exists(map_reader.store_path(workdir, "eval", "A1", state, "GRAD"))
  assert os.path.exists(map_reader.store_path(workdir, "eval", "B1", "input_shifted", "GRAD"))
  with open(os.path.join(workdir, "results.json")) as f:
    records = json.load(f)
  # GRAD is input invariant: the shifted input through the adjusted model gives its map.
  shifted = [
    r["value"]
    for r in records
    if r["criterion"] == "input_invariance"
    and r["method"] == "GRAD"
    and r["metric"] == "max_abs_diff"
  ]
  assert shifted and max(v for v in shifted if v is not None) < 1e-3
  faithful = {r["metric"] for r in records if r["criterion"] == "faithfulness"}
  assert faithful == {"deletion_auc", "insertion_auc", "road_morf", "road_lerf", "sic", "aic"}


def test_the_checks_beyond_the_paper_run_in_the_study(finished_study):
  _, workdir, _ = finished_study
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "results.json")) as f:
    records = json.load(f)
  methods = {r["method"] for r in records}
  assert {f"control:{c}" for c in ("NOISE", "SOBEL", "BLOB", "AVERAGE_MASK")} <= methods
  assert {r["metric"] for r in records if r["criterion"] == "chexlocalize"} == {
    "iou_otsu",
    "iou_tuned",
    "hit",
  }
  assert set(summary["controls"]["flags"]) == set(METHODS)
  assert {r["method"] for r in summary["chexlocalize"]["rows"]} >= set(METHODS) | {"UNET"}
  grid = summary["robustness"]
  # tiny: 2 grayscales x (SSIM at 2 ranges + 4 other similarities), plus the run itself.
  assert len(grid["choices"]) == 1 + 2 * 6
  # The paper's rules: randomization once per architecture.
  verdicts = [r for r in RULES if r != "randomization"] + [
    "randomization small_vgg",
    "randomization small_densenet",
  ]
  assert {(r["method"], r["criterion"]) for r in grid["summary"]} == {
    (m, c) for m in METHODS for c in verdicts
  }
  assert all(r["status"] in ("holds", "flips", "N/A") for r in grid["summary"])
  for name in ("controls.png", "chexlocalize.png", "robustness.png"):
    assert os.path.getsize(os.path.join(workdir, "figures", name)) > 10_000
  assert os.path.exists(os.path.join(workdir, "robustness.csv"))
  stores = os.listdir(os.path.join(workdir, "maps", "eval", "A1", "original"))
  assert "GRAD@diverging" in stores and "GRAD@no_clip" not in stores
  assert os.path.isdir(os.path.join(workdir, "maps", "validation", "A1", "original", "GRAD"))


def test_rerun_skips_every_stage(finished_study):
  _, workdir, _ = finished_study
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-m", "launch.run_all", "--config=configs/tiny.py", f"--workdir={workdir}"],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    cwd=os.path.join(os.path.dirname(__file__), ".."),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  for stage in trust.STAGES:
    assert f"[{stage}] done already: skipped" in out.stdout
  assert "Report:" in out.stdout


def _browser():
  import shutil  # pylint: disable=g-import-not-at-top

  for name in ("chromium", "chromium-browser", "google-chrome"):
    path = shutil.which(name)
    if path:
      return path
  return None


def test_report_renders_in_a_headless_browser(finished_study, tmp_path):
  browser = _browser()
  if browser is None:
    pytest.skip(
      "no headless browser: install Debian's chromium (apt-get install chromium) "
      "to check that report.html renders"
    )
  _, workdir, report = finished_study
  with open(report) as f:
    page = f.read()
  # Count, in the browser, the embedded figures that decoded to real pixels.
  probe = (
    "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
    " document.title = 'decoded:' + imgs.filter(i => i.complete && i.naturalWidth > 100)"
    ".length + '/' + imgs.length; });</script>"
  )
  probed = tmp_path / "probe.html"
  probed.write_text(page.replace("</body>", probe + "</body>"))
  flags = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--user-data-dir={tmp_path / 'profile'}",
    "--virtual-time-budget=5000",
  ]
  dom = subprocess.run(
    [browser, *flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120
  )
  assert dom.returncode == 0, dom.stderr[-2000:]
  count = page.count("data:image/png;base64,")
  assert f"<title>decoded:{count}/{count}</title>" in dom.stdout
  shot = tmp_path / "report.png"
  subprocess.run(
    [browser, *flags, f"--screenshot={shot}", "--window-size=1200,2000", f"file://{report}"],
    capture_output=True,
    timeout=120,
    check=True,
  )
  import matplotlib.image  # pylint: disable=g-import-not-at-top

  pixels = matplotlib.image.imread(shot)
  assert pixels.shape[0] >= 1000 and pixels.std() > 0.05  # a rendered page, not a blank one
