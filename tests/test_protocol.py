"""Each protocol choice changes what it claims to (the verdict choices: test_trust_criteria)."""

import os

import numpy as np
import pytest
import saliency.core as pair
from skimage.metrics import structural_similarity

from configs import default
from configs import synthetic
from saliency_jax import attributions
from saliency_jax import models
from saliency_jax.attributions import xrai_method
from saliency_jax.data import pipeline
from saliency_jax.trust import criteria
from saliency_jax.trust import evaluation
from saliency_jax.trust import map_methods
from saliency_jax.trust import map_reader
from saliency_jax.trust import protocol
from saliency_jax.trust import states
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State


def _config(**choices):
  config = synthetic.get_config()
  for key, value in choices.items():
    config.protocol[key] = value
  return config


def test_the_cascade_stops_where_the_authors_did():
  inception = models.create("inception_v3", num_classes=2)
  steps = states.cascade_steps(inception.block_names, _config().protocol.cascade_keep)
  # randomization_plot_siim.py: x = ['Original', 'Logits', '10', ..., '1'].
  assert steps == ["original", "cascade_logits"] + [f"cascade_mixed{i}" for i in range(10, 0, -1)]
  assert states.cascade_steps(inception.block_names, 0)[-2:] == [
    "cascade_mixed0",
    "cascade_stem",
  ]


def test_the_untrained_utility_state_is_still_fully_randomized():
  vgg = models.create("small_vgg", num_classes=2)
  names = states.state_names(_config(), "A1", vgg.block_names)
  assert (SetName.UTILITY, State.UNTRAINED) in names
  assert (SetName.EVAL, "cascade_block1") not in names
  assert (SetName.EVAL, "cascade_block2") in names


def test_agreement_on_the_utility_set_adds_every_models_utility_maps():
  vgg = models.create("small_vgg", num_classes=2)
  assert (SetName.UTILITY, State.ORIGINAL) in states.state_names(_config(), "A2", vgg.block_names)
  on_eval = _config(agreement_images="eval")
  assert (SetName.UTILITY, State.ORIGINAL) not in states.state_names(on_eval, "A2", vgg.block_names)
  assert evaluation.agreement_set(_config().protocol) == SetName.UTILITY
  assert evaluation.agreement_set(on_eval.protocol) == SetName.EVAL


def test_minmax_rescales_ggcam_and_leaves_grayscale_maps():
  rng = np.random.default_rng(0)
  gray = rng.uniform(0, 1, (3, 8, 9)).astype(np.float32)
  gray[:, 0, 0], gray[:, 0, 1] = 0.0, 1.0
  np.testing.assert_allclose(map_reader.minmax(gray), gray, atol=1e-7)
  ggcam = gray * 0.4 + 0.1  # a product of two [0, 1] maps rarely spans [0, 1]
  # The authors' saliency_ttest: (m - min) / (max - min), per map.
  expected = np.stack([(m - m.min()) / (m.max() - m.min()) for m in ggcam.astype(np.float64)])
  np.testing.assert_allclose(map_reader.minmax(ggcam), expected, atol=1e-6)
  assert np.isnan(map_reader.minmax(np.full((1, 4, 4), 0.3))).all()  # their 0/0


def test_ig_baseline_is_black_in_each_models_input_space():
  assert map_methods.ig_baseline("minus_one", "imagenet", 3) == -1.0
  assert map_methods.ig_baseline("black", "inception", 3) == -1.0
  black = map_methods.ig_baseline("black", "imagenet", 3)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(black, -mean / std, rtol=1e-6)
  # It is what preprocessing makes of a black uint8 pixel.
  np.testing.assert_allclose(
    black,
    pipeline.preprocess(np.zeros((1, 1, 1), np.uint8), style="imagenet", channels=3).reshape(-1),
    rtol=1e-6,
  )
  black_config = _config(ig_baseline="black")
  # The synthetic config has one channel: the first channel's black.
  assert map_methods.method_settings(black_config, "IG", "imagenet")["baseline"] == pytest.approx(
    black[0]
  )
  assert map_methods.method_settings(_config(), "SIG", "imagenet")["baseline"] == -1.0


def test_xrai_region_scores_abs_is_pairs_grayscale_and_shifted_keeps_the_order():
  scores = np.array([[[-3.0, -3.0, 1.0, 1.0], [0.5, 0.5, 2.0, 2.0]]], np.float32)  # 4 regions
  gray_abs = np.asarray(attributions.to_grayscale(xrai_method.xrai_region_scores(scores, "abs")))
  # PAIR's VisualizeImageGrayscale of XRAI's map as [H,W,1].
  np.testing.assert_allclose(
    gray_abs[0], pair.VisualizeImageGrayscale(scores[0][..., None]), atol=1e-6
  )
  assert gray_abs[0, 0, 0] == 1.0  # the most negative region is brightest
  gray_shifted = np.asarray(
    attributions.to_grayscale(xrai_method.xrai_region_scores(scores, "shifted"))
  )
  assert gray_shifted[0, 0, 0] == 0.0 and gray_shifted[0, 1, 3] == 1.0
  assert (
    map_methods.method_settings(_config(xrai_grayscale="shifted"), "XRAI", "inception")[
      "region_scores"
    ]
    == "shifted"
  )
  with pytest.raises(ValueError, match="region_scores"):
    xrai_method.xrai_region_scores(scores, "signed")


def test_binary_localization_agreement_is_ssim_of_uint8_masks():
  rng = np.random.default_rng(1)
  a = rng.uniform(0, 1, (2, 16, 16)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1).astype(np.float32)
  ours = criteria.similarity(
    evaluation.binary_uint8(a), evaluation.binary_uint8(b), data_range=255.0
  )["ssim"]
  # The authors: SSIM of the two PNGs read back as uint8 (skimage's defaults, range 255).
  pngs = [(x >= 0.5).astype(np.uint8) * 255 for x in (a, b)]
  expected = [structural_similarity(pngs[0][i], pngs[1][i], data_range=255) for i in range(2)]
  np.testing.assert_allclose(ours, expected, atol=1e-5)
  probability = criteria.similarity(a, b, data_range=1.0)["ssim"]
  assert not np.allclose(ours, probability)


def test_the_protocol_table_marks_what_differs_from_the_paper():
  config = default.get_config()
  rows = protocol.table(config)
  assert len(rows) == len(protocol.CHOICES) and all(r[-1] == "as the paper" for r in rows)
  config.protocol.random_pairs = "per_image"
  config.study.rules = {k: v for k, v in config.study.rules.items() if k != "utility_localization"}
  rows = {r[1]: r for r in protocol.table(config)}
  assert "paired test" in rows["`protocol.random_pairs`"][-1]
  assert rows["`study.rules`"][2] == "average_mask"
  assert protocol.differs(config) == ["protocol.random_pairs", "study.rules"]


def test_the_protocol_table_names_the_methods_run_in_bfloat16():
  config = default.get_config()
  config.methods.settings = {"SG": {"samples": 5}, "IG": {"compute_dtype": "float32"}}
  assert protocol.compute_dtypes(config) == "float32"
  config.methods.settings.SG.compute_dtype = "bfloat16"
  config.methods.settings.GRAD = {"compute_dtype": "bfloat16"}
  assert protocol.compute_dtypes(config) == "bfloat16: GRAD, SG"
  row = {r[1]: r for r in protocol.table(config)}["`methods.settings.*.compute_dtype`"]
  assert row[2:4] == ["bfloat16: GRAD, SG", "float32"] and "bfloat16" in row[4]
  assert protocol.differs(config) == ["methods.settings.*.compute_dtype"]


def _stored(tmp_path, maps, dtype):
  from saliency_jax import maps as maps_lib  # pylint: disable=g-import-not-at-top

  store = maps_lib.MapStore.create_or_open(
    str(tmp_path / dtype), num_maps=len(maps), map_shape=maps.shape[1:], chunk_size=2, dtype=dtype
  )
  for i in range(store.num_chunks):
    lo, hi = store.chunk_bounds(i)
    store.write_chunk(i, maps[lo:hi])
  return store.read_all()


def test_float32_stored_maps_score_as_the_computed_maps_and_float16_would_not(tmp_path):
  # XRAI-like maps: piecewise constant with region scores that differ below float16's
  # resolution, so float16 merges regions into ties.
  rng = np.random.default_rng(3)
  n, size = 5, 32
  masks = np.zeros((n, size, size), bool)
  masks[:, 8:20, 6:18] = True
  regions = rng.integers(0, 12, (n, size // 4, size // 4)).repeat(4, 1).repeat(4, 2)
  maps = (0.9 + regions * 1e-4 + masks * 2e-5).astype(np.float32)
  computed = criteria.utility(maps, masks)
  f32 = criteria.utility(_stored(tmp_path, maps, "float32"), masks)
  for metric in computed:
    np.testing.assert_array_equal(f32[metric], computed[metric])
  f16 = criteria.utility(_stored(tmp_path, maps, "float16"), masks)
  assert not np.allclose(f16["auprc"], computed["auprc"])


def test_the_readme_table_lists_every_choice_with_the_papers_value():
  with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
    readme = f.read()
  for choice in protocol.CHOICES:
    assert f"| `{choice.field}` | {protocol._text(choice.paper)} |" in readme, choice.field


def test_a_methods_own_grads_in_flight_wins_over_the_global_value():
  config = _config()
  config.methods.max_grads_in_flight = 32
  config.methods.settings = {"SG": {"samples": 4, "max_grads_in_flight": 8}}
  assert map_methods.method_settings(config, "SG")["max_grads_in_flight"] == 8
  assert map_methods.method_settings(config, "IG")["max_grads_in_flight"] == 32
