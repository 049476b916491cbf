"""Anchors, IoU, box encoding and anchor assignment of the RetinaNet detector (jit-able).

Boxes are (ymin, xmin, ymax, xmax) in continuous pixel coordinates, as the datasets store them
(pixel (r, c) covers [r, r+1) x [c, c+1)). Anchors are laid out level by level (P3 first),
then row-major over the level's grid, then the `len(SCALES) * len(RATIOS)` shapes of a location
(scale-major), which is the order of `RetinaNet`'s flattened head outputs.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

LEVELS = (3, 4, 5, 6, 7)  # P3-P7: strides 8 to 128
SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))  # Lin et al. 2017: three octave scales
RATIOS = (0.5, 1.0, 2.0)  # height / width
NUM_ANCHORS = len(SCALES) * len(RATIOS)
PAPER_ANCHOR_SIZES = (32, 64, 128, 256, 512)  # base size of each level's anchors
# IoU >= POSITIVE_IOU: foreground; < NEGATIVE_IOU: background; in between: ignored.
POSITIVE_IOU, NEGATIVE_IOU = 0.5, 0.4
# Box deltas are clipped before exp() so a wild prediction cannot overflow.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def level_shapes(height: int, width: int) -> tuple[tuple[int, int], ...]:
  """Grid (h, w) of each level P3-P7 for an input of height x width: each stride-2 layer of
  the backbone and of P6/P7 gives ceil(n / 2)."""
  shapes, h, w = [], height, width
  for level in range(1, LEVELS[-1] + 1):
    h, w = -(-h // 2), -(-w // 2)
    if level >= LEVELS[0]:
      shapes.append((h, w))
  return tuple(shapes)


def anchors(height: int, width: int, sizes: tuple[float, ...] = PAPER_ANCHOR_SIZES) -> np.ndarray:
  """All anchors of an input, float32 [N, 4], centred on the cells of each level's grid."""
  if len(sizes) != len(LEVELS):
    raise ValueError(f"anchor sizes need one value per level {LEVELS}; got {sizes}.")
  out = []
  for level, size, (h, w) in zip(LEVELS, sizes, level_shapes(height, width)):
    stride = 2.0**level
    shapes = np.array(
      [(size * s * math.sqrt(r), size * s / math.sqrt(r)) for s in SCALES for r in RATIOS]
    )  # [A, 2] (h, w)
    cy, cx = np.meshgrid(
      (np.arange(h) + 0.5) * stride, (np.arange(w) + 0.5) * stride, indexing="ij"
    )
    centres = np.stack([cy, cx], -1).reshape(-1, 1, 2)  # [h*w, 1, 2]
    half = shapes[None] / 2
    out.append(np.concatenate([centres - half, centres + half], -1).reshape(-1, 4))
  return np.concatenate(out).astype(np.float32)


def iou(a: Array, b: Array) -> Array:
  """IoU of every box of a [..., N, 4] with every box of b [..., M, 4] -> [..., N, M]."""
  a, b = a[..., :, None, :], b[..., None, :, :]
  inter_h = jnp.clip(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0)
  inter_w = jnp.clip(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0)
  inter = inter_h * inter_w

  def area(x):
    return (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])

  union = area(a) + area(b) - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def encode(boxes: Array, anchors_: Array) -> Array:
  """Boxes relative to anchors: (dy, dx, log dh, log dw), centres in units of the anchor size."""
  ah, aw = anchors_[..., 2] - anchors_[..., 0], anchors_[..., 3] - anchors_[..., 1]
  bh, bw = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
  dy = (boxes[..., 0] + bh / 2 - anchors_[..., 0] - ah / 2) / ah
  dx = (boxes[..., 1] + bw / 2 - anchors_[..., 1] - aw / 2) / aw
  # Degenerate (zero-size) boxes only occur as padding; keep their logs finite.
  return jnp.stack(
    [dy, dx, jnp.log(jnp.maximum(bh, 1e-6) / ah), jnp.log(jnp.maximum(bw, 1e-6) / aw)], -1
  )


def decode(deltas: Array, anchors_: Array) -> Array:
  """The inverse of `encode`."""
  ah, aw = anchors_[..., 2] - anchors_[..., 0], anchors_[..., 3] - anchors_[..., 1]
  cy = anchors_[..., 0] + ah / 2 + deltas[..., 0] * ah
  cx = anchors_[..., 1] + aw / 2 + deltas[..., 1] * aw
  h = ah * jnp.exp(jnp.minimum(deltas[..., 2], _MAX_LOG_SCALE))
  w = aw * jnp.exp(jnp.minimum(deltas[..., 3], _MAX_LOG_SCALE))
  return jnp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)


def assign(
  anchors_: Array,
  boxes: Array,
  num_boxes: Array,
  *,
  positive_iou: float = POSITIVE_IOU,
  negative_iou: float = NEGATIVE_IOU,
  low_quality_matches: bool = True,
) -> tuple[Array, Array]:
  """Training targets of one image's anchors.

  Args:
    anchors_: [N, 4].
    boxes: [M, 4] ground-truth boxes, the first `num_boxes` real, the rest padding.
    num_boxes: scalar int; 0 (an image without finding) makes every anchor a negative.
    positive_iou, negative_iou: an anchor whose best IoU is >= positive_iou is positive, one
      below negative_iou negative, and one in between ignored (no loss).
    low_quality_matches: also make positive, for each box, the anchors of its highest IoU (ties
      included), so that boxes no anchor covers well still train (Detectron's RetinaNet).

  Returns:
    labels int32 [N] (1 positive, 0 negative, -1 ignored) and the matched box of each anchor
    [N, 4] (meaningful where positive).
  """
  real = jnp.arange(boxes.shape[0]) < num_boxes
  overlaps = jnp.where(real[None, :], iou(anchors_, boxes), -1.0)  # [N, M]
  best = jnp.max(overlaps, axis=1)
  match = jnp.argmax(overlaps, axis=1)
  labels = jnp.where(best >= positive_iou, 1, jnp.where(best < negative_iou, 0, -1))
  if low_quality_matches:
    best_of_box = jnp.max(overlaps, axis=0)  # [M]
    is_best = real[None, :] & (best_of_box[None, :] > 0) & (overlaps == best_of_box[None, :])
    # Such an anchor keeps its own best box as the match (Detectron, torchvision).
    labels = jnp.where(is_best.any(axis=1), 1, labels)
  labels = jnp.where(num_boxes > 0, labels, 0).astype(jnp.int32)
  return labels, boxes[match]
