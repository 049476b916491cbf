"""Your own model and images: a Flax model defined here (not in the package), saved with orbax,
PNG images and masks in a folder; the whole study through the config (model by import path,
dataset from the folder builder) and through the Python API gives the same records. Also: a
prediction-only model, and the README's example run as written."""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from saliency_jax import api
from saliency_jax import data as data_lib
from saliency_jax.data import prepare_real

SIZE = 16
BLOCKS = ("head", "conv2", "conv1")


class PlainNet(nn.Module):
  """A classifier of the kind a researcher brings: no features/head split, no block_names."""

  width: int = 4
  activation: object = nn.relu

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = self.activation(nn.Conv(self.width, (3, 3), name="conv1")(x))
    x = self.activation(nn.Conv(self.width, (3, 3), strides=(2, 2), name="conv2")(x))
    return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


def _variables(seed):
  variables = PlainNet().init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 1)))
  return jax.tree.map(lambda p: np.asarray(p + 0.05), variables)


def _config(tmp_path):
  config = api.default_config()
  config.methods.names = ("GRAD", "SG", "GCAM", "GBP")
  config.methods.settings.SG.samples = 2
  config.study.num_eval_images = 5
  config.study.random_pairs = 3
  config.study.bootstrap_resamples = 50
  config.study.chunk_size = 4
  config.study.num_example_images = 2
  config.study.utility_models = ("M1",)
  config.study.independent_randomization = ("M1",)
  config.localization.seeds = ()  # no U-Net baselines: the API cannot train them either
  # Checks beyond the criteria: CheXlocalize needs a validation split, the SOBEL control reads
  # the stored images (the API only has the model inputs); both cost time here.
  for check in ("controls", "chexlocalize", "robustness"):
    config.study[check].enabled = False
  return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """PNG images and masks, labels.csv with splits; two orbax checkpoints."""
  root = tmp_path_factory.mktemp("mine")
  (root / "images").mkdir()
  (root / "masks").mkdir()
  rng = np.random.default_rng(0)
  rows = ["id,label,split"]
  for i in range(13):
    image_id, split = f"img{i:02d}", "train" if i < 4 else "test"
    label = int(i not in (3, 12))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if label:
      r, c = rng.integers(0, SIZE - 6, 2)
      mask[r : r + 6, c : c + 5] = 255
    image = np.clip(rng.normal(90, 30, (SIZE, SIZE)) + (mask > 0) * 80, 0, 255)
    Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"{image_id}.png")
    Image.fromarray(mask).save(root / "masks" / f"{image_id}.png")
    rows.append(f"{image_id},{label},{split}")
  (root / "labels.csv").write_text("\n".join(rows) + "\n")
  for name, seed in (("ckpt1", 1), ("ckpt2", 2)):
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(str(root / name), _variables(seed))
  return root


def _key(r):
  return (r["criterion"], r["metric"], r["method"], r["model"], r["state"], r["image_id"])


def test_config_by_import_path_and_api_give_the_same_records(folder, tmp_path):
  data_dir = str(tmp_path / "tfds")
  name, _ = prepare_real.prepare(
    "image_mask_folder", manual_dir=str(folder), data_dir=data_dir, image_size=SIZE
  )
  config = _config(tmp_path)
  config.data.name, config.data.data_dir, config.data.channels = name, data_dir, 1
  spec = dict(
    module="test_api:PlainNet", kwargs=dict(width=4), gradcam_layer="conv2", blocks=BLOCKS
  )
  config.models = [
    dict(spec, name="M1", weights=str(folder / "ckpt1")),
    dict(spec, name="M2", weights=str(folder / "ckpt2")),
  ]
  by_config = api.evaluate(config=config, workdir=str(tmp_path / "by_config"))

  # The same images through the API: read from the PNGs in the test split's order.
  test = tfds.data_source(name, data_dir=data_dir)["test"]
  ids = [
    str(test[i]["id"], "utf8") if isinstance(test[i]["id"], bytes) else str(test[i]["id"])
    for i in range(len(test))
  ]
  read = lambda kind, i: np.asarray(Image.open(folder / kind / f"{i}.png"))
  raw = np.stack([read("images", i) for i in ids])[..., None]
  labels = dict(
    line.split(",")[:2] for line in (folder / "labels.csv").read_text().splitlines()[1:]
  )
  train_masks = np.stack(
    [read("masks", f"img{i:02d}") > 0 for i in range(4) if labels[f"img{i:02d}"] == "1"]
  )
  restore = lambda p: ocp.StandardCheckpointer().restore(str(p))
  by_api = api.evaluate(
    models=[
      api.FlaxModel(
        m, PlainNet(width=4), restore(folder / ckpt), gradcam_layer="conv2", blocks=BLOCKS
      )
      for m, ckpt in (("M1", "ckpt1"), ("M2", "ckpt2"))
    ],
    images=np.asarray(data_lib.preprocess(raw, style=config.data.style, channels=1)),
    masks=np.stack([read("masks", i) > 0 for i in ids]),
    labels=np.array([int(labels[i]) for i in ids]),
    ids=ids,
    train_masks=train_masks,
    config=_config(tmp_path),
    workdir=str(tmp_path / "by_api"),
  )

  assert len(by_config.records) > 500
  config_values = {_key(r): r["value"] for r in by_config.records}
  api_values = {_key(r): r["value"] for r in by_api.records}
  assert config_values.keys() == api_values.keys()
  keys = sorted(config_values)
  a = np.array([np.nan if config_values[k] is None else config_values[k] for k in keys])
  b = np.array([np.nan if api_values[k] is None else api_values[k] for k in keys])
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert np.isfinite(a).mean() > 0.9
  criteria = {k[0] for k in keys}
  assert {
    "utility",
    "cascading_randomization",
    "independent_randomization",
    "random_pairs",
    "repeatability",
  } <= criteria
  assert {k[2] for k in keys} >= {"GRAD", "SG", "GCAM", "GBP", "AVERAGE_MASK"}
  assert os.path.exists(by_config.report) and os.path.exists(by_api.report)
  # Neither route has a localization network (config.localization.seeds is empty): said.
  assert [s["what"] for s in by_api.skipped] == ["localization-network baseline"]


def test_prediction_only_model_gets_what_needs_no_internals(tmp_path):
  module, variables = PlainNet(), _variables(0)
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, (6, SIZE, SIZE, 1)).astype(np.float32)
  boxes = [np.array([[2, 3, 9, 12]]) for _ in range(6)]
  config = _config(tmp_path)
  config.methods.names = ("GRAD", "GCAM")
  result = api.evaluate(
    models=[api.FunctionModel("P1", lambda x: module.apply(variables, x))],
    images=images,
    boxes=boxes,
    config=config,
    workdir=str(tmp_path / "run"),
  )
  got = {(r["criterion"], r["method"]) for r in result.records}
  assert ("utility", "GRAD") in got and ("random_pairs", "GRAD") in got
  assert not any(m == "GCAM" for _, m in got)
  assert not any(c.endswith("randomization") and m == "GRAD" for c, m in got if c != "random_pairs")
  skipped = {(s["model"], s["what"]) for s in result.skipped}
  assert {("P1", "GCAM"), ("P1", "cascading randomization")} <= skipped
  with open(os.path.join(result.workdir, "report.md")) as f:
    report = f.read()
  assert "## Not evaluated" in report and "no named blocks" in report
  # The boxes became the masks the maps were scored against (pixel centres: rows 2-8, cols 3-11).
  utility = [r for r in result.records if r["criterion"] == "utility" and r["method"] == "GRAD"]
  assert len(utility) == 6 * 3


def test_readme_example_runs(tmp_path, monkeypatch):
  with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
    readme = f.read()
  section = readme[readme.index("## Evaluate your own model") :]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert len(code.strip().splitlines()) <= 25
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  result = namespace["result"]
  assert os.path.exists(result.report)
  assert {r["method"] for r in result.records} >= {"GRAD", "IG", "GCAM"}
