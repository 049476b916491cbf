"""Configs: every field acts, bad values are refused before the first stage, naming the field."""

import copy
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import default
from configs import paper_rsna
from configs import paper_siim
from configs import synthetic
from configs import tiny
from saliency_jax import trust
from saliency_jax.trust import config_check
from saliency_jax.trust import protocol

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _runnable_paper(module, tmp_path):
  """A paper config as a user runs it: the authors' split prepared, ImageNet weight files."""
  config = module.get_config()
  config.data.name += "/320_csv0a1b2c3d"
  for arch in config.weights.keys():
    path = tmp_path / f"{arch}_notop.h5"
    path.write_bytes(b"")
    config.weights[arch] = str(path)
  return config


CONFIGS = {
  "synthetic": lambda _: synthetic.get_config(),
  "tiny": lambda _: tiny.get_config(),
  "paper_siim": lambda t: _runnable_paper(paper_siim, t),
  "paper_rsna": lambda t: _runnable_paper(paper_rsna, t),
  "default": lambda t: _runnable_paper(default, t),
}


def _plan(config):
  config_check.validate(config)
  return trust.Study(config, config.workdir).plan()


def _leaves(node, path=()):
  """(path, value) of every leaf: ConfigDict fields, list items, dict entries."""
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    items = list(node.items())
    if not items:
      yield path, node
    for key, value in items:
      yield from _leaves(value, path + (key,))
  elif isinstance(node, list):
    for i, value in enumerate(node):
      yield from _leaves(value, path + (i,))
  else:
    yield path, node


def _perturbed(value):
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 1
  if isinstance(value, float):
    return value * 2 + 0.5
  if isinstance(value, str):
    return value + "_x" if value else "not_a_directory_x"
  if isinstance(value, tuple):
    return value[:-1] if value else ("X",)
  raise AssertionError(f"no perturbation for {value!r}")


def _with(config, path, value):
  config = copy.deepcopy(config)
  if isinstance(path[0], str) and len(path) == 1:
    config[path[0]] = value
    return config
  # Rebuild the container that holds the leaf (lists and dicts are plain Python values).
  parent = config
  for key in path[:-1]:
    parent = parent[key]
  if isinstance(parent, ml_collections.ConfigDict):
    with parent.unlocked():
      parent[path[-1]] = value
  else:
    parent[path[-1]] = value
  return config


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_field_of_every_config_changes_the_plan_or_is_refused(name, tmp_path):
  config = CONFIGS[name](tmp_path)
  base = _plan(config)
  silent = []
  for path, value in _leaves(config):
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      continue  # an empty section (e.g. no method overrides): nothing to change
    changed = _with(config, path, _perturbed(value))
    try:
      plan = _plan(changed)
    except config_check.ConfigError:
      continue
    if plan == base:
      silent.append(".".join(map(str, path)))
  assert not silent, f"{name}: fields that change nothing: {silent}"


def test_the_configs_are_overrides_of_the_default():
  base = default.get_config()
  for module in (paper_siim, paper_rsna, synthetic):
    config = module.get_config()
    assert set(config.keys()) - set(config_check.OPTIONAL_SECTIONS) == set(base.keys())
    assert set(config.protocol.keys()) == set(base.protocol.keys())
  # Synthetic-only fields are the synthetic config's alone.
  for module in (default, paper_siim, paper_rsna):
    assert not set(module.get_config().data) & set(config_check.SYNTHETIC_DATA_FIELDS)


def test_the_default_protocol_is_the_papers():
  config = default.get_config()
  assert protocol.differs(config) == []
  assert {c.field for c in protocol.CHOICES} >= {
    "protocol.randomized_target",
    "study.map_dtype",
    "study.rules",
  }


def _problems(config):
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(config)
  return dict(e.value.problems)


@pytest.mark.parametrize(
  "edit, field, words",
  [
    (
      lambda c: setattr(c.methods, "names", ("GRAD", "SMOTHGRAD")),
      "methods.names",
      "unknown method 'SMOTHGRAD'",
    ),
    (lambda c: setattr(c.study, "num_eval_images", -3), "study.num_eval_images", ">= 2"),
    (lambda c: setattr(c.study, "num_utility_images", -1), "study.num_utility_images", ">= 0"),
    (lambda c: setattr(c.data, "num_test", -1), "data.num_test", ">= 0"),
    (
      lambda c: c.models[2].update(arch="small_densnet"),
      "models[2].arch",
      "unknown architecture 'small_densnet'",
    ),
    (lambda c: setattr(c.localization, "arch", "unnet"), "localization.arch", "unnet"),
    (lambda c: setattr(c.study, "ssim_data_range", 0.0), "study.ssim_data_range", "> 0"),
    (
      lambda c: setattr(c.data, "image_size", 36),
      "localization.kwargs.depth",
      "not divisible by 8",
    ),
    (lambda c: c.study.__setattr__("num_eval_imags", 3), "study.num_eval_imags", "unknown field"),
    (
      lambda c: setattr(c.protocol, "random_pairs", "scalars"),
      "protocol.random_pairs",
      "'scalars' is not one of",
    ),
    (lambda c: setattr(c.protocol, "cascade_keep", -1), "protocol.cascade_keep", ">= 0"),
    (
      lambda c: c.study.rules.utility.__setattr__("baseline", "averge_mask"),
      "study.rules.utility.baseline",
      "not a baseline of utility",
    ),
    (lambda c: setattr(c.study, "map_dtype", "float16"), "study.map_dtype", "float32"),
    (lambda c: setattr(c.study, "utility_models", ("A9",)), "study.utility_models", "'A9'"),
    (
      lambda c: c.methods.settings.SG.__setattr__("sample", 3),
      "methods.settings.SG.sample",
      "unknown setting",
    ),
    (
      lambda c: c.methods.settings.__setattr__("IG", {"baseline": 0.0}),
      "methods.settings.IG.baseline",
      "protocol.ig_baseline",
    ),
    (
      lambda c: setattr(c.protocol, "cohort", "authors_split"),
      "protocol.cohort",
      "no authors' split",
    ),
    (
      lambda c: setattr(c.protocol, "init", "imagenet"),
      "weights.small_vgg",
      "--config.protocol.init=random",
    ),
  ],
)
def test_a_bad_field_is_named(edit, field, words):
  config = synthetic.get_config()
  with config.unlocked():
    edit(config)
  problems = _problems(config)
  assert field in problems, problems
  assert words in problems[field]


def test_paper_configs_refuse_other_cohorts_and_random_init_unless_told():
  config = paper_rsna.get_config()
  problems = _problems(config)
  assert "--config.protocol.cohort=any" in problems["protocol.cohort"]
  assert "No Lung Opacity" in problems["protocol.cohort"]
  assert "--config.protocol.init=random" in problems["weights.inception_v3"]
  config.protocol.cohort, config.protocol.init = "any", "random"
  config_check.validate(config)  # told otherwise: runs
  config.weights.inception_v3 = "/no/such/file.h5"
  assert "set, but protocol.init = 'random'" in _problems(config)["weights.inception_v3"]


def test_synthetic_fields_are_refused_for_a_real_dataset(tmp_path):
  config = _runnable_paper(paper_siim, tmp_path)
  config.data.num_train = 5
  assert "only the synthetic dataset" in _problems(config)["data.num_train"]
  # Left unchanged in configs/synthetic.py pointed at another dataset (a command line cannot
  # delete them): accepted, they are what that config says.
  config = synthetic.get_config()
  config.data.name = "image_mask_folder/32"
  config_check.validate(config)
  config.data.difficulty = 2.0
  assert "only the synthetic dataset" in _problems(config)["data.difficulty"]


def test_settings_of_an_unknown_method_are_refused_and_of_a_method_left_out_kept():
  config = synthetic.get_config()
  config.methods.names = ("GRAD",)
  config.sanity.smooth_mprt.methods = ("GRAD",)
  config_check.validate(config)  # SG, SIG and XRAI settings wait for runs that include them
  config.methods.settings.SMOTHGRAD = dict(samples=3)
  assert "unknown method" in _problems(config)["methods.settings.SMOTHGRAD"]


def test_a_study_refuses_a_bad_config_before_any_stage(tmp_path):
  config = tiny.get_config()
  config.study.ssim_data_range = 0.0
  with pytest.raises(config_check.ConfigError, match="study.ssim_data_range"):
    trust.Study(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_run_all_stops_in_seconds_naming_the_field(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.run_all",
      "--config=configs/tiny.py",
      f"--workdir={tmp_path / 'run'}",
      "--config.study.ssim_data_range=0",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
    cwd=ROOT,
  )
  assert out.returncode != 0
  assert "study.ssim_data_range: must be > 0" in out.stderr
  assert "[data]" not in out.stdout and not os.path.exists(tmp_path / "run")
