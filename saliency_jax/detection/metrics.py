"""Detection metrics at the RSNA Pneumonia challenge's IoU thresholds 0.40, 0.45, ..., 0.75.

  mean_ap(pred_boxes, pred_scores, gt_boxes)       # COCO-style AP averaged over the thresholds
  rsna_score(pred_boxes, pred_scores, gt_boxes)    # the challenge's own per-image score

Each argument is a list with one NumPy array per image: boxes [n, 4] (ymin, xmin, ymax, xmax),
scores [n]. Padding detections (score <= 0) are dropped.
"""

import numpy as np

IOU_THRESHOLDS = tuple(np.round(np.arange(0.40, 0.751, 0.05), 2))
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's 101-point interpolation


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU [n, m] of boxes a [n, 4] and b [m, 4] (float64)."""
  a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
  h = np.clip(
    np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
  )
  w = np.clip(
    np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
  )

  def area(x):
    return (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])

  union = area(a)[:, None] + area(b)[None, :] - h * w
  return np.where(union > 0, h * w / np.where(union > 0, union, 1), 0.0)


def _sorted_detections(boxes, scores):
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if len(boxes) != len(scores):
    raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores.")
  real = scores > 0
  boxes, scores = boxes[real], scores[real]
  order = np.argsort(-scores, kind="stable")
  return boxes[order], scores[order]


def _check_lengths(*lists):
  if len({len(x) for x in lists}) != 1:
    raise ValueError(f"One entry per image expected; got lengths {[len(x) for x in lists]}.")


def mean_ap(pred_boxes, pred_scores, gt_boxes, thresholds=IOU_THRESHOLDS) -> float:
  """COCO-style average precision of one class, averaged over the IoU thresholds.

  At each threshold the detections of all images, by decreasing score, are matched greedily
  to the unmatched ground-truth box of highest IoU (>= threshold) in their image; AP is the
  mean of the monotone precision at 101 recall points (pycocotools' `stats[0]` with these
  thresholds). NaN when there is no ground-truth box at all.
  """
  _check_lengths(pred_boxes, pred_scores, gt_boxes)
  dets = [_sorted_detections(b, s) for b, s in zip(pred_boxes, pred_scores)]
  gts = [np.asarray(g, np.float64).reshape(-1, 4) for g in gt_boxes]
  num_gt = sum(len(g) for g in gts)
  if num_gt == 0:
    return float("nan")
  scores = np.concatenate([s for _, s in dets]) if dets else np.zeros(0)
  order = np.argsort(-scores, kind="stable")  # image order among equal scores, as COCO
  aps = []
  for t in thresholds:
    hits = []
    for (boxes, _), g in zip(dets, gts):
      overlaps = box_iou(boxes, g)
      taken = np.zeros(len(g), bool)
      for row in overlaps:
        candidates = np.where(taken, -1.0, row)
        best = int(np.argmax(candidates)) if len(g) else -1
        hit = best >= 0 and candidates[best] >= t
        if hit:
          taken[best] = True
        hits.append(hit)
    hits = np.asarray(hits, bool)[order]
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, _RECALL_POINTS, side="left")
    reached = at < len(precision)  # recall points never reached count as precision 0
    interpolated = np.zeros(len(_RECALL_POINTS))
    interpolated[reached] = precision[at[reached]]
    aps.append(interpolated.mean())
  return float(np.mean(aps))


def rsna_score(pred_boxes, pred_scores, gt_boxes, thresholds=IOU_THRESHOLDS) -> float:
  """The RSNA Pneumonia Detection Challenge's metric.

  Per image and threshold t: detections by decreasing score each take the unmatched
  ground-truth box of highest IoU when that IoU exceeds t; TP / (TP + FP + FN). The image's
  score is the mean over thresholds; an image with neither boxes nor detections is left out,
  one with detections but no boxes scores 0. NaN when every image is left out.
  """
  _check_lengths(pred_boxes, pred_scores, gt_boxes)
  per_image = []
  for boxes, scores, g in zip(pred_boxes, pred_scores, gt_boxes):
    boxes, _ = _sorted_detections(boxes, scores)
    g = np.asarray(g, np.float64).reshape(-1, 4)
    if not len(boxes) and not len(g):
      continue
    overlaps = box_iou(boxes, g)
    values = []
    for t in thresholds:
      taken = np.zeros(len(g), bool)
      tp = 0
      for row in overlaps:
        candidates = np.where(taken, -1.0, row)
        if len(g) and candidates.max() > t:
          taken[int(np.argmax(candidates))] = True
          tp += 1
      values.append(tp / (len(boxes) + len(g) - tp))
    per_image.append(np.mean(values))
  return float(np.mean(per_image)) if per_image else float("nan")
