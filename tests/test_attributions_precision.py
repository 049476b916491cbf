"""compute_dtype="bfloat16": how far it moves every metric of the study from float32 maps.

The same images, targets, noise keys and two models (a trained state and another one, standing
for a randomized state or a second replicate), once in float32 and once in bfloat16. The bounds
below are stated in docs/benchmarks.md; they were measured on this problem (largest changes:
per-image AUPRC 0.011, IoU 0.009, SSIM 0.018, Spearman 0.012; means at most 0.001; one of 16
pointing-game hits flipped).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import attributions
from saliency_jax.attributions import custom
from saliency_jax.attributions.grayscale import visualize
from saliency_jax.maps import demo
from saliency_jax.trust import criteria

# Bounds on |bfloat16 - float32| of the continuous metrics, per image and of the mean over
# images, and on the fraction of images whose pointing-game hit flips.
PER_IMAGE = {"auprc": 0.03, "iou_otsu": 0.03, "ssim": 0.03, "spearman_abs": 0.03}
MEAN = 0.005
POINTING_FLIPS = 1 / 8

_SETTINGS = {"SG": {"samples": 4}, "IG": {"steps": 5}, "SIG": {"samples": 2, "steps": 3}}
_METHODS = ("GRAD", "SG", "IG", "SIG", "GCAM", "GBP", "GGCAM")


@pytest.fixture(scope="module")
def problem():
  fns, images, targets, indices, _ = demo.tiny_problem(
    seed=7, num_images=16, height=32, width=32, channels=3
  )
  other = demo.tiny_problem(seed=8, num_images=16, height=32, width=32, channels=3)[0]
  rng = np.random.default_rng(0)
  masks = np.zeros(images.shape[:3], bool)
  for mask in masks:
    y, x = rng.integers(0, 20, 2)
    mask[y : y + rng.integers(4, 12), x : x + rng.integers(4, 12)] = True
  return fns, other, images, targets, indices, masks


def _maps(name, fns, problem, dtype):
  _, _, images, targets, indices, _ = problem
  settings = {**_SETTINGS.get(name, {}), "compute_dtype": dtype}
  return np.asarray(
    attributions.METHODS[name].compute(fns, images, targets, indices=indices, settings=settings)
  )


@pytest.mark.parametrize("name", _METHODS)
def test_bfloat16_moves_every_metric_within_the_stated_bounds(problem, name):
  fns, other, *_, masks = problem
  maps = {
    dtype: (_maps(name, fns, problem, dtype), _maps(name, other, problem, dtype))
    for dtype in ("float32", "bfloat16")
  }
  assert not np.array_equal(
    maps["float32"][0], maps["bfloat16"][0]
  )  # the setting changes the computation
  values = {}
  for dtype, (a, b) in maps.items():
    values[dtype] = {
      **criteria.utility(a, masks),  # utility
      **criteria.similarity(a, b, data_range=1.0),  # randomization, repeatability
    }
  for metric, v32 in values["float32"].items():
    v16 = values["bfloat16"][metric]
    np.testing.assert_array_equal(np.isnan(v32), np.isnan(v16))
    if metric == "pointing_game":  # a hit (0 or 1) flips when the top pixel moves
      assert np.mean(v32 != v16) <= POINTING_FLIPS
    else:
      assert np.nanmax(np.abs(v32 - v16)) <= PER_IMAGE[metric], metric
      assert abs(np.nanmean(v32) - np.nanmean(v16)) <= MEAN, metric


def test_bfloat16_gradient_is_the_gradient_of_the_bfloat16_model(problem):
  fns, _, images, targets, *_ = problem
  variables = jax.tree.map(lambda v: v.astype(jnp.bfloat16), fns.variables)

  def total(x):  # the batch's target logits, the model and its input in bfloat16
    logits = fns.module.apply(variables, x.astype(jnp.bfloat16)).astype(jnp.float32)
    return logits[jnp.arange(len(targets)), targets].sum()

  grads = jax.jit(jax.grad(total))(jnp.asarray(images))  # XLA rounds fused ops once
  expected = visualize(grads, attributions.METHODS["GRAD"].default_settings)
  np.testing.assert_allclose(_maps("GRAD", fns, problem, "bfloat16"), expected, atol=1e-6)


def test_unsafe_or_unsupported_compute_dtypes_are_refused(problem):
  fns, _, images, targets, *_ = problem
  with pytest.raises(ValueError, match="SG: setting compute_dtype='float16' is refused: float16"):
    attributions.METHODS["SG"].compute(fns, images, targets, settings={"compute_dtype": "float16"})
  with pytest.raises(ValueError, match="compute_dtype='int8' is refused: must be one of"):
    attributions.METHODS["GRAD"].compute(fns, images, targets, settings={"compute_dtype": "int8"})
  with pytest.raises(ValueError, match="GUIDED_IG: .*'bfloat16' is refused: .*float32 only"):
    attributions.METHODS["GUIDED_IG"].compute(
      fns, images, targets, settings={"compute_dtype": "bfloat16"}
    )
  custom.register("TEST_PRECISION_ABS", lambda f, x, t, **kw: jnp.abs(x))
  try:
    with pytest.raises(ValueError, match="TEST_PRECISION_ABS: .*float32 only"):
      attributions.METHODS["TEST_PRECISION_ABS"].compute(
        fns, images, targets, settings={"compute_dtype": "bfloat16"}
      )
  finally:
    del attributions.METHODS["TEST_PRECISION_ABS"], custom.NEEDS["TEST_PRECISION_ABS"]
