"""CheXlocalize's metrics against scikit-image's Otsu, hand-worked cases and a plain
transcription of CheXlocalize's bootstrap loop."""

import numpy as np
import pytest
from skimage import filters

from saliency_jax.metrics import chexlocalize

RNG = np.random.default_rng(0)


def _chexlocalize_levels(cam):
  """heatmap_to_segmentation.py's lines on one map (torch's float32 arithmetic is IEEE, as
  NumPy's): `mask = cam - cam.min(); mask = mask.div(mask.max()); np.uint8(255 * mask)`."""
  mask = cam - cam.min()
  mask = mask / mask.max()
  return np.uint8(255 * mask)


@pytest.mark.parametrize("shape", [(4, 9, 13), (3, 32, 32), (2, 5, 3)])
def test_otsu_segmentation_equals_scikit_image(shape):
  maps = RNG.random(shape).astype(np.float32)
  maps[0] = maps[0] ** 4  # skewed
  maps[1] = np.round(maps[1] * 3)  # three levels: ties and empty bins
  masks = RNG.random(shape) < 0.3
  masks[:, 0, 0], masks[:, -1, -1] = True, False
  predicted, valid = chexlocalize.segment(maps, masks)
  assert valid.all()
  for m, p in zip(maps, predicted):
    levels = _chexlocalize_levels(m)
    t = filters.threshold_otsu(levels)
    np.testing.assert_array_equal(p, (levels > t).ravel())
  expected = []
  for p, mask in zip(predicted, masks):
    mask = mask.ravel()
    expected.append((p & mask).sum() / (p | mask).sum())
  np.testing.assert_allclose(chexlocalize.iou(maps, masks), expected, rtol=1e-12)


def test_otsu_ties_at_the_threshold_level_are_not_positive():
  # Values k + 0.5 between min 0 and max 255 normalize to levels k (truncation) in any
  # precision. Many pixels sit on the level Otsu picks: cv2's THRESH_BINARY keeps level > t.
  counts = {0: 30, 40: 24, 90: 18, 120: 12, 200: 8, 255: 4}  # Otsu: t = 40
  levels = np.concatenate([np.full(c, k) for k, c in counts.items()])
  values = np.where((levels == 0) | (levels == 255), levels, levels + 0.5)
  maps = np.stack([RNG.permutation(values) for _ in range(3)]).reshape(3, 6, 16)
  maps[1] = maps[1].astype(np.float32)
  masks = RNG.random(maps.shape) < 0.4
  masks[:, 0, 0], masks[:, -1, -1] = True, False
  predicted, valid = chexlocalize.segment(maps, masks)
  assert valid.all()
  for m, p, mask in zip(maps, predicted, masks):
    levels = np.floor(m).astype(np.uint8)
    t = filters.threshold_otsu(levels)
    assert (levels == t).sum() == 24  # the rule decides 24 pixels
    np.testing.assert_array_equal(p, (levels > t).ravel())
    assert not np.array_equal(p, (levels >= t).ravel())
    iou = ((levels > t) & mask).sum() / ((levels > t) | mask).sum()
    assert chexlocalize.iou(m[None], mask[None])[0] == pytest.approx(iou, rel=1e-12)


def test_otsu_threshold_equals_scikit_image_on_uint8_levels():
  levels = RNG.integers(0, 256, (20, 300)).astype(np.uint8)
  levels[:5] = (RNG.beta(0.5, 3, (5, 300)) * 255).astype(np.uint8)  # skewed
  levels[5:8] = RNG.choice([3, 80, 81, 250], (3, 300))  # few levels, empty bins between
  np.testing.assert_array_equal(
    chexlocalize.otsu_levels(levels), [filters.threshold_otsu(row) for row in levels]
  )
  # OpenCV: no split of a one-level row has a positive variance; the threshold stays 0.
  assert chexlocalize.otsu_levels(np.full((1, 9), 7, np.uint8))[0] == 0


def test_levels_are_computed_in_the_maps_float32_precision():
  # Values on the level boundaries, lo + k (hi - lo) / 255: truncating 255 * (x - lo) / (hi - lo)
  # gives k or k - 1 depending on the precision. CheXlocalize's torch tensors are float32, so
  # the uint8 levels are float32's (here 132 pixels one level higher than in float64).
  lo, hi = np.float32(0.1), np.float32(0.7)
  maps = (lo + np.arange(256) * (hi - lo) / 255).astype(np.float32).reshape(1, 16, 16)
  masks = np.zeros(maps.shape, bool)
  masks[0, :4] = True
  expected = _chexlocalize_levels(maps[0]).ravel()
  float64_levels = _chexlocalize_levels(maps[0].astype(np.float64)).ravel()
  assert (expected != float64_levels).sum() == 132
  t = filters.threshold_otsu(expected)
  predicted, _ = chexlocalize.segment(maps, masks)
  np.testing.assert_array_equal(predicted[0], expected > t)
  assert not np.array_equal(predicted[0], float64_levels > filters.threshold_otsu(float64_levels))


def test_fixed_threshold_compares_in_the_maps_precision():
  # CheXlocalize's `mask > threshold` under NumPy 1.18 casts the float64 threshold to the
  # float32 map's dtype: a pixel at float32(0.3) is not above arange's 0.30000000000000004.
  t = chexlocalize.TUNING_THRESHOLDS[1]
  assert t != 0.3 and np.float32(t) == np.float32(0.3)
  maps = np.array([[[0.0, 0.3, 0.31, 1.0]]], np.float32)
  masks = np.array([[[0, 1, 1, 0]]], bool)
  predicted, _ = chexlocalize.segment(maps, masks, threshold=t)
  np.testing.assert_array_equal(predicted[0], [False, False, True, True])
  # The same values as a float64 map compare in float64: float32(0.3) = 0.30000001192... is
  # above 0.30000000000000004 (what NumPy 2's promotion would do to the float32 map too).
  predicted64, _ = chexlocalize.segment(maps.astype(np.float64), masks, threshold=t)
  np.testing.assert_array_equal(predicted64[0], [False, True, True, True])
  assert chexlocalize.iou(maps, masks, threshold=t)[0] == pytest.approx(1 / 3)


def test_iou_by_hand():
  # Normalized row [0, 0.25, 0.5, 0.75, 1]; threshold 0.5 keeps the last two pixels (> 0.5).
  maps = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
  masks = np.array([[[0, 0, 1, 1, 0]]], bool)
  assert chexlocalize.iou(maps, masks, threshold=0.5)[0] == pytest.approx(1 / 3)
  # Otsu of the levels [0, 63, 127, 191, 255] (counts times the squared difference of the
  # class means): t = 63 gives 2 * 3 * (31.5 - 191)^2 = 152641.5; t = 127 gives
  # 3 * 2 * (63.33 - 223)^2 = 152960.7, the maximum (t = 0 and 191 give less).
  predicted, _ = chexlocalize.segment(maps, masks)
  np.testing.assert_array_equal(predicted[0], [False, False, False, True, True])
  assert chexlocalize.iou(maps, masks)[0] == pytest.approx(1 / 3)


def test_undefined_cases_are_nan():
  maps = RNG.random((4, 6, 6))
  masks = np.zeros((4, 6, 6), bool)
  masks[:, 1:3, 1:3] = True
  maps[0] = 0.3  # constant map
  masks[1] = False  # empty mask
  maps[2, 0, 0] = np.nan  # non-finite map
  for fn in (chexlocalize.iou, chexlocalize.hit):
    out = fn(maps, masks)
    assert np.isnan(out[:3]).all() and np.isfinite(out[3])
  # A threshold above every normalized value but the maximum leaves one pixel; none is empty
  # (the maximum is 1 > t), so a defined map always has a segmentation.
  assert np.isfinite(chexlocalize.iou(maps[3:], masks[3:], threshold=0.99)).all()


def test_hit_takes_the_first_maximum():
  maps = np.zeros((3, 3, 4))
  masks = np.zeros((3, 3, 4), bool)
  masks[:, 2, :] = True
  maps[0, 2, 1] = 5.0  # single peak inside
  maps[1, 0, 0] = maps[1, 2, 3] = 5.0  # tie: the first (outside) counts, not the second
  maps[2, 1, 1] = 5.0  # peak outside
  np.testing.assert_array_equal(chexlocalize.hit(maps, masks), [1.0, 0.0, 0.0])


def test_tune_threshold_by_hand():
  # One map, normalized [0, .1, ..., 1] over 11 pixels, mask = the top 4 pixels (0.7 .. 1).
  maps = np.linspace(0, 1, 11)[None, None, :]
  masks = (np.arange(11) >= 7)[None, None, :]
  result = chexlocalize.tune_threshold(maps, masks)
  # NumPy's arange(0.2, 0.8, 0.1) ends at 0.8000000000000003: seven thresholds, each a
  # little above its decimal (0.30000000000000004, ...). Pixel values are linspace's, so a
  # pixel equal to a threshold's decimal is not above it: t = 0.6 keeps 0.7 .. 1 (IoU 1),
  # t = 0.7 keeps 0.8 .. 1 (3/4), t = 0.8 keeps 0.9, 1 (2/4), t = 0.2 keeps 0.3 .. 1 (4/8).
  assert result["thresholds"] == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
  expected = [4 / 8, 4 / 7, 4 / 6, 4 / 5, 1.0, 3 / 4, 2 / 4]
  np.testing.assert_allclose(result["miou"], expected)
  assert result["threshold"] == pytest.approx(0.6)
  # Ties go to the first threshold; undefined maps are skipped.
  flat = np.stack([np.linspace(0, 1, 11)] * 2)[:, None, :]
  flat[1] = 0.5
  two = chexlocalize.tune_threshold(flat, np.concatenate([masks, masks]))
  np.testing.assert_allclose(two["miou"], expected)


def _chexlocalize_bootstrap(columns, seed, replicates):
  """CheXlocalize's bootstrap_metric + compute_cis, transcribed without pandas."""
  np.random.seed(seed)
  n = len(columns[0])
  means = []
  for _ in range(replicates):
    ids = np.random.choice(n, size=n, replace=True)
    means.append([np.nanmean(c[ids]) if np.isfinite(c[ids]).any() else np.nan for c in columns])
  return np.array(means)


def _cis(series):
  s = np.sort(series)
  return s[int(0.05 / 2 * len(s)) - 1], s[int((1 - 0.05 / 2) * len(s)) - 1]


def test_bootstrap_equals_the_chexlocalize_loop():
  values = RNG.random(37)
  values[[3, 9]] = np.nan
  out = chexlocalize.bootstrap(values, seed=0, n_resamples=1000)
  reference = _chexlocalize_bootstrap([values], 0, 1000)[:, 0]
  low, high = _cis(reference)
  assert (out["low"], out["high"]) == (low, high)
  assert out["bootstrap_mean"] == pytest.approx(reference.mean(), rel=1e-12)
  assert out["mean"] == pytest.approx(np.nanmean(values))
  assert (out["n"], out["n_excluded"]) == (35, 2)
  assert out["low"] < out["mean"] < out["high"]


def test_percentage_decrease_equals_the_chexlocalize_script():
  baseline = RNG.random(29) * 0.5 + 0.4
  values = baseline - 0.2 + 0.05 * RNG.standard_normal(29)
  values[4] = np.nan
  out = chexlocalize.percentage_decrease(values, baseline, seed=3, n_resamples=200)
  # The script bootstraps method and baseline with the same seed and length: the same images.
  pred = _chexlocalize_bootstrap([values], 3, 200)[:, 0]
  hb = _chexlocalize_bootstrap([baseline], 3, 200)[:, 0]
  low, high = _cis((hb - pred) / hb)
  assert out["low"] == pytest.approx(100 * low) and out["high"] == pytest.approx(100 * high)
  assert out["decrease"] == pytest.approx(100 * (hb.mean() - pred.mean()) / hb.mean())
  assert 0 < out["low"] < out["decrease"] < out["high"]


def test_bad_input_raises():
  with pytest.raises(ValueError, match="threshold must be 'otsu'"):
    chexlocalize.iou(np.ones((1, 3, 3)), np.eye(3, dtype=bool)[None], threshold="mean")
  with pytest.raises(ValueError, match="too few"):
    chexlocalize.bootstrap(np.ones(5), seed=0, n_resamples=20)
  with pytest.raises(ValueError, match="equal lengths"):
    chexlocalize.percentage_decrease(np.ones(5), np.ones(4), seed=0)


def test_all_undefined_values_give_nan_without_warnings():
  import warnings  # pylint: disable=g-import-not-at-top

  values = np.full(5, np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ci = chexlocalize.bootstrap(values, seed=0, n_resamples=200)
    pct = chexlocalize.percentage_decrease(
      values, np.linspace(0.1, 0.5, 5), seed=0, n_resamples=200
    )
  assert np.isnan(ci["mean"]) and np.isnan(ci["bootstrap_mean"])
  assert (ci["n"], ci["n_excluded"]) == (0, 5)
  assert np.isnan(pct["decrease"])
