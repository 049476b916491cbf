"""Blur IG, Guided IG and occlusion vs PAIR saliency.core, and the extra registry entries."""

import importlib
import types

from attribution_models import full_float32_precision  # noqa: F401 (autouse)
from attribution_models import pair_call_model_function
from attribution_models import random_images
from attribution_models import tiny_model
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from saliency import core as pair
from saliency.core import guided_ig as pair_guided_ig

from saliency_jax import attributions

# The module (the package exports its function under the same name).
guided_ig_lib = importlib.import_module("saliency_jax.attributions.guided_ig")


@pytest.fixture(scope="module")
def setup():
  _, _, fns = tiny_model(channels=2, size=(13, 9))
  images = random_images((2, 13, 9, 2), seed=8)
  targets = np.array([2, 0])
  return fns, images, targets


def _scale(ref):
  return np.abs(ref).max()


@pytest.mark.parametrize("sqrt,batch", [(False, 4), (True, 1)])
def test_blur_ig_equals_pair_where_pair_is_right(setup, sqrt, batch):
  fns, images, targets = setup
  ours = np.asarray(
    attributions.blur_ig(
      fns.logits_fn, images, targets, max_sigma=6.0, steps=12, sqrt=sqrt, max_grads_in_flight=7
    )
  )
  cmf = pair_call_model_function(fns)
  for i, t in enumerate(targets):
    ref = pair.BlurIG().GetMask(
      images[i], cmf, {"target": int(t)}, max_sigma=6.0, steps=12, sqrt=sqrt, batch_size=batch
    )
    # PAIR differences two float32 blurs 0.01 apart in sigma: its own rounding is ~1e-4.
    np.testing.assert_allclose(ours[i], ref, atol=2e-3 * _scale(ref))


def test_blur_ig_fixes_pair_batched_sqrt_spacing(setup):
  """With sqrt=True and batches, PAIR weights all steps of a batch by the last spacing."""
  fns, images, targets = setup
  ours = np.asarray(
    attributions.blur_ig(fns.logits_fn, images[:1], targets[:1], max_sigma=6.0, steps=12, sqrt=True)
  )
  cmf = pair_call_model_function(fns)
  args = {"target": int(targets[0])}
  right = pair.BlurIG().GetMask(
    images[0], cmf, args, max_sigma=6.0, steps=12, sqrt=True, batch_size=1
  )
  wrong = pair.BlurIG().GetMask(
    images[0], cmf, args, max_sigma=6.0, steps=12, sqrt=True, batch_size=6
  )
  assert np.abs(right - wrong).max() > 0.05 * _scale(right)
  np.testing.assert_allclose(ours[0], right, atol=2e-3 * _scale(right))


@pytest.fixture
def pair_quantile_shim(monkeypatch):
  """PAIR 0.2.1 calls np.quantile(interpolation=...), removed in NumPy 2.4: map it to method=."""

  def quantile(a, q, interpolation="linear", **kwargs):
    return np.quantile(a, q, method=interpolation, **kwargs)

  shim = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
  shim.quantile = quantile
  monkeypatch.setattr(pair_guided_ig, "np", shim)


@pytest.mark.parametrize(
  "max_dist,fraction,traced",
  [
    (0.02, 0.25, True),
    (0.1, 0.5, True),
    (1.0, 0.25, True),
    (0.02, 0.25, False),
    (1.0, 0.25, False),
  ],
)
def test_guided_ig_equals_pair(setup, pair_quantile_shim, max_dist, fraction, traced):
  """Both plans: traced (float32 lax.scan) and eager on the CPU (float64 NumPy path)."""
  fns, images, targets = setup
  run = lambda x: attributions.guided_ig(
    fns.logits_fn, x, targets, baseline=-1.0, steps=15, fraction=fraction, max_dist=max_dist
  )
  ours = np.asarray(jax.jit(run)(images) if traced else run(images))
  cmf = pair_call_model_function(fns)
  for i, t in enumerate(targets):
    ref = pair.GuidedIG().GetMask(
      images[i],
      cmf,
      {"target": int(t)},
      x_baseline=np.full(images.shape[1:], -1.0),
      x_steps=15,
      fraction=fraction,
      max_dist=max_dist,
    )
    np.testing.assert_allclose(ours[i], ref, atol=1e-4 * _scale(ref))


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.999, 1.0])
def test_guided_ig_lower_quantile_equals_numpy(q):
  """The traced path's bisection quantile: zeros, ties, inf (pixels at x_max), an odd size and
  a constant row give NumPy's quantile(method="lower") exactly."""
  rng = np.random.default_rng(0)
  v = np.abs(rng.normal(size=1001)).astype(np.float32)
  v[:40] = 0.0
  v[40:300] = np.inf
  v[300:500] = v[500:700]
  rows = [v, np.full(7, 3.5, np.float32), np.array([np.inf, 0.0, 1e-30], np.float32)]
  for row in rows:
    ours = guided_ig_lib._lower_quantile(jnp.asarray(row), q)
    assert ours == np.quantile(row, q, method="lower"), (q, row[:5])


def test_guided_ig_host_plan_chunks_do_not_change_maps(setup):
  """Eager on the CPU, images go in pipelined chunks of max_grads_in_flight: same maps."""
  fns, images, targets = setup
  run = lambda cap: np.asarray(
    attributions.guided_ig(
      fns.logits_fn, images, targets, baseline=-1.0, steps=6, max_grads_in_flight=cap
    )
  )
  np.testing.assert_array_equal(run(2), run(64))


def test_guided_ig_zero_when_input_is_baseline(setup):
  fns, images, targets = setup
  out = attributions.guided_ig(fns.logits_fn, images, targets, baseline=images, steps=3)
  np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.parametrize("size,value", [(4, 0.0), (3, -1.0), (20, 0.0)])
def test_occlusion_equals_pair(setup, size, value):
  fns, images, targets = setup
  ours = np.asarray(
    attributions.occlusion(
      fns.logits_fn, images, targets, size=size, value=value, max_grads_in_flight=16
    )
  )
  cmf = pair_call_model_function(fns)
  for i, t in enumerate(targets):
    ref = pair.Occlusion().GetMask(images[i], cmf, {"target": int(t)}, size=size, value=value)
    np.testing.assert_allclose(ours[i], ref, rtol=1e-4, atol=1e-5 * max(_scale(ref), 1.0))


@pytest.mark.parametrize(
  "name,settings",
  [
    ("BLUR_IG", {"steps": 4, "max_sigma": 3.0}),
    ("GUIDED_IG", {"steps": 4}),
    ("OCCLUSION", {"size": 5}),
  ],
)
def test_extra_registry_entries(setup, name, settings):
  fns, images, targets = setup
  maps = np.asarray(attributions.METHODS[name].compute(fns, images, targets, settings=settings))
  assert maps.shape == images.shape[:3] and maps.dtype == np.float32
  assert np.nanmin(maps) >= 0 and np.nanmax(maps) <= 1
