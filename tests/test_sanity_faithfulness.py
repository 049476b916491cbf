"""Deletion / insertion / ROAD against their formulas; PIC against PAIR's compute_pic_metric."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as sk_metrics

from saliency_jax.sanity import faithfulness as F


def test_pixel_ranks_break_ties_in_raster_order_and_put_nan_last():
  maps = np.array([[[0.5, 0.9], [0.5, np.nan]], [[0.0, 0.0], [0.0, 0.0]]])
  np.testing.assert_array_equal(F.pixel_ranks(maps), [[[1, 0], [2, 3]], [[0, 1], [2, 3]]])


def _pixel_model(row, col):
  """A 'model' whose class-1 output is the image's value at one pixel (class 0: minus it)."""

  def probs(x):
    value = np.asarray(x)[:, row, col, 0]
    return np.stack([-value, value], axis=1)

  return probs


ONES = np.ones(3, int)


@pytest.mark.parametrize("insertion", [False, True])
def test_curves_of_a_one_pixel_model_are_closed_form(insertion):
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (3, 5, 7, 1)).astype(np.float32)
  maps = rng.uniform(0, 1, (3, 5, 7))
  maps[:, 2, 3] = 2.0  # the model's pixel is ranked first
  steps = 7
  curves = F.perturbation_curves(
    images,
    maps,
    ONES,
    _pixel_model(2, 3),
    steps=steps,
    baseline="mean",
    blur_sigma=1.0,
    insertion=insertion,
  )
  mean = images.mean(axis=(1, 2, 3))
  value = images[:, 2, 3, 0]
  # A step's count is round(k / 7 * 35) >= 1 from k = 1: the pixel is removed (inserted) there.
  first, rest = (mean, value) if insertion else (value, mean)
  expected = np.concatenate([first[:, None], np.repeat(rest[:, None], steps, 1)], 1)
  np.testing.assert_allclose(curves, expected, rtol=1e-6)
  area = F.curve_area(curves, steps)
  np.testing.assert_allclose(
    area, (first + rest) / 2 / steps + rest * (steps - 1) / steps, rtol=1e-6
  )
  for i in range(3):
    assert area[i] == pytest.approx(sk_metrics.auc(F.fractions(steps), curves[i]))


def test_deletion_matches_a_pixel_loop_with_the_blur_baseline():
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, (2, 6, 5, 2)).astype(np.float32)
  maps = np.round(rng.uniform(0, 1, (2, 6, 5)), 1)  # ties
  weights = rng.normal(size=(6, 5, 2))

  def predict(x):
    return np.tensordot(np.asarray(x, np.float64), weights, axes=3)

  def probs(x):
    return np.stack([predict(x), -predict(x)], axis=1)

  curves = F.perturbation_curves(
    images, maps, np.array([0, 1]), probs, steps=4, baseline="blur", blur_sigma=1.5, insertion=False
  )
  blurred = np.stack([ndimage.gaussian_filter(im, (1.5, 1.5, 0), mode="nearest") for im in images])
  for i in range(2):
    order = sorted(range(30), key=lambda p: (-maps[i].ravel()[p], p))
    for k in range(5):
      image = images[i].copy()
      for p in order[: int(round(k / 4 * 30))]:
        image[p // 5, p % 5] = blurred[i, p // 5, p % 5]
      sign = 1 if i == 0 else -1  # image 1 explains class 1, whose output is -predict
      assert curves[i, k] == pytest.approx(sign * predict(image[None])[0], rel=1e-5, abs=1e-6)


def test_linear_imputation_reproduces_a_linear_image_inside():
  rows, cols = np.mgrid[0:9, 0:8]
  image = (0.3 * rows - 0.2 * cols + 1.0)[..., None].astype(np.float32)
  removed = np.zeros((9, 8), bool)
  removed[2:6, 3:7] = True
  removed[4, 1] = True
  np.testing.assert_allclose(F.linear_imputation(image, removed), image, atol=1e-5)


def test_linear_imputation_solves_the_weighted_mean_equations_at_the_border():
  rng = np.random.default_rng(2)
  image = rng.uniform(size=(4, 5, 1)).astype(np.float32)
  removed = rng.uniform(size=(4, 5)) < 0.5
  removed[0, 0] = True
  out = F.linear_imputation(image, removed)[..., 0]
  for r, c in zip(*np.nonzero(removed)):  # each removed pixel: mean of its neighbours
    total = weight_sum = 0.0
    for (dr, dc), w in F.ROAD_WEIGHTS:
      if 0 <= r + dr < 4 and 0 <= c + dc < 5:
        total += w * out[r + dr, c + dc]
        weight_sum += w
    assert out[r, c] == pytest.approx(total / weight_sum, abs=1e-5)
  np.testing.assert_array_equal(out[~removed], image[..., 0][~removed])


def test_road_orders_and_noise():
  rng = np.random.default_rng(3)
  images = rng.uniform(-1, 1, (2, 6, 6, 1)).astype(np.float32)
  maps = rng.uniform(size=(2, 6, 6))
  maps[:, 0, 0] = 5.0  # most relevant
  maps[:, 5, 5] = -5.0  # least relevant
  corner = _pixel_model(0, 0)
  morf = F.road_curves(
    images,
    maps,
    ONES[:2],
    corner,
    percentages=(0.05, 0.5),
    most_relevant_first=True,
    noise=0.0,
    seed=0,
  )
  lerf = F.road_curves(
    images,
    maps,
    ONES[:2],
    corner,
    percentages=(0.05, 0.5),
    most_relevant_first=False,
    noise=0.0,
    seed=0,
  )
  np.testing.assert_allclose(lerf, images[:, 0, 0, 0][:, None].repeat(2, 1))  # never removed
  for i in range(2):
    removed = F.pixel_ranks(maps)[i] < 2
    expected = F.linear_imputation(images[i], removed)[0, 0, 0]
    assert morf[i, 0] == pytest.approx(expected)
  noisy = F.road_curves(
    images, maps, ONES[:2], corner, percentages=(0.05,), most_relevant_first=True, noise=0.5, seed=0
  )
  assert not np.allclose(noisy, morf[:, :1])


def test_unknown_baseline_is_named():
  with pytest.raises(ValueError, match="baseline"):
    F.baseline_images(np.zeros((1, 2, 2, 1)), "zeros", 1.0)


@pytest.mark.parametrize("keep_monotonous", [True, False])
def test_pic_auc_equals_pair(monkeypatch, keep_monotonous):
  from saliency.metrics import pic

  if not hasattr(np, "trapz"):  # PAIR calls np.trapz, which NumPy 2.4 removed
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
  rng = np.random.default_rng(4)
  rows, cols = np.mgrid[0:24, 0:24]
  image = np.clip(
    128 + 60 * np.sin(rows / 2.0) * np.cos(cols / 3.0) + rng.normal(0, 20, (24, 24)), 0, 255
  ).astype(np.uint8)
  saliency_map = rng.uniform(size=(24, 24))
  saliency_map[5:12, 5:12] += 1.0
  random_mask = np.zeros((24, 24), bool)
  random_mask.ravel()[rng.choice(576, 6, replace=False)] = True
  weights = np.zeros((24, 24))
  weights[5:12, 5:12] = 1.0

  def predict(batch):  # a softmax-like score of the high-frequency energy of a patch
    batch = np.asarray(batch, np.float64)
    energy = np.abs(np.diff(batch, axis=1))
    return 1 / (1 + np.exp(-(energy[:, :23] * weights[:23]).sum((1, 2)) / 500 + 3))

  thresholds = [0.005, 0.01, 0.02, 0.05, 0.1, 0.21, 0.5, 0.75]
  ours = F.pic_auc(
    image,
    saliency_map,
    random_mask,
    predict,
    thresholds,
    min_pred_value=0.0,
    keep_monotonous=keep_monotonous,
    num_data_points=200,
  )
  theirs = pic.compute_pic_metric(
    image,
    saliency_map,
    random_mask,
    predict,
    thresholds,
    min_pred_value=0.0,
    keep_monotonous=keep_monotonous,
    num_data_points=200,
  )
  assert np.isfinite(ours) and ours == pytest.approx(theirs.auc, rel=1e-12)
  # Where PAIR raises ComputePicMetricError, the image is undefined (NaN).
  assert np.isnan(
    F.pic_auc(image, saliency_map, random_mask, predict, thresholds, min_pred_value=0.9999)
  )


def test_pic_images_keep_the_shape_where_every_pixel_is_kept():
  image = np.arange(64, dtype=np.uint8).reshape(8, 8)
  constant = np.zeros((8, 8))  # every pixel ties at the quantile: all kept
  images = F.pic_images(image, constant, np.zeros((8, 8), bool), (0.1,))
  assert [im.shape for im in images] == [(8, 8), (8, 8)]
  np.testing.assert_array_equal(images[1], image)
