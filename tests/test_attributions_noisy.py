"""SmoothGrad, IG, SmoothGrad-IG vs PAIR saliency.core; batch invariance; IG completeness."""

import inspect

from attribution_models import full_float32_precision  # noqa: F401 (autouse)
from attribution_models import pair_call_model_function
from attribution_models import random_images
from attribution_models import tiny_model
import jax
import numpy as np
import pytest
from saliency import core as pair

from saliency_jax import attributions
from saliency_jax.attributions import _execution


@pytest.fixture(scope="module")
def setup():
  _, _, fns = tiny_model(channels=3, size=(11, 8))
  images = random_images((3, 11, 8, 3), seed=5)
  targets = np.array([0, 2, 1])
  return fns, images, targets


def _pair_noise(images, samples, spread, seed):
  """The noise PAIR's GetSmoothedMask draws after np.random.seed(seed), per image."""
  out = []
  for x in images:
    np.random.seed(seed)
    std = spread * (np.max(x) - np.min(x))
    out.append([np.random.normal(0, std, x.shape) for _ in range(samples)])
  return np.asarray(out, np.float32)


@pytest.mark.parametrize("squared", [True, False])
def test_smoothgrad_equals_pair_with_same_noise(setup, squared):
  fns, images, targets = setup
  noise = _pair_noise(images, 4, 0.15, seed=7)
  ours = np.asarray(
    attributions.smoothgrad(
      fns.logits_fn, images, targets, samples=4, squared=squared, noise=noise, max_grads_in_flight=5
    )
  )
  cmf = pair_call_model_function(fns)
  for i, t in enumerate(targets):
    np.random.seed(7)
    ref = pair.GradientSaliency().GetSmoothedMask(
      images[i], cmf, {"target": int(t)}, nsamples=4, magnitude=squared
    )
    np.testing.assert_allclose(ours[i], ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("baseline", ["scalar", "per_image"])
def test_integrated_gradients_equals_pair(setup, baseline):
  fns, images, targets = setup
  if baseline == "scalar":
    ours_base, pair_bases = -1.0, [np.full(images.shape[1:], -1.0, np.float32)] * 3
  else:
    ours_base = random_images(images.shape, seed=11) * 0.5
    pair_bases = list(ours_base)
  ours = np.asarray(
    attributions.integrated_gradients(
      fns.logits_fn, images, targets, baseline=ours_base, steps=7, max_grads_in_flight=4
    )
  )
  cmf = pair_call_model_function(fns)
  for i, t in enumerate(targets):
    ref = pair.IntegratedGradients().GetMask(
      images[i], cmf, {"target": int(t)}, x_baseline=pair_bases[i], x_steps=7, batch_size=3
    )
    np.testing.assert_allclose(ours[i], ref, rtol=1e-4, atol=1e-6)


def test_smooth_integrated_gradients_equals_pair_with_same_noise(setup):
  fns, images, targets = setup
  noise = _pair_noise(images, 3, 0.15, seed=3)
  ours = np.asarray(
    attributions.smooth_integrated_gradients(
      fns.logits_fn,
      images,
      targets,
      samples=3,
      baseline=-1.0,
      steps=4,
      noise=noise,
      max_grads_in_flight=5,
    )
  )
  cmf = pair_call_model_function(fns)
  base = np.full(images.shape[1:], -1.0, np.float32)
  for i, t in enumerate(targets):
    np.random.seed(3)
    ref = pair.IntegratedGradients().GetSmoothedMask(
      images[i], cmf, {"target": int(t)}, nsamples=3, x_steps=4, x_baseline=base
    )
    np.testing.assert_allclose(ours[i], ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
  "name",
  [
    "smoothgrad",
    "integrated_gradients",
    "smooth_integrated_gradients",
    "blur_ig",
    "xrai_base_attribution",
  ],
)
def test_item_windows_add_up_to_the_whole_map(setup, name):
  """Disjoint windows of (image, sample) items, spanning images, with a traced offset and the
  last window past the end, sum to the map of all items."""
  fns, images, targets = setup
  kwargs = {
    "smoothgrad": dict(samples=5, noise=_pair_noise(images, 5, 0.15, seed=4)),
    "integrated_gradients": dict(steps=5, baseline=-1.0),
    "smooth_integrated_gradients": dict(
      samples=5, steps=3, baseline=-1.0, noise=_pair_noise(images, 5, 0.15, seed=4)
    ),
    "blur_ig": dict(steps=5, max_sigma=3.0),
    "xrai_base_attribution": dict(steps=3),
  }[name]  # 6 items: 3 steps, 2 baselines
  items = 6 if name == "xrai_base_attribution" else 5
  fn = getattr(attributions, name)
  assert "item_window" not in inspect.signature(fn).parameters  # PAIR-like: the plan's own
  full = np.asarray(fn(fns.logits_fn, images, targets, max_grads_in_flight=6, **kwargs))

  @jax.jit
  def part(offset):
    with _execution.item_window(offset, 4):
      return fn(fns.logits_fn, images, targets, max_grads_in_flight=6, **kwargs)

  parts = [np.asarray(part(offset)) for offset in range(0, 3 * items, 4)]
  np.testing.assert_allclose(sum(parts), full, rtol=1e-5, atol=1e-6)
  # The window of items 4..7 holds image 0's last items and image 1's first ones.
  assert np.abs(parts[1][0]).max() > 0 and np.abs(parts[1][2]).max() == 0


@pytest.mark.parametrize(
  "name,settings",
  [
    ("SIG", {"samples": 5, "steps": 8}),
    ("SG", {"samples": 7}),
    ("IG", {"steps": 12}),
    ("SG", {"samples": 7, "visualization": "diverging"}),
    ("IG", {"steps": 12, "grayscale_percentile": 100}),
  ],
)
def test_cpu_plan_item_windows_equal_one_program(setup, name, settings):
  """The eager CPU plan runs windows of items (SIG's noisy copies, SG's samples, IG's steps)
  as separate calls, some spanning images; the maps equal the one-program (traced) maps."""
  fns, images, targets = setup
  method = attributions.METHODS[name]
  key = jax.random.key(3)
  indices = np.array([4, 5, 6])
  eager = np.asarray(
    method.compute(fns, images, targets, indices=indices, key=key, settings=settings)
  )
  traced = np.asarray(
    jax.jit(lambda x: method.compute(fns, x, targets, indices=indices, key=key, settings=settings))(
      images
    )
  )
  np.testing.assert_allclose(eager, traced, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU plan's windows")
def test_grayscale_variants_share_one_compiled_window(setup):
  """The window sums do not read the grayscale settings: the robustness grid's variants of a
  method compile its window once, each variant adding only its own grayscale step."""
  fns, images, targets = setup
  method = attributions.METHODS["SG"]
  for variant in ({}, {"grayscale_percentile": 100}, {"visualization": "diverging"}):
    method.compute(fns, images, targets, settings={"samples": 11, **variant})
  windows = [k for k in _execution._CACHE if k[1] == "SG/window" and dict(k[2])["samples"] == 11]
  assert len(windows) == 1
  grayscale = [k for k in _execution._CACHE if k[0] == "visualize"]
  assert {dict(k[1])["visualization"] for k in grayscale} >= {"grayscale", "diverging"}


@pytest.mark.parametrize("name", ["SG", "SIG"])
def test_noisy_maps_do_not_depend_on_batching(setup, name):
  """Image i's map is the same alone, in a batch, or with another chunk size."""
  fns, images, targets = setup
  method = attributions.METHODS[name]
  key = jax.random.key(42)
  settings = {"samples": 3, **({"steps": 3} if name == "SIG" else {})}
  indices = np.array([10, 11, 12])
  full = np.asarray(
    method.compute(
      fns,
      images,
      targets,
      indices=indices,
      key=key,
      settings={**settings, "max_grads_in_flight": 64},
    )
  )
  for i in (0, 2):
    alone = np.asarray(
      method.compute(
        fns,
        images[i : i + 1],
        targets[i : i + 1],
        indices=indices[i : i + 1],
        key=key,
        settings={**settings, "max_grads_in_flight": 2},
      )
    )
    np.testing.assert_allclose(alone[0], full[i], atol=1e-5)
  # The noise really is per index: another index gives another map.
  other = np.asarray(
    method.compute(fns, images[:1], targets[:1], indices=np.array([99]), key=key, settings=settings)
  )
  assert np.abs(other[0] - full[0]).max() > 1e-3


def test_smoothgrad_noise_is_keyed_and_scaled(setup):
  """With a model whose gradient is its input, mean squared gradient = x^2 + std^2."""
  _, images, targets = setup
  linear = lambda x: np.float32(0.5) * (x**2).sum(axis=(1, 2, 3))[:, None] * np.ones((1, 3))
  maps = np.asarray(
    attributions.smoothgrad(
      linear, images, targets, key=jax.random.key(0), samples=400, spread=0.15
    )
  )
  std = 0.15 * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
  expected = images**2 + std[:, None, None, None] ** 2
  np.testing.assert_allclose(maps.mean(axis=(1, 2, 3)), expected.mean(axis=(1, 2, 3)), rtol=0.05)


def test_ig_completeness_converges_with_steps(setup):
  fns, images, targets = setup
  errors = []
  for steps in (2, 40):
    ig = attributions.integrated_gradients(
      fns.logits_fn, images, targets, baseline=-1.0, steps=steps
    )
    check = attributions.ig_completeness(fns.logits_fn, images, targets, ig, baseline=-1.0)
    errors.append(np.asarray(check.relative_error))
  assert np.all(errors[1] < errors[0])
  assert np.all(errors[1] < 0.02), errors[1]
  # Closed form: for f(x) = sum(w * x) IG is exact at any step count.
  w = random_images((1,) + images.shape[1:], seed=1)[0]
  lin = lambda x: (x * w).sum(axis=(1, 2, 3))[:, None] * np.ones((1, 3), np.float32)
  ig = attributions.integrated_gradients(lin, images, targets, baseline=-1.0, steps=2)
  np.testing.assert_allclose(np.asarray(ig), w * (images + 1.0), rtol=1e-5, atol=1e-6)
  check = attributions.ig_completeness(lin, images, targets, ig, baseline=-1.0)
  np.testing.assert_allclose(np.asarray(check.relative_error), 0.0, atol=1e-5)
