"""Control maps against scikit-image's Sobel filter and closed forms."""

import types

import ml_collections
import numpy as np
import pytest
from skimage import filters

from saliency_jax.trust import controls
from saliency_jax.trust import controls_scoring

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(3, 9, 14), (2, 5, 5), (1, 32, 17)])
def test_sobel_equals_scikit_image(shape):
  images = RNG.integers(0, 256, shape).astype(np.uint8)
  images[0, :, : shape[2] // 2] = 0  # a flat region and a sharp edge
  expected = np.stack([filters.sobel(im.astype(np.float64)) for im in images])
  np.testing.assert_allclose(controls.sobel_edges(images), expected, rtol=1e-12, atol=1e-12)
  maps = controls.sobel_maps(images[..., None])  # a channel axis is accepted
  np.testing.assert_allclose(maps, expected / expected.max(axis=(1, 2), keepdims=True), rtol=1e-6)
  assert maps.dtype == np.float32 and maps.max() == 1.0


def test_sobel_of_a_constant_image_is_all_zeros():
  maps = controls.sobel_maps(np.full((2, 6, 7), 9, np.uint8))
  assert maps.shape == (2, 6, 7) and not maps.any()


def test_sobel_of_a_step_edge_by_hand():
  # A vertical step from 0 to 4 between columns 2 and 3: Gx (convolution with [1, 0, -1]
  # across columns, [1, 2, 1] / 4 down rows) is -4 at columns 2 and 3, 0 elsewhere, and
  # Gy = 0; the magnitude is sqrt(16 / 2).
  image = np.zeros((1, 5, 6))
  image[:, :, 3:] = 4.0
  expected = np.zeros((5, 6))
  expected[:, 2:4] = np.sqrt(8.0)
  np.testing.assert_allclose(controls.sobel_edges(image)[0], expected, atol=1e-12)


@pytest.mark.parametrize("shape,sigma", [((9, 9), 0.25), ((8, 13), 0.5)])
def test_gaussian_blob_closed_form(shape, sigma):
  blob = controls.gaussian_blob(shape, sigma=sigma)
  h, w = shape
  s = sigma * min(h, w)
  for y, x in [(0, 0), (h // 2, w // 2), (h - 1, 1)]:
    r2 = (y - (h - 1) / 2) ** 2 + (x - (w - 1) / 2) ** 2
    assert blob[y, x] == pytest.approx(np.exp(-r2 / (2 * s * s)), rel=1e-6)
  assert np.array_equal(blob, blob[::-1, ::-1])  # centred
  if h % 2 and w % 2:
    assert blob[h // 2, w // 2] == 1.0
  with pytest.raises(ValueError, match="blob_sigma"):
    controls.gaussian_blob(shape, sigma=0.0)


def test_noise_depends_on_seed_salt_and_image_only():
  ids = ["a", "b", "c"]
  first = controls.noise_maps(ids, (4, 5), seed=0, salt="A1/original")
  assert first.dtype == np.float32 and first.min() >= 0 and first.max() < 1
  # The same image gives the same map in another set, in another order.
  again = controls.noise_maps(["c", "a"], (4, 5), seed=0, salt="A1/original")
  np.testing.assert_array_equal(again, first[[2, 0]])
  other_salt = controls.noise_maps(ids, (4, 5), seed=0, salt="A1/cascade_logits")
  other_seed = controls.noise_maps(ids, (4, 5), seed=1, salt="A1/original")
  assert np.mean(other_salt == first) < 0.01
  assert np.mean(other_seed == first) < 0.01
  assert np.mean(first[0] == first[1]) < 0.01


def test_control_maps_dispatch_and_errors():
  images = RNG.integers(0, 256, (3, 6, 8, 1)).astype(np.uint8)
  ids = ["x", "y", "z"]
  kwargs = dict(ids=ids, images=images, seed=0, salt="s", blob_sigma=0.25)
  average = RNG.random((6, 8)).astype(np.float32)
  for name in controls.CONTROLS:
    maps = controls.control_maps(name, average_mask=average, **kwargs)
    assert maps.shape == (3, 6, 8) and maps.dtype == np.float32
    assert 0 <= maps.min() and maps.max() <= 1
  np.testing.assert_array_equal(
    controls.control_maps(controls.AVERAGE_MASK, average_mask=average[None], **kwargs)[2], average
  )
  with pytest.raises(ValueError, match="average training mask"):
    controls.control_maps(controls.AVERAGE_MASK, average_mask=None, **kwargs)
  with pytest.raises(ValueError, match="average mask of shape"):
    controls.control_maps(controls.AVERAGE_MASK, average_mask=average[:5], **kwargs)
  with pytest.raises(ValueError, match="unknown control 'EDGES'"):
    controls.control_maps("EDGES", average_mask=None, **kwargs)
  with pytest.raises(ValueError, match="2 ids for 3 images"):
    controls.control_maps(controls.NOISE, average_mask=None, **{**kwargs, "ids": ids[:2]})


def test_every_criterion_names_its_applicable_controls():
  assert set(controls.APPLICABLE) == {
    "utility",
    "randomization",
    "repeatability",
    "reproducibility",
  }
  for criterion, names in controls.APPLICABLE.items():
    assert set(names) <= set(controls.CONTROLS)
    left_out = set(controls.CONTROLS) - set(names)
    assert bool(left_out) == (criterion in controls.NOT_APPLICABLE_WHY)


def test_control_reader_rescales_as_the_map_reader_does():
  truth = types.SimpleNamespace(
    ids=np.array(["a", "b"]), raw=RNG.integers(0, 256, (2, 9, 11, 1)).astype(np.uint8)
  )
  section = ml_collections.ConfigDict(dict(blob_sigma=0.25))
  for minmax in (False, True):
    reader = types.SimpleNamespace(
      minmax=minmax, ground_truth=lambda s: truth, read=lambda *a: None
    )
    blob = controls_scoring.ControlReader(reader, section, seed=0).read(
      "eval", "A1", "original", "control:BLOB"
    )
    expected = controls.gaussian_blob((9, 11), sigma=0.25)
    if minmax:  # (x - min) / (max - min), each map on its own
      expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(blob, np.broadcast_to(expected, (2, 9, 11)), rtol=1e-6)
    assert blob.min() == pytest.approx(0.0 if minmax else expected.min())
