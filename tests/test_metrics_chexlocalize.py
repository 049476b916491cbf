"""CheXlocalize's metrics against scikit-image's Otsu, hand-worked cases and a plain
transcription of CheXlocalize's bootstrap loop."""

import numpy as np
import pytest
from skimage import filters

from saliency_jax.metrics import chexlocalize

RNG = np.random.default_rng(0)


def _normalized(m):
  m = m.astype(np.float64)
  return (m - m.min()) / (m.max() - m.min())


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
    levels = (255 * _normalized(m)).astype(np.uint8)
    t = filters.threshold_otsu(levels)
    np.testing.assert_array_equal(p, (levels > t).ravel())
  expected = []
  for p, mask in zip(predicted, masks):
    mask = mask.ravel()
    expected.append((p & mask).sum() / (p | mask).sum())
  np.testing.assert_allclose(chexlocalize.iou(maps, masks), expected, rtol=1e-12)


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
