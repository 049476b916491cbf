"""sMPRT smoothing, eMPRT entropy, random logit, input invariance, permuted labels."""

import jax
import numpy as np
import pytest
from scipy import stats

from saliency_jax import attributions
from saliency_jax import models
from saliency_jax.sanity import complexity
from saliency_jax.sanity import invariance
from saliency_jax.sanity import labels
from saliency_jax.sanity import logits
from saliency_jax.sanity import smoothing
from tests.attribution_models import tiny_model


def _images(n=3, size=(12, 10), channels=1, seed=0):
  return np.asarray(
    jax.random.uniform(jax.random.key(seed), (n,) + size + (channels,), minval=-1, maxval=1)
  )


def test_histogram_entropy_equals_scipy_and_handles_constant_and_nan():
  rng = np.random.default_rng(0)
  maps = rng.uniform(size=(3, 7, 9))
  maps[1] = 0.25  # constant: one bin, entropy 0
  maps[2, 0, 0] = np.nan
  got = complexity.histogram_entropy(maps, bins=13)
  counts, _ = np.histogram(maps[0], bins=13)
  assert got[0] == pytest.approx(stats.entropy(counts))
  assert got[1] == 0.0 and np.isnan(got[2])
  rise = complexity.relative_rise(np.array([2.0, 0.0, np.nan]), np.array([3.0, 1.0, 1.0]))
  np.testing.assert_array_equal(np.isnan(rise), [False, True, True])
  assert rise[0] == pytest.approx(0.5)


def test_other_classes_never_hit_the_target_and_cover_the_rest():
  targets = np.tile(np.arange(4), 250)
  other = logits.other_classes(targets, 4, seed=0)
  assert (other != targets).all() and other.dtype == np.int32
  for t in range(4):
    assert set(other[targets == t]) == set(range(4)) - {t}
  np.testing.assert_array_equal(logits.other_classes(np.array([0, 1, 1]), 2, seed=5), [1, 0, 0])
  with pytest.raises(ValueError, match="2 classes"):
    logits.other_classes(np.zeros(3, int), 1, seed=0)


def test_shifted_model_computes_the_original_outputs_on_the_shifted_input():
  module = models.create(
    "small_densenet", num_classes=2, stem_width=4, growth_rate=4, layers_per_block=(2, 2)
  )
  variables = models.init_variables(module, jax.random.key(1), (8, 8, 1))
  variables = jax.tree.map(
    lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape), variables
  )
  images = _images(2, (8, 8))
  original = models.model_functions(module, variables)
  shifted = invariance.shifted_model_functions(module, variables, 0.7)
  views = jax.jit(lambda f, x: (f.logits_fn(x), f.features_fn(x), f.guided_logits_fn(x)))
  want = views(original, images)
  # The correction acts: without it the outputs change.
  assert not np.allclose(views(original, images + 0.7)[0], want[0], atol=1e-3)
  for got, expected in zip(views(shifted, images + 0.7), want):
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_gradients_are_input_invariant_and_black_baseline_ig_is_not():
  module, variables, original = tiny_model(channels=1, num_classes=2, size=(8, 8))
  shifted = invariance.shifted_model_functions(module, variables, -0.6)
  images = _images(2, (8, 8))
  targets = np.array([0, 1])
  grad = attributions.METHODS["GRAD"].compute
  np.testing.assert_allclose(
    grad(shifted, images - 0.6, targets), grad(original, images, targets), atol=1e-5
  )
  # IG from the fixed black baseline is not input invariant (Kindermans et al.).
  ig = attributions.METHODS["IG"].compute
  assert (
    np.abs(
      np.asarray(ig(shifted, images - 0.6, targets, settings=dict(steps=3)))
      - np.asarray(ig(original, images, targets, settings=dict(steps=3)))
    ).max()
    > 1e-2
  )
  # A jitted method takes the shifted model as a pytree, the shift as static data.
  leaves, tree = jax.tree.flatten(shifted)
  assert jax.tree.unflatten(tree, leaves).shift == -0.6


def test_smoothed_map_is_the_mean_of_the_maps_of_noisy_copies():
  _, _, fns = tiny_model(channels=1, num_classes=3, size=(8, 8))
  images = _images(2, (8, 8))
  targets = np.array([0, 2])
  indices = np.array([7, 3])
  key = jax.random.key(4)
  method = smoothing.smoothed(attributions.METHODS["SG"])
  settings = dict(samples=2, smooth_samples=2, smooth_noise=0.2)
  got = np.asarray(
    method.compute(fns, images, targets, indices=indices, key=key, settings=settings)
  )
  stream = jax.random.fold_in(key, smoothing.SMOOTHING_STREAM)
  sg = attributions.METHODS["SG"].compute
  for i in range(2):
    std = 0.2 * (images[i].max() - images[i].min())
    maps = []
    for j in range(2):
      noise = jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(stream, indices[i]), j), images[i].shape
      )
      maps.append(
        np.asarray(
          sg(
            fns,
            (images[i] + std * noise)[None],
            targets[i : i + 1],
            indices=np.array([indices[i] * 2 + j]),
            key=key,
            settings=dict(samples=2),
          )
        )[0]
      )
    np.testing.assert_allclose(got[i], np.mean(maps, axis=0), atol=1e-5)
  # Without noise, a deterministic method's smoothed map is its map.
  plain = smoothing.smoothed(attributions.METHODS["GRAD"]).compute(
    fns, images, targets, settings=dict(smooth_samples=2, smooth_noise=0.0)
  )
  np.testing.assert_allclose(
    plain, attributions.METHODS["GRAD"].compute(fns, images, targets), atol=1e-6
  )
  with pytest.raises(ValueError, match="smooth_samples"):
    method.compute(fns, images, targets, settings=dict(smooth_samples=0))


def test_permuted_labels_keep_the_balance_and_the_images():
  source = [
    dict(image=np.full((2, 2, 1), i, np.uint8), label=np.int64(i % 3 == 0)) for i in range(30)
  ]
  view = labels.PermutedLabels(source, seed=0)
  got = np.array([int(view[i]["label"]) for i in range(30)])
  original = np.array([int(s["label"]) for s in source])
  assert sorted(got) == sorted(original) and (got != original).any()
  assert all((view[i]["image"] == source[i]["image"]).all() for i in range(30))
  assert view[4]["label"].dtype == np.int64 and len(view) == 30
  np.testing.assert_array_equal(labels.PermutedLabels(source, seed=0).labels, view.labels)
