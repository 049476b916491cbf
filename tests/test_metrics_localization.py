"""Localization metrics against scikit-learn, scikit-image and hand-worked Quantus cases."""

import warnings

import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from saliency_jax import metrics
from saliency_jax.metrics import localization

RNG = np.random.default_rng(0)


def _cases():
  """(name, maps, masks): odd sizes, ties (quantized and binary maps), every mask valid."""
  out = []
  for shape in [(3, 7, 9), (3, 33, 17), (2, 1, 5)]:
    base = RNG.random(shape).astype(np.float32)
    masks = RNG.random(shape) < 0.3
    masks[:, 0, 0] = True
    masks[:, -1, -1] = False
    out.append((f"continuous{shape}", base, masks))
    out.append((f"quantized{shape}", np.round(base * 4) / 4, masks))
    out.append((f"binary{shape}", (base > 0.5).astype(np.float32), masks))
  # Map correlated with the mask, float64 values that float32 cannot hold (slow exact path).
  maps = RNG.random((2, 12, 10)) + 0.3 * masks_like((2, 12, 10))
  out.append(("float64", maps, masks_like((2, 12, 10))))
  return out


def masks_like(shape):
  m = np.zeros(shape, bool)
  m[:, 2:6, 3:7] = True
  return m


def _sklearn(maps, masks, name):
  out = []
  for a, b in zip(maps, masks):
    y, s = b.ravel(), a.ravel()
    if name == "auprc":
      precision, recall, _ = skm.precision_recall_curve(y, s)
      out.append(skm.auc(recall, precision))
    elif name == "average_precision":
      out.append(skm.average_precision_score(y, s))
    else:
      out.append(skm.roc_auc_score(y, s))
  return np.array(out)


RANK = {
  "auprc": (metrics.auprc, metrics.auprc_jax),
  "average_precision": (metrics.average_precision, metrics.average_precision_jax),
  "roc_auc": (metrics.roc_auc, metrics.roc_auc_jax),
}


@pytest.mark.parametrize("name", sorted(RANK))
def test_rank_metrics_equal_sklearn(name):
  numpy_fn, jax_fn = RANK[name]
  for case, maps, masks in _cases():
    ref = _sklearn(maps, masks, name)
    ours = numpy_fn(maps, masks)
    assert ours.dtype == np.float64 and ours.shape == (maps.shape[0],)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10, err_msg=case)
    # The accelerator path, under jit on the CPU.
    ours_jax = np.asarray(jax.jit(jax_fn)(maps, masks))
    np.testing.assert_allclose(ours_jax, ref, rtol=0, atol=1e-5, err_msg=case)


def test_auprc_hand_worked_ties():
  # Scores 0.9 (pos), 0.5 (pos, neg tie), 0.1 (neg). Curve points (recall, precision):
  # (0, 1) -> (1/2, 1) -> (1, 2/3) -> (1, 1/2). Trapezoids: 1/2 * 1 + 1/2 * (1 + 2/3) / 2.
  maps = np.array([[[0.9, 0.5, 0.5, 0.1]]], np.float32)
  masks = np.array([[[1, 1, 0, 0]]], np.uint8)
  np.testing.assert_allclose(metrics.auprc(maps, masks), [0.5 + 5 / 12], atol=1e-12)
  # Step-wise AP: 1/2 * 1 + 1/2 * 2/3.
  np.testing.assert_allclose(metrics.average_precision(maps, masks), [0.5 + 1 / 3], atol=1e-12)


def test_undefined_cases_are_nan_and_reference_values_documented():
  maps = RNG.random((5, 6, 7)).astype(np.float32)
  masks = np.zeros((5, 6, 7), bool)
  masks[:, 1:3, 2:5] = True
  masks[0] = False  # empty mask
  masks[1] = True  # all-positive mask
  maps[2] = 0.25  # constant map
  maps[3, 0, 0] = np.nan  # NaN in the map
  maps[4, 1, 1] = np.inf  # inf in the map
  expected = np.array([np.nan] * 5)
  for numpy_fn, jax_fn in RANK.values():
    np.testing.assert_array_equal(numpy_fn(maps, masks), expected)
    np.testing.assert_array_equal(np.asarray(jax.jit(jax_fn)(maps, masks)), expected)
  # What scikit-learn returns there instead (placeholders, not localization scores).
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    precision, recall, _ = skm.precision_recall_curve(masks[0].ravel(), maps[0].ravel())
    assert skm.auc(recall, precision) == pytest.approx(0.5)
    precision, recall, _ = skm.precision_recall_curve(masks[1].ravel(), maps[1].ravel())
    assert skm.auc(recall, precision) == pytest.approx(1.0)
    prevalence = masks[2].mean()
    precision, recall, _ = skm.precision_recall_curve(masks[2].ravel(), maps[2].ravel())
    assert skm.auc(recall, precision) == pytest.approx((1 + prevalence) / 2)
    with pytest.raises(ValueError):
      skm.precision_recall_curve(masks[3].ravel(), maps[3].ravel())


def test_valid_rows_unaffected_by_invalid_neighbours():
  maps = RNG.random((3, 9, 11)).astype(np.float32)
  masks = masks_like((3, 9, 11))
  alone = metrics.auprc(maps[1:2], masks[1:2])
  maps[0] = np.nan
  maps[2] = 1.0
  np.testing.assert_array_equal(metrics.auprc(maps, masks)[1:2], alone)


def test_bad_masks_raise():
  maps = RNG.random((2, 4, 4)).astype(np.float32)
  with pytest.raises(ValueError, match="binary"):
    metrics.auprc(maps, np.full((2, 4, 4), 255, np.uint8))
  with pytest.raises(ValueError, match="shape"):
    metrics.auprc(maps, np.ones((2, 4, 4, 1), bool))


def test_numpy_and_jax_paths_agree_on_large_maps():
  maps = RNG.random((2, 64, 80)).astype(np.float32)
  maps[1] = np.round(maps[1] * 10)
  masks = RNG.random((2, 64, 80)) < 0.05
  ours = localization.rank_metrics(maps, masks)
  for name, values in ours.items():
    np.testing.assert_allclose(values, _sklearn(maps, masks, name), atol=1e-10)
    np.testing.assert_allclose(np.asarray(RANK[name][1](maps, masks)), values, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Quantus / CheXlocalize metrics. References below are Quantus' published per-instance formulas
# (quantus/metrics/localisation/*.py, evaluate_instance), written out per map.


def _quantus_pointing(a, s):
  a, s = a.flatten(), s.flatten().astype(bool)
  return float(np.any(s[np.argwhere(a == np.max(a))]))


def _quantus_mass(a, s):
  return np.sum(a[s.astype(bool)]) / np.sum(a)


def _quantus_rank(a, s):
  a = a.flatten()
  s = np.where(s.flatten().astype(bool))[0]
  k = len(s)
  return len(np.intersect1d(s, np.argsort(a)[-int(k) :])) / float(k)


def _quantus_top_k(a, s, k):
  top = np.zeros(a.shape)
  np.put_along_axis(top, np.argsort(a, axis=None)[-k:], 1, axis=None)
  return 1.0 / k * np.sum(np.logical_and(s.astype(bool), top.astype(bool)))


def _continuous_case(shape=(4, 13, 11)):
  maps = RNG.random(shape)  # float64, no ties
  masks = RNG.random(shape) < 0.25
  masks[:, 0, 0] = True
  masks[:, -1, 0] = False
  return maps, masks


def test_quantus_metrics_without_ties():
  maps, masks = _continuous_case()
  for ours_fn, ours_jax, ref in [
    (metrics.pointing_game, metrics.pointing_game_jax, _quantus_pointing),
    (metrics.relevance_mass_accuracy, metrics.relevance_mass_accuracy_jax, _quantus_mass),
    (metrics.relevance_rank_accuracy, metrics.relevance_rank_accuracy_jax, _quantus_rank),
  ]:
    expected = [ref(a, s) for a, s in zip(maps, masks)]
    np.testing.assert_allclose(ours_fn(maps, masks), expected, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ours_jax(maps, masks)), expected, atol=1e-5)
  for k in (1, 7, 100):
    expected = [_quantus_top_k(a, s, k) for a, s in zip(maps, masks)]
    np.testing.assert_allclose(metrics.top_k_intersection(maps, masks, k=k), expected, atol=1e-12)
    np.testing.assert_allclose(
      np.asarray(metrics.top_k_intersection_jax(maps, masks, k=k)), expected, atol=1e-5
    )


def test_quantus_metrics_hand_worked_ties():
  maps = np.array([[[0.9, 0.9, 0.2], [0.5, 0.5, 0.5]]], np.float32)
  masks = np.array([[[0, 1, 0], [1, 1, 0]]], bool)
  # Pointing game: the maximum 0.9 is tied at (0,0) outside and (0,1) inside -> hit.
  np.testing.assert_array_equal(metrics.pointing_game(maps, masks), [1.0])
  # Rank accuracy, K = 3: the two 0.9 (one inside) plus one of three tied 0.5 (two inside):
  # hits = 1 + 1 * 2/3, divided by K.
  np.testing.assert_allclose(metrics.relevance_rank_accuracy(maps, masks), [(5 / 3) / 3])
  # Top-2 holds both 0.9 pixels: 1 hit of 2.
  np.testing.assert_allclose(metrics.top_k_intersection(maps, masks, k=2), [0.5])
  # Mass: (0.9 + 0.5 + 0.5) / 3.5.
  np.testing.assert_allclose(metrics.relevance_mass_accuracy(maps, masks), [1.9 / 3.5], rtol=1e-6)
  # Miss: the unique maximum outside the mask.
  np.testing.assert_array_equal(
    metrics.pointing_game(maps * [[[1, 0, 1], [1, 1, 1]]], masks), [0.0]
  )


def test_energy_pointing_counts_positive_mass_only():
  maps = np.array([[[2.0, -1.0], [1.0, -3.0]], [[-1.0, -2.0], [-0.5, -3.0]]])
  masks = np.array([[[1, 1], [0, 0]], [[1, 0], [0, 0]]], bool)
  # Positive energy 2 (inside) + 1 (outside); the second map has none -> NaN.
  np.testing.assert_allclose(metrics.energy_pointing(maps, masks), [2 / 3, np.nan])
  np.testing.assert_allclose(np.asarray(metrics.energy_pointing_jax(maps, masks)), [2 / 3, np.nan])


@pytest.mark.parametrize(
  "name",
  ["pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "energy_pointing", "iou"],
)
def test_policy_cases_for_every_localization_metric(name):
  maps = RNG.random((5, 6, 7)) + 0.1
  masks = np.zeros((5, 6, 7), bool)
  masks[:, 1:3, 2:5] = True
  masks[0] = False
  masks[1] = True
  maps[2] = 0.25
  maps[3, 0, 0] = np.nan
  maps[4, 1, 1] = -np.inf
  values = getattr(metrics, name)(maps, masks)
  assert np.isnan(values).all(), values
  jax_fn = getattr(metrics, name + "_jax", None)
  if jax_fn is not None:
    assert np.isnan(np.asarray(jax_fn(maps, masks))).all()
  # Quantus itself returns NaN for the empty mask.
  assert np.isnan(metrics.top_k_intersection(maps, masks, k=3)).all()


def test_accelerator_dispatch_path_in_chunks(monkeypatch):
  """The public functions' accelerator branch (jitted JAX, chunked), exercised on the CPU."""
  from saliency_jax.metrics import _batching

  maps = RNG.random((5, 10, 9)).astype(np.float32)
  maps[3] = np.round(maps[3] * 3)
  masks = masks_like((5, 10, 9))
  expected = localization.rank_metrics(maps, masks)
  monkeypatch.setattr(_batching, "on_cpu", lambda: False)
  monkeypatch.setattr(localization, "_CHUNK", 2)
  for name, values in localization.rank_metrics(maps, masks).items():
    np.testing.assert_allclose(values, expected[name], atol=1e-5, err_msg=name)
    assert values.dtype == np.float64
