"""The detector's pure parts against NumPy references and hand-worked examples."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax.detection import boxes as boxes_lib
from saliency_jax.detection import losses
from saliency_jax.detection import metrics
from saliency_jax.detection import postprocess


def _random_boxes(rng, n, size=64.0):
  corners = rng.uniform(0, size, (n, 2, 2))
  lo, hi = corners.min(1), corners.max(1) + 1.0
  return np.concatenate([lo, hi], -1).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Anchors, IoU, encoding, assignment.


def test_level_shapes_halve_with_ceiling():
  assert boxes_lib.level_shapes(64, 64) == ((8, 8), (4, 4), (2, 2), (1, 1), (1, 1))
  assert boxes_lib.level_shapes(320, 300) == ((40, 38), (20, 19), (10, 10), (5, 5), (3, 3))


def test_anchors_layout_and_shapes():
  a = boxes_lib.anchors(64, 48, sizes=(8, 16, 32, 64, 128))
  cells = sum(h * w for h, w in boxes_lib.level_shapes(64, 48))
  assert a.shape == (cells * 9, 4)
  # The first location of P3: centre (4, 4), scale 1, ratios 0.5 / 1 / 2 (height / width).
  h, w = 8 * math.sqrt(0.5), 8 / math.sqrt(0.5)
  np.testing.assert_allclose(a[0], [4 - h / 2, 4 - w / 2, 4 + h / 2, 4 + w / 2], rtol=1e-6)
  np.testing.assert_allclose(a[1], [0, 0, 8, 8], atol=1e-6)
  s = 2 ** (1 / 3) * 8
  np.testing.assert_allclose(a[4], [4 - s / 2, 4 - s / 2, 4 + s / 2, 4 + s / 2], rtol=1e-6)
  # The second location of P3 is one stride (8) to the right.
  np.testing.assert_allclose(a[9] - a[0], [0, 8, 0, 8], atol=1e-6)
  # The first anchor of P4 follows all of P3's.
  first_p4 = 8 * 6 * 9
  np.testing.assert_allclose(a[first_p4 + 1], [0, 0, 16, 16], atol=1e-6)


def test_iou_against_numpy():
  rng = np.random.default_rng(0)
  a, b = _random_boxes(rng, 7), _random_boxes(rng, 5)
  b[0] = a[0]  # identical boxes: IoU 1
  np.testing.assert_allclose(boxes_lib.iou(a, b), metrics.box_iou(a, b), rtol=1e-5, atol=1e-6)
  assert float(boxes_lib.iou(a[:1], b[:1])[0, 0]) == pytest.approx(1.0)
  # By hand: [0,0,2,2] and [1,1,3,3] overlap in 1 of 4 + 4 - 1 pixels.
  assert float(
    boxes_lib.iou(jnp.array([[0.0, 0, 2, 2]]), jnp.array([[1.0, 1, 3, 3]]))[0, 0]
  ) == pytest.approx(1 / 7)
  # Zero-area padding boxes overlap nothing.
  assert float(boxes_lib.iou(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0, 0]) == 0.0


def test_encode_decode_round_trip():
  rng = np.random.default_rng(1)
  boxes, anchors = _random_boxes(rng, 50), _random_boxes(rng, 50)
  deltas = boxes_lib.encode(boxes, anchors)
  np.testing.assert_allclose(boxes_lib.decode(deltas, anchors), boxes, rtol=1e-4, atol=1e-3)
  # By hand: a box twice the anchor's size, centred one anchor height lower.
  d = boxes_lib.encode(jnp.array([[8.0, 0, 16, 16]]), jnp.array([[0.0, 4, 4, 8]]))
  np.testing.assert_allclose(d[0], [(12 - 2) / 4, (8 - 6) / 4, math.log(2), math.log(4)], rtol=1e-6)


def test_assign_thresholds_ignore_band_and_low_quality():
  anchors = jnp.array(
    [
      [0.0, 0, 10, 10],  # the box itself: IoU 1 -> positive
      [0.0, 0, 10, 12],  # IoU 10/12 = 0.83 -> positive
      [0.0, 0, 10, 22],  # IoU 10/22 = 0.45 -> ignored
      [0.0, 0, 10, 30],  # IoU 1/3 -> negative
      [40.0, 40, 50, 50],
    ]
  )  # no overlap -> negative
  boxes = jnp.array([[0.0, 0, 10, 10], [0.0, 0, 0, 0]])  # second row: padding
  labels, matched = boxes_lib.assign(anchors, boxes, jnp.int32(1))
  np.testing.assert_array_equal(labels, [1, 1, -1, 0, 0])
  np.testing.assert_allclose(matched[:2], [[0, 0, 10, 10]] * 2)
  # No real box: every anchor is a negative, whatever the padding holds.
  labels, _ = boxes_lib.assign(anchors, jnp.array([[0.0, 0, 10, 10]]), jnp.int32(0))
  np.testing.assert_array_equal(labels, [0] * 5)
  # A box no anchor covers well: its best anchor (IoU 0.2) becomes positive when asked.
  far = jnp.array([[40.0, 40, 50, 90]])
  labels, matched = boxes_lib.assign(anchors, far, jnp.int32(1))
  np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1])
  np.testing.assert_allclose(matched[4], far[0])
  labels, _ = boxes_lib.assign(anchors, far, jnp.int32(1), low_quality_matches=False)
  np.testing.assert_array_equal(labels, [0, 0, 0, 0, 0])


def test_assign_matches_each_anchor_to_its_best_box():
  anchors = jnp.array([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])
  boxes = jnp.array([[20.0, 20, 30, 31], [0.0, 0, 10, 11], [0.0, 0, 0, 0]])
  labels, matched = boxes_lib.assign(anchors, boxes, jnp.int32(2))
  np.testing.assert_array_equal(labels, [1, 1])
  np.testing.assert_allclose(matched, boxes[jnp.array([1, 0])])


# ------------------------------------------------------------------------------------------
# Losses.


def test_focal_loss_against_its_formula():
  logits = np.array([-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0])
  for target in (0, 1):
    p_t = 1 / (1 + np.exp(-(logits if target else -logits)))  # p, or 1 - p without cancelling
    alpha_t = 0.25 if target else 0.75
    with np.errstate(divide="ignore"):
      want = -alpha_t * (1 - p_t) ** 2 * np.log(p_t)
    got = losses.focal_loss(jnp.asarray(logits, jnp.float32), jnp.full(7, target))
    finite = np.isfinite(want)
    np.testing.assert_allclose(np.asarray(got)[finite], want[finite], rtol=1e-5, atol=1e-12)
    assert np.all(np.isfinite(got))  # stable where log(p_t) underflows
  # gamma 0, alpha 1/2: half the binary cross-entropy.
  bce = np.log1p(np.exp(-2.0))
  assert float(
    losses.focal_loss(jnp.array([2.0]), jnp.array([1]), alpha=0.5, gamma=0.0)[0]
  ) == pytest.approx(0.5 * bce, rel=1e-6)


def test_box_losses_by_hand():
  pred = jnp.array([[0.0, 0.05, 1.0, -2.0]])
  target = jnp.zeros((1, 4))
  beta = 1 / 9
  want = 0 + 0.5 * 0.05**2 / beta + (1 - beta / 2) + (2 - beta / 2)
  assert float(losses.box_loss(pred, target, "smooth_l1")[0]) == pytest.approx(want, rel=1e-6)
  assert float(losses.box_loss(pred, target, "l1")[0]) == pytest.approx(3.05, rel=1e-6)
  with pytest.raises(ValueError, match="box loss"):
    losses.box_loss(pred, target, "l2")


def test_detection_loss_sums_over_positives():
  anchors = jnp.array([[0.0, 0, 10, 10], [0.0, 0, 10, 22], [40.0, 40, 50, 50]])
  boxes = jnp.array([[[0.0, 0, 10, 10]], [[0.0, 0, 0, 0]]])  # image 2 has no finding
  num_boxes = jnp.array([1, 0])
  logits = jnp.array([[1.0, 2.0, -1.0], [0.5, -0.5, 3.0]])
  deltas = jnp.full((2, 3, 4), 0.5)
  total, parts = losses.detection_loss(
    logits, deltas, anchors, boxes, num_boxes, box_loss_kind="l1"
  )

  def fl(x, t):
    return float(losses.focal_loss(jnp.array([x]), jnp.array([t]))[0])

  # Image 1: anchor 0 positive, anchor 1 ignored (IoU 0.45), anchor 2 negative;
  # image 2: all three negative. One positive in the batch.
  want_cls = fl(1.0, 1) + fl(-1.0, 0) + fl(0.5, 0) + fl(-0.5, 0) + fl(3.0, 0)
  assert int(parts["positives"]) == 1
  assert float(parts["class_loss"]) == pytest.approx(want_cls, rel=1e-5)
  assert float(parts["box_loss"]) == pytest.approx(4 * 0.5, rel=1e-5)  # target deltas 0
  assert float(total) == pytest.approx(want_cls + 2.0, rel=1e-5)


# ------------------------------------------------------------------------------------------
# NMS, decoding, score maps.


def _numpy_nms(boxes, scores, threshold):
  """The textbook greedy NMS (stable order among equal scores)."""
  order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > 0]
  keep = []
  while order:
    i, order = order[0], order[1:]
    keep.append(i)
    order = [
      j for j in order if metrics.box_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= threshold
    ]
  return sorted(keep)


@pytest.mark.parametrize("seed", range(4))
def test_nms_against_numpy_with_ties(seed):
  rng = np.random.default_rng(seed)
  boxes = _random_boxes(rng, 60, size=40.0)
  boxes[10:15] = boxes[0]  # identical boxes
  scores = np.round(rng.uniform(0, 1, 60), 1).astype(np.float32)  # many equal scores
  scores[10:15] = scores[0]
  scores[50:] = 0.0  # padding
  nms = jax.jit(postprocess.nms, static_argnums=2)
  for threshold in (0.3, 0.5, 0.7):
    keep = np.flatnonzero(np.asarray(nms(jnp.asarray(boxes), jnp.asarray(scores), threshold)))
    assert keep.tolist() == _numpy_nms(boxes, scores, threshold)


def test_nms_resolves_a_long_chain_of_suppressions():
  # Each box overlaps the next by IoU 7/13 > 0.5 and the one after by 4/16: greedy NMS keeps
  # every other box, which takes the whole chain to decide.
  boxes = np.array([[0, 3 * i, 10, 3 * i + 10] for i in range(21)], np.float32)
  scores = np.linspace(1.0, 0.5, 21).astype(np.float32)
  keep = np.flatnonzero(np.asarray(postprocess.nms(jnp.asarray(boxes), jnp.asarray(scores))))
  assert keep.tolist() == list(range(0, 21, 2)) == _numpy_nms(boxes, scores, 0.5)


def test_detect_equals_the_numpy_pipeline():
  rng = np.random.default_rng(3)
  anchors = boxes_lib.anchors(32, 32, sizes=(8, 16, 32, 64, 128))
  n = len(anchors)
  logits = rng.normal(-1, 2, (2, n)).astype(np.float32)
  logits[1] = -20.0  # nothing above the score threshold: no detections
  deltas = rng.normal(0, 0.3, (2, n, 4)).astype(np.float32)
  boxes, scores = postprocess.detect(
    jnp.asarray(logits),
    jnp.asarray(deltas),
    jnp.asarray(anchors),
    image_shape=(32, 32),
    pre_nms_top_k=50,
    max_detections=10,
    min_score=0.3,
  )
  assert boxes.shape == (2, 10, 4) and scores.shape == (2, 10)
  p = 1 / (1 + np.exp(-logits[0].astype(np.float64)))
  top = np.argsort(-p, kind="stable")[:50]
  top = top[p[top] > 0.3]
  decoded = np.clip(np.asarray(boxes_lib.decode(deltas[0][top], anchors[top])), 0, 32)
  kept = _numpy_nms(decoded, p[top], 0.5)
  kept = sorted(kept, key=lambda i: -p[top][i])[:10]
  count = len(kept)
  np.testing.assert_allclose(scores[0, :count], p[top][kept], rtol=1e-5)
  np.testing.assert_allclose(boxes[0, :count], decoded[kept], rtol=1e-5, atol=1e-4)
  assert np.all(np.asarray(scores[0, count:]) == 0)
  assert np.all(np.asarray(scores[1]) == 0) and np.all(np.asarray(boxes[1]) == 0)


def test_score_maps_by_hand():
  boxes = jnp.array(
    [
      [[1.0, 1, 3, 4], [2.0, 2, 5, 5], [0.0, 0, 0, 0]],
      [[0.0, 0, 0, 0], [0.0, 0, 0, 0], [0.0, 0, 0, 0]],
    ]
  )
  scores = jnp.array([[0.9, 0.5, 0.0], [0.0, 0.0, 0.0]])
  maps = np.asarray(postprocess.score_maps(boxes, scores, (6, 5)))
  raw = np.zeros((6, 5))
  raw[2:5, 2:5] = 0.5
  raw[1:3, 1:4] = 0.9  # pixel centres inside [1, 3) x [1, 4); the higher score wins
  np.testing.assert_allclose(maps[0], raw / (0.9 + 1e-6), rtol=1e-6)
  np.testing.assert_array_equal(maps[1], np.zeros((6, 5)))  # no detections: zeros


# ------------------------------------------------------------------------------------------
# Detection metrics.


def test_iou_thresholds_are_the_challenge_ones():
  assert metrics.IOU_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)


def test_mean_ap_by_hand():
  gt = [np.array([[0.0, 0, 10, 10]]), np.array([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])]
  # Image 1: a hit (IoU 1) at 0.9. Image 2: a miss at 0.8, a box of IoU 0.5 with the second
  # box at 0.7 (a hit up to threshold 0.5), a duplicate of the first box at 0.6.
  pred = [
    np.array([[0.0, 0, 10, 10]]),
    np.array([[40.0, 40, 50, 50], [20.0, 20, 30, 40], [0.0, 0, 10, 10]]),
  ]
  scores = [np.array([0.9]), np.array([0.8, 0.7, 0.6])]
  # Thresholds <= 0.5: hits H M H H -> recall 1/3, 1/3, 2/3, 1 at precision 1, 1/2, 2/3, 3/4.
  # Monotone precision: 1 up to recall 1/3, then 3/4. 101 points: 34 at 1 (0 .. 0.33), 67 at
  # 3/4. Above 0.5: H M M H -> recall 1/3 at 1, then 2/3 at 1/2; 34 at 1, 33 at 1/2, rest 0.
  low = (34 * 1 + 67 * 0.75) / 101
  high = (34 * 1 + 33 * 0.5) / 101
  want = (3 * low + 5 * high) / 8  # thresholds 0.40, 0.45, 0.50 vs 0.55 ... 0.75
  assert metrics.mean_ap(pred, scores, gt) == pytest.approx(want, rel=1e-12)
  assert math.isnan(metrics.mean_ap([np.zeros((0, 4))], [np.zeros(0)], [np.zeros((0, 4))]))
  assert metrics.mean_ap([np.zeros((0, 4))], [np.zeros(0)], gt[:1]) == 0.0


def test_mean_ap_against_pycocotools():
  coco_mod = pytest.importorskip("pycocotools.coco")
  cocoeval = pytest.importorskip("pycocotools.cocoeval")
  rng = np.random.default_rng(5)
  gt, pred, scores = [], [], []
  for i in range(12):
    g = _random_boxes(rng, int(rng.integers(0, 4)), size=60.0) if i % 4 else np.zeros((0, 4))
    jitter = g + rng.normal(0, 2.5, g.shape)
    noise = _random_boxes(rng, int(rng.integers(0, 4)), size=60.0)
    p = np.concatenate([jitter, noise]).astype(np.float64)
    gt.append(g)
    pred.append(p)
    scores.append(np.round(rng.uniform(0.05, 1, len(p)), 1))  # ties across images
  ours = metrics.mean_ap(pred, scores, gt)

  def xywh(b):
    return [float(b[1]), float(b[0]), float(b[3] - b[1]), float(b[2] - b[0])]

  annotations = [
    {
      "id": k + 1,
      "image_id": i,
      "category_id": 1,
      "bbox": xywh(b),
      "iscrowd": 0,
      "area": float((b[2] - b[0]) * (b[3] - b[1])),
    }
    for k, (i, b) in enumerate((i, b) for i, g in enumerate(gt) for b in g)
  ]
  coco = coco_mod.COCO()
  coco.dataset = {
    "images": [{"id": i} for i in range(len(gt))],
    "annotations": annotations,
    "categories": [{"id": 1}],
  }
  coco.createIndex()
  dets = coco.loadRes(
    [
      {"image_id": i, "category_id": 1, "bbox": xywh(b), "score": float(s)}
      for i, (p, sc) in enumerate(zip(pred, scores))
      for b, s in zip(p, sc)
    ]
  )
  evaluator = cocoeval.COCOeval(coco, dets, "bbox")
  evaluator.params.iouThrs = np.asarray(metrics.IOU_THRESHOLDS)
  evaluator.evaluate()
  evaluator.accumulate()
  precision = evaluator.eval["precision"][:, :, 0, 0, -1]  # all areas, 100 detections
  assert ours == pytest.approx(float(np.mean(precision)), abs=1e-9)


def test_rsna_score_by_hand():
  gt = [
    np.array([[0.0, 0, 10, 10]]),
    np.zeros((0, 4)),
    np.zeros((0, 4)),
    np.array([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]),
  ]
  pred = [
    np.array([[0.0, 0, 10, 12]]),  # IoU 10/12 = 0.833: TP at every threshold
    np.array([[0.0, 0, 5, 5]]),  # detections without boxes: 0
    np.zeros((0, 4)),  # neither: left out
    np.array([[20.0, 20, 30, 40], [0.0, 0, 10, 10]]),
  ]
  scores = [np.array([0.9]), np.array([0.4]), np.zeros(0), np.array([0.9, 0.8])]
  # Image 4: the exact box is a TP everywhere; the IoU-0.5 box a TP for t < 0.5 only
  # ("above the threshold"): 2 / 2 at 0.40, 0.45, then 1 / (1 + 1 + 1) at the other six.
  image4 = (2 * 1.0 + 6 * (1 / 3)) / 8
  assert metrics.rsna_score(pred, scores, gt) == pytest.approx((1 + 0 + image4) / 3)
