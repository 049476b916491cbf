"""From RetinaNet outputs to detections (batched, jit-able) and per-pixel score maps.

  boxes, scores = detect(class_logits, box_deltas, anchors, image_shape=(H, W))
  maps = score_maps(boxes, scores, (H, W))        # [B, H, W] in [0, 1]

Detections are a fixed number per image (`max_detections`), padded with score 0 and empty
boxes, so every shape is static.
"""

import functools

import jax
import jax.numpy as jnp

from saliency_jax.detection import boxes as boxes_lib

Array = jax.Array

PRE_NMS_TOP_K = 1000  # Lin et al. 2017: the top 1000 anchors
NMS_IOU = 0.5
MAX_DETECTIONS = 100
MIN_SCORE = 0.05  # Lin et al. 2017's detection threshold


def nms(boxes: Array, scores: Array, iou_threshold: float = NMS_IOU) -> Array:
  """Greedy non-maximum suppression of one image's boxes [K, 4] -> keep mask [K].

  Boxes are visited by decreasing score (equal scores: lower index first); a box is dropped
  when its IoU with a kept, earlier box is above `iou_threshold`. Boxes with score <= 0 are
  never kept (padding).
  """
  order = jnp.argsort(-scores, stable=True)
  boxes, scores = boxes[order], scores[order]
  overlaps = boxes_lib.iou(boxes, boxes) > iou_threshold
  positions = jnp.arange(len(scores))

  def visit(i, keep):
    suppressed = jnp.any(keep & overlaps[i] & (positions < i))
    return keep.at[i].set(keep[i] & ~suppressed)

  keep = jax.lax.fori_loop(0, len(scores), visit, scores > 0)
  return jnp.zeros_like(keep).at[order].set(keep)


@functools.partial(
  jax.jit,
  static_argnames=("image_shape", "pre_nms_top_k", "iou_threshold", "max_detections", "min_score"),
)
def detect(
  class_logits: Array,
  box_deltas: Array,
  anchors: Array,
  *,
  image_shape: tuple[int, int],
  pre_nms_top_k: int = PRE_NMS_TOP_K,
  iou_threshold: float = NMS_IOU,
  max_detections: int = MAX_DETECTIONS,
  min_score: float = MIN_SCORE,
) -> tuple[Array, Array]:
  """Detections of a batch: boxes [B, D, 4] clipped to the image, scores [B, D] (0: none).

  The `pre_nms_top_k` best anchors of an image scoring above `min_score` are decoded and
  suppressed (`nms`); the `max_detections` best survivors are returned by decreasing score.
  """

  def one(logits, deltas):
    k = min(pre_nms_top_k, logits.shape[0])
    scores, index = jax.lax.top_k(jax.nn.sigmoid(logits.astype(jnp.float32)), k)
    scores = jnp.where(scores > min_score, scores, 0.0)
    decoded = boxes_lib.decode(deltas[index].astype(jnp.float32), anchors[index])
    limits = jnp.array([image_shape[0], image_shape[1]] * 2, jnp.float32)
    decoded = jnp.clip(decoded, 0.0, limits)
    scores = jnp.where(nms(decoded, scores, iou_threshold), scores, 0.0)
    d = min(max_detections, k)
    best, chosen = jax.lax.top_k(scores, d)
    out_boxes = jnp.where(best[:, None] > 0, decoded[chosen], 0.0)
    pad = max_detections - d
    return jnp.pad(out_boxes, ((0, pad), (0, 0))), jnp.pad(best, (0, pad))

  return jax.vmap(one)(class_logits, box_deltas)


def score_maps(boxes: Array, scores: Array, image_shape: tuple[int, int]) -> Array:
  """Per-pixel maps [B, H, W] of detections: the highest score of the boxes covering a pixel's
  centre (0 where none does), min-maxed per image as the authors' RetinaNet maps
  ((m - min) / (max - min + 1e-6)); an image without detections gives zeros.

  The detections are rasterized at the image size itself, so the authors' cubic resize to
  the image size is the identity here.
  """
  h, w = image_shape
  ys = jnp.arange(h, dtype=jnp.float32) + 0.5
  xs = jnp.arange(w, dtype=jnp.float32) + 0.5

  def one(b, s):
    inside_y = (ys[None, :] >= b[:, 0:1]) & (ys[None, :] < b[:, 2:3])  # [D, H]
    inside_x = (xs[None, :] >= b[:, 1:2]) & (xs[None, :] < b[:, 3:4])  # [D, W]
    covered = inside_y[:, :, None] & inside_x[:, None, :]
    m = jnp.max(jnp.where(covered, s[:, None, None], 0.0), axis=0)
    return (m - m.min()) / (m.max() - m.min() + 1e-6)

  return jax.vmap(one)(boxes.astype(jnp.float32), scores.astype(jnp.float32))
