"""RetinaNet's losses: sigmoid focal loss on every non-ignored anchor, and a smooth-L1 or L1
loss on the box deltas of the positive anchors; both summed and divided by the number of
positive anchors of the batch (at least 1), as Lin et al. 2017."""

import jax
import jax.numpy as jnp

from saliency_jax.detection import boxes as boxes_lib

Array = jax.Array

BOX_LOSSES = ("smooth_l1", "l1")
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
SMOOTH_L1_BETA = 1.0 / 9  # Detectron's RetinaNet


def focal_loss(
  logits: Array, targets: Array, *, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA
) -> Array:
  """Elementwise -alpha_t (1 - p_t)^gamma log(p_t), p = sigmoid(logits), targets in {0, 1}."""
  logits = logits.astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  p_t = jnp.where(targets == 1, p, 1 - p)
  alpha_t = jnp.where(targets == 1, alpha, 1 - alpha)
  # -log(p_t) from the logits, stable for large |logits|.
  ce = jnp.where(targets == 1, jax.nn.softplus(-logits), jax.nn.softplus(logits))
  return alpha_t * (1 - p_t) ** gamma * ce


def box_loss(predicted: Array, target: Array, kind: str = "smooth_l1") -> Array:
  """Elementwise smooth-L1 (beta 1/9) or L1 loss, summed over the 4 coordinates -> [...]."""
  diff = jnp.abs(predicted.astype(jnp.float32) - target)
  if kind == "l1":
    loss = diff
  elif kind == "smooth_l1":
    loss = jnp.where(
      diff < SMOOTH_L1_BETA, 0.5 * diff**2 / SMOOTH_L1_BETA, diff - 0.5 * SMOOTH_L1_BETA
    )
  else:
    raise ValueError(f"Unknown box loss {kind!r}; expected one of {BOX_LOSSES}.")
  return loss.sum(-1)


def detection_loss(
  class_logits: Array,
  box_deltas: Array,
  anchors: Array,
  boxes: Array,
  num_boxes: Array,
  *,
  box_loss_kind: str = "smooth_l1",
) -> tuple[Array, dict]:
  """The batch's RetinaNet loss.

  Args:
    class_logits: [B, N] logits of the one foreground class per anchor.
    box_deltas: [B, N, 4].
    anchors: [N, 4].
    boxes: [B, M, 4] ground truth, padded; num_boxes: [B] real boxes per image.

  Returns:
    (classification + box loss, {"class_loss", "box_loss", "positives"}).
  """
  labels, matched = jax.vmap(lambda b, n: boxes_lib.assign(anchors, b, n))(boxes, num_boxes)
  positive = labels == 1
  normalizer = jnp.maximum(positive.sum(), 1).astype(jnp.float32)
  cls = jnp.where(labels >= 0, focal_loss(class_logits, positive.astype(jnp.int32)), 0.0)
  targets = boxes_lib.encode(matched, anchors[None])
  reg = jnp.where(positive, box_loss(box_deltas, targets, box_loss_kind), 0.0)
  class_loss, reg_loss = cls.sum() / normalizer, reg.sum() / normalizer
  return class_loss + reg_loss, {
    "class_loss": class_loss,
    "box_loss": reg_loss,
    "positives": positive.sum(),
  }
