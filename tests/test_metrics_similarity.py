"""Similarity metrics against scikit-image and SciPy on the same inputs."""

import jax
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from saliency_jax import metrics

RNG = np.random.default_rng(1)


def _pairs(shape):
  a = RNG.random(shape).astype(np.float32)
  b = (0.6 * a + 0.4 * RNG.random(shape)).astype(np.float32)
  yield "continuous", a, b
  yield "quantized", np.round(a * 3) / 3, np.round(b * 3) / 3
  yield "binary", (a > 0.5).astype(np.float32), (b > 0.5).astype(np.float32)
  # Low contrast: float32 cancellation in E[x^2] - E[x]^2 matters here.
  yield "low_contrast", (0.5 + 0.01 * a).astype(np.float32), (0.2 + 0.01 * b).astype(np.float32)


def _skimage(a, b, **kwargs):
  # The exact reference: scikit-image in float64 on the same (float32) values.
  return np.array(
    [
      structural_similarity(x.astype(np.float64), y.astype(np.float64), **kwargs)
      for x, y in zip(a, b)
    ]
  )


@pytest.mark.parametrize(
  "shape,gaussian",
  [
    ((2, 7, 9), False),
    ((2, 33, 17), False),
    ((2, 33, 17), True),
    ((2, 11, 12), True),
    ((1, 64, 48), False),
  ],
)
@pytest.mark.parametrize("data_range", [1.0, 2.0, 0.5])
def test_ssim_equals_skimage(shape, gaussian, data_range):
  for case, a, b in _pairs(shape):
    ours = metrics.ssim(a, b, data_range=data_range, gaussian_weights=gaussian)
    ref = _skimage(a, b, data_range=data_range, gaussian_weights=gaussian)
    assert ours.dtype == np.float64 and ours.shape == (shape[0],)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5, err_msg=case)


def test_ssim_keyword_variants_equal_skimage():
  a, b = next(_pairs((2, 21, 19)))[1:]
  variants = [
    dict(win_size=5),
    dict(win_size=3, use_sample_covariance=False),
    dict(gaussian_weights=True, use_sample_covariance=False),
    dict(gaussian_weights=True, sigma=1.0),
    dict(gaussian_weights=True, win_size=7),  # filter wider than the crop: reflect
    dict(K1=0.05, K2=0.1),
  ]
  for kwargs in variants:
    ours = metrics.ssim(a, b, data_range=1.0, **kwargs)
    np.testing.assert_allclose(
      ours, _skimage(a, b, data_range=1.0, **kwargs), atol=1e-5, err_msg=str(kwargs)
    )


def test_ssim_float32_keeps_precision_for_maps_far_from_zero():
  # Maps with a large offset against their range: float32 variances must not cancel.
  rng = np.random.default_rng(7)
  a = (10_000 + rng.random((3, 23, 21))).astype(np.float32)
  b = a + (0.01 * rng.random(a.shape)).astype(np.float32)
  b[2] = (10_000 + rng.random((23, 21))).astype(np.float32)
  for gaussian in (False, True):
    np.testing.assert_allclose(
      metrics.ssim(a, b, data_range=1.0, gaussian_weights=gaussian),
      _skimage(a, b, data_range=1.0, gaussian_weights=gaussian),
      rtol=0,
      atol=1e-5,
    )


def test_ssim_per_map_data_range_and_jit():
  a, b = next(_pairs((3, 16, 15)))[1:]
  ranges = np.array([1.0, 2.0, 0.25])
  ref = np.array(
    [
      structural_similarity(x.astype(float), y.astype(float), data_range=r)
      for x, y, r in zip(a, b, ranges)
    ]
  )
  np.testing.assert_allclose(metrics.ssim(a, b, data_range=ranges), ref, atol=1e-5)
  jitted = jax.jit(lambda x, y: metrics.ssim_jax(x, y, data_range=2.0))
  np.testing.assert_allclose(np.asarray(jitted(a, b)), _skimage(a, b, data_range=2.0), atol=1e-5)


def test_ssim_constant_and_nonfinite_maps():
  shape = (5, 10, 9)
  a = RNG.random(shape).astype(np.float32)
  b = RNG.random(shape).astype(np.float32)
  a[0] = b[0] = 0.0  # equal constants: scikit-image gives exactly 1
  a[1], b[1] = 0.3, 0.7  # different constants: defined by C1
  a[2] = 0.5  # one constant map
  a[3, 2, 2] = np.nan
  b[4, 0, 0] = np.inf
  ours = metrics.ssim(a, b, data_range=1.0)
  ref = _skimage(a[:3], b[:3], data_range=1.0)
  np.testing.assert_allclose(ours[:3], ref, atol=1e-5)
  assert ours[0] == pytest.approx(1.0)
  assert np.isnan(ours[3]) and np.isnan(ours[4])
  assert np.isnan(structural_similarity(a[3].astype(float), b[3].astype(float), data_range=1.0))


def test_ssim_chunks_match_one_call(monkeypatch):
  from saliency_jax.metrics import structural_similarity as ssim_module

  a, b = next(_pairs((5, 9, 8)))[1:]
  whole = metrics.ssim(a, b, data_range=1.0)
  monkeypatch.setattr(ssim_module, "_SSIM_CHUNK", 2)
  np.testing.assert_array_equal(metrics.ssim(a, b, data_range=1.0), whole)


def test_ssim_bad_input_raises():
  a = np.zeros((2, 8, 8), np.float32)
  with pytest.raises(ValueError, match="data_range"):
    metrics.ssim(a, a, data_range=None)
  with pytest.raises(ValueError, match="positive"):
    metrics.ssim(a, a, data_range=0.0)
  with pytest.raises(ValueError, match="exceeds"):
    metrics.ssim(a[:, :6], a[:, :6], data_range=1.0)
  with pytest.raises(ValueError, match="odd"):
    metrics.ssim(a, a, data_range=1.0, win_size=4)
  with pytest.raises(ValueError, match="same shape"):
    metrics.ssim(a, a[:1], data_range=1.0)
  with pytest.raises(ValueError, match="dimensions"):
    metrics.ssim(a[0], a[0], data_range=1.0)


def _scipy_rows(fn, a, b):
  return np.array([fn(x.ravel(), y.ravel())[0] for x, y in zip(a, b)])


def _correlation_inputs():
  a = RNG.random((4, 13, 9)) - 0.4
  b = a + 0.5 * RNG.random((4, 13, 9))
  a[1] = np.round(a[1] * 3) / 3  # ties
  b[2] = (b[2] > 0.3).astype(float)  # binary map
  return a, b


def test_spearman_and_pearson_equal_scipy():
  import scipy.stats

  a, b = _correlation_inputs()
  np.testing.assert_allclose(
    metrics.spearman(a, b), _scipy_rows(scipy.stats.spearmanr, a, b), atol=1e-12
  )
  np.testing.assert_allclose(
    metrics.spearman(a, b, absolute=True),
    _scipy_rows(scipy.stats.spearmanr, np.abs(a), np.abs(b)),
    atol=1e-12,
  )
  np.testing.assert_allclose(
    metrics.pearson(a, b), _scipy_rows(scipy.stats.pearsonr, a, b), atol=1e-12
  )
  np.testing.assert_allclose(
    np.asarray(metrics.spearman_jax(a, b)), _scipy_rows(scipy.stats.spearmanr, a, b), atol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(metrics.pearson_jax(a, b)), _scipy_rows(scipy.stats.pearsonr, a, b), atol=1e-5
  )


def test_correlations_undefined_cases():
  a, b = _correlation_inputs()
  a[0] = 0.5  # constant: SciPy returns NaN too
  b[3, 0, 0] = np.nan
  for fn in (metrics.spearman, metrics.pearson, metrics.spearman_jax, metrics.pearson_jax):
    values = np.asarray(fn(a, b))
    assert np.isnan(values[[0, 3]]).all() and np.isfinite(values[[1, 2]]).all()
  import warnings

  import scipy.stats

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert np.isnan(scipy.stats.pearsonr(a[0].ravel(), b[0].ravel())[0])


def test_mse_l1_on_minmax_normalized_maps():
  a = np.array([[[0.0, 2.0], [1.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]])
  b = np.array([[[5.0, 7.0], [5.0, 6.0]], [[0.0, 1.0], [0.0, 1.0]]])
  # Normalized: a0 = [0, 1, .5, 1], b0 = [0, 1, 0, .5]; differences 0, 0, .5, .5.
  np.testing.assert_allclose(metrics.mse(a, b), [0.125, np.nan])
  np.testing.assert_allclose(metrics.l1(a, b), [0.25, np.nan])
  np.testing.assert_allclose(np.asarray(metrics.mse_jax(a, b)), [0.125, np.nan])
  np.testing.assert_allclose(np.asarray(metrics.l1_jax(a, b)), [0.25, np.nan])


def test_hog_similarity_equals_skimage_hog_pearson():
  import scipy.stats
  from skimage.feature import hog

  a = RNG.random((2, 40, 33))
  b = a + RNG.random((2, 40, 33))
  expected = [scipy.stats.pearsonr(hog(x), hog(y))[0] for x, y in zip(a, b)]
  np.testing.assert_allclose(metrics.hog_similarity(a, b), expected, atol=1e-12)
  kwargs = dict(orientations=8, pixels_per_cell=(16, 16), cells_per_block=(1, 1))
  a = RNG.random((2, 80, 64))
  b = a + RNG.random((2, 80, 64))
  expected = [scipy.stats.pearsonr(hog(x, **kwargs), hog(y, **kwargs))[0] for x, y in zip(a, b)]
  assert np.isfinite(expected).all()
  np.testing.assert_allclose(metrics.hog_similarity(a, b, **kwargs), expected, atol=1e-12)
  a[0] = 0.2  # constant map: all-zero HOG features
  assert np.isnan(metrics.hog_similarity(a, b)[0])


def test_hog_features_once_per_map_give_hog_similarity_bit_for_bit():
  import scipy.stats
  from skimage.feature import hog

  maps = RNG.random((5, 33, 47))
  maps[1] = 0.5  # constant: no defined correlation
  maps[2, 4, 4] = np.nan  # not finite: left out
  features, finite = metrics.hog_features(maps)
  np.testing.assert_array_equal(finite, [True, True, False, True, True])
  np.testing.assert_array_equal(features[3], hog(maps[3]))
  left, right = np.array([0, 0, 1, 2, 3, 4, 4]), np.array([3, 4, 0, 3, 4, 0, 3])
  got = metrics.hog_pearson(features[left], features[right], finite[left] & finite[right])
  np.testing.assert_array_equal(got, metrics.hog_similarity(maps[left], maps[right]))
  assert np.isnan(got[2:4]).all()
  assert got[0] == pytest.approx(scipy.stats.pearsonr(hog(maps[0]), hog(maps[3]))[0], abs=1e-12)
  nothing = np.full((2, 24, 24), np.nan)  # no map has features
  features, finite = metrics.hog_features(nothing)
  assert features.shape == (2, 0) and not finite.any()
  assert np.isnan(metrics.hog_pearson(features, features, finite)).all()


def test_spearman_accelerator_dispatch_path(monkeypatch):
  from saliency_jax.metrics import _batching

  a, b = _correlation_inputs()
  expected = metrics.spearman(a, b, absolute=True)
  monkeypatch.setattr(_batching, "on_cpu", lambda: False)
  np.testing.assert_allclose(metrics.spearman(a, b, absolute=True), expected, atol=1e-5)


def test_average_ranks_equal_scipy_rankdata_and_give_spearman():
  import scipy.stats

  a, b = _correlation_inputs()
  ranks = metrics.average_ranks(a)
  assert ranks.shape == a.shape
  for got, x in zip(ranks, a):
    np.testing.assert_allclose(got.ravel(), scipy.stats.rankdata(x.ravel()), atol=0)
  np.testing.assert_allclose(
    metrics.average_ranks(a, absolute=True)[1].ravel(),
    scipy.stats.rankdata(np.abs(a[1]).ravel()),
    atol=0,
  )
  np.testing.assert_allclose(
    metrics.pearson(
      metrics.average_ranks(a, absolute=True), metrics.average_ranks(b, absolute=True)
    ),
    metrics.spearman(a, b, absolute=True),
    atol=1e-12,
  )
  bad = a.copy()
  bad[0, 0, 0] = np.nan
  assert np.isnan(metrics.average_ranks(bad)[0]).all()
  assert np.isfinite(metrics.average_ranks(bad)[1:]).all()


def test_top_k_iou_by_hand_and_against_sets():
  # 10 pixels, k = ceil(0.3 * 10) = 3. a's top 3: pixels 7, 8, 9. b ties at its 3rd value:
  # pixels 6, 7, 8, 9 are all >= it, so b's set has 4. IoU = |{7,8,9}| / |{6,...,9}| = 3/4.
  a = np.arange(10, dtype=np.float64)[None, None, :]
  b = np.array([0, 1, 2, 3, 4, 5, 7, 7, 8, 9], np.float64)[None, None, :]
  assert metrics.top_k_iou(a, b, fraction=0.3)[0] == pytest.approx(3 / 4)
  # Against sets built by sorting, on random maps with ties, odd sizes.
  rng = np.random.default_rng(3)
  x = np.round(rng.random((5, 7, 11)) * 6)
  y = rng.random((5, 7, 11))
  for fraction in (0.05, 0.25, 1.0):
    k = int(np.ceil(fraction * 77))
    expected = []
    for p, q in zip(x.reshape(5, -1), y.reshape(5, -1)):
      sp = set(np.flatnonzero(p >= np.sort(p)[-k]))
      sq = set(np.flatnonzero(q >= np.sort(q)[-k]))
      expected.append(len(sp & sq) / len(sp | sq))
    np.testing.assert_allclose(metrics.top_k_iou(x, y, fraction=fraction), expected)
  # Undefined: a constant map, a NaN; bad fraction raises.
  z = y.copy()
  z[0] = 0.5
  z[1, 0, 0] = np.nan
  out = metrics.top_k_iou(z, y, fraction=0.1)
  assert np.isnan(out[:2]).all() and np.isfinite(out[2:]).all()
  with pytest.raises(ValueError, match="fraction"):
    metrics.top_k_iou(x, y, fraction=0.0)
