"""Training tasks: what differs between the models the trainer fits.

A `Task` names the batch fields its step needs, its loss, its per-example validation outputs
and their host-side summary, and the validation metric that selects the best checkpoint. A new
kind of model (e.g. a detector) is one more `Task` here, passed to `loop.train`.
"""

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def roc_auc_score(labels: Any, scores: Any) -> float:
  """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; ties count one half.

  Args:
    labels: [N] in {0, 1} (or bool).
    scores: [N] real scores, higher meaning more likely positive.

  Returns:
    The AUC, or NaN when only one class is present (undefined).
  """
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if labels.shape != scores.shape:
    raise ValueError(f"labels and scores differ in size: {labels.shape} vs {scores.shape}.")
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("labels must be 0 or 1.")
  if np.isnan(scores).any():
    raise ValueError("scores contain NaN.")
  positive = labels == 1
  n_pos = int(positive.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  # 1-based average rank of each distinct value: the middle of its run in sorted order.
  ends = np.cumsum(counts)
  average_rank = ends - (counts - 1) / 2.0
  rank_sum = average_rank[inverse][positive].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclasses.dataclass(frozen=True)
class Task:
  """Loss, per-example validation outputs and the host-side validation summary of one task."""

  batch_keys: tuple[str, ...]  # batch fields the step needs
  loss: Callable[[jax.Array, dict], jax.Array]  # (model output, batch) -> mean loss
  eval_outputs: Callable[[jax.Array, dict], dict]  # -> per-example arrays [B, ...]
  summarize: Callable[[dict], dict]  # host arrays of valid examples -> metrics
  select: str  # the metric maximized for "best"
  max_boxes: int = 0  # batches carry padded boxes when > 0


def _classifier_loss(logits, batch):
  # Dense(K) + softmax + cross-entropy: for K=2, the paper's Dense(2)+softmax+binary CE.
  return optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), batch["label"]
  ).mean()


def _classifier_outputs(logits, batch):
  logits = logits.astype(jnp.float32)
  return {
    "score": jax.nn.softmax(logits)[:, 1],
    "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
    "label": batch["label"],
  }


def _classifier_summary(out):
  return {
    "val_auc": roc_auc_score(out["label"], out["score"]),
    "val_loss": float(np.mean(out["loss"])),
    "val_accuracy": float(np.mean((out["score"] > 0.5) == (out["label"] == 1))),
  }


def _segmenter_loss(logits, batch):
  return optax.sigmoid_binary_cross_entropy(
    logits.astype(jnp.float32), batch["mask"].astype(jnp.float32)
  ).mean()


def _segmenter_outputs(logits, batch):
  logits = logits.astype(jnp.float32)
  mask = batch["mask"].astype(jnp.float32)
  predicted = (logits > 0).astype(jnp.float32)  # probability > 0.5
  return {
    "intersection": jnp.sum(predicted * mask, axis=(1, 2)),
    "predicted": jnp.sum(predicted, axis=(1, 2)),
    "true": jnp.sum(mask, axis=(1, 2)),
    "loss": optax.sigmoid_binary_cross_entropy(logits, mask).mean(axis=(1, 2)),
  }


def _segmenter_summary(out):
  # Dice at threshold 0.5, averaged over the images that have a finding (empty masks have no
  # Dice worth averaging); how many were left out is recorded.
  has_finding = out["true"] > 0
  dice = 2 * out["intersection"][has_finding] / (out["predicted"] + out["true"])[has_finding]
  return {
    "val_dice": float(np.mean(dice)) if dice.size else float("nan"),
    "val_dice_excluded_empty": int((~has_finding).sum()),
    "val_loss": float(np.mean(out["loss"])),
  }


CLASSIFIER = Task(
  ("image", "label"), _classifier_loss, _classifier_outputs, _classifier_summary, "val_auc"
)
SEGMENTER = Task(
  ("image", "mask"), _segmenter_loss, _segmenter_outputs, _segmenter_summary, "val_dice"
)


@functools.lru_cache(maxsize=8)
def detector_task(
  anchors_key: tuple, image_shape: tuple[int, int], max_boxes: int, box_loss: str
) -> Task:
  """The RetinaNet task for one anchor set and image size (cached: one object per setting, so
  the jitted steps are shared by replicates)."""
  # pylint: disable=g-import-not-at-top
  from saliency_jax.detection import boxes as boxes_lib
  from saliency_jax.detection import losses
  from saliency_jax.detection import metrics
  from saliency_jax.detection import postprocess

  if box_loss not in losses.BOX_LOSSES:
    raise ValueError(f"Unknown box loss {box_loss!r}; expected one of {losses.BOX_LOSSES}.")
  anchors = boxes_lib.anchors(*image_shape, anchors_key)

  def loss(out, batch):
    logits, deltas = out
    return losses.detection_loss(
      logits,
      deltas,
      jnp.asarray(anchors),
      batch["boxes"],
      batch["num_boxes"],
      box_loss_kind=box_loss,
    )[0]

  def outputs(out, batch):
    logits, deltas = out
    per_image = jax.vmap(
      lambda lg, d, b, n: loss((lg[None], d[None]), {"boxes": b[None], "num_boxes": n[None]})
    )
    det_boxes, det_scores = postprocess.detect(
      logits, deltas, jnp.asarray(anchors), image_shape=tuple(image_shape)
    )
    return {
      "det_boxes": det_boxes,
      "det_scores": det_scores,
      "boxes": batch["boxes"],
      "num_boxes": batch["num_boxes"],
      "loss": per_image(logits, deltas, batch["boxes"], batch["num_boxes"]),
    }

  def summary(out):
    preds = [b[s > 0] for b, s in zip(out["det_boxes"], out["det_scores"])]
    scores = [s[s > 0] for s in out["det_scores"]]
    truth = [b[:n] for b, n in zip(out["boxes"], out["num_boxes"])]
    confident = [s * (s >= RSNA_SCORE_THRESHOLD) for s in scores]
    return {
      "val_map": metrics.mean_ap(preds, scores, truth),
      "val_rsna_score": metrics.rsna_score(preds, confident, truth),
      "val_loss": float(np.mean(out["loss"])),
    }

  return Task(
    ("image", "boxes", "num_boxes"), loss, outputs, summary, "val_map", max_boxes=max_boxes
  )


# Detections scoring at least this count for the RSNA challenge score (which, unlike mAP,
# punishes every false positive); mAP uses all detections.
RSNA_SCORE_THRESHOLD = 0.5
