"""The sanity checks' timing for launch.benchmark, each against the raw model work it needs.

sMPRT (the method on noisy copies), the random-logit map (the method for another class) and the
input-invariance map (the method through the model with its first layer adjusted) against raw
gradients; eMPRT's entropies against the raw gradients of the two maps they compare; deletion
and insertion (blur baseline), ROAD (2 fractions, both orders) and SIC/AIC (4 thresholds)
against the same number of raw batched forward passes, timed alternately with them.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from launch.timing import best_times
from launch.timing import block
from saliency_jax import attributions


class RawForward:
  """Batched jitted softmax calls of the model on `n` images (the faithfulness checks' model
  work), in calls of at most 256 images as the study's probabilities are computed."""

  def __init__(self, fns, images, n):
    probs = jax.jit(lambda x: jax.nn.softmax(fns.logits_fn(x), -1))
    stack = jnp.asarray(np.resize(images, (n,) + images.shape[1:]))
    self.run = lambda: [block(probs(stack[i : i + 256])) for i in range(0, n, 256)]
    self.run()


class Workload(NamedTuple):
  """The benchmark's model and images: host images, and device copies of images and targets."""

  module: Any
  variables: Any
  fns: Any
  images: np.ndarray
  images_dev: jax.Array
  targets_dev: jax.Array


def sanity_records(
  work: Workload,
  raw,
  record,
  *,
  checks,
  method_name,
  settings,
  grads,
  smooth_samples,
  faithfulness_steps,
  repeats,
):
  """Each sanity check in `checks` timed against the raw model work it needs.

  `method_name` with `settings` is the method the map-making checks wrap (`grads` model
  gradients per map); `raw` times raw gradients (`run`, `grads_per_call`); `record(r, row)`
  keeps a record and prints its row.
  """
  from saliency_jax.sanity import complexity  # pylint: disable=g-import-not-at-top
  from saliency_jax.sanity import faithfulness  # pylint: disable=g-import-not-at-top
  from saliency_jax.sanity import invariance  # pylint: disable=g-import-not-at-top
  from saliency_jax.sanity import logits  # pylint: disable=g-import-not-at-top
  from saliency_jax.sanity import smoothing  # pylint: disable=g-import-not-at-top

  module, variables, fns, images, images_dev, targets_dev = work
  b = len(images)
  name, s = method_name, settings
  method = attributions.METHODS[name]
  key = jax.random.key(0)
  jobs = {}
  if "smooth_mprt" in checks:
    smoothed = smoothing.smoothed(method)
    n = smooth_samples
    ss = {**s, "smooth_samples": n, "smooth_noise": 0.1}
    jobs[f"SMOOTH_MPRT_{name}"] = (
      lambda: block(smoothed.compute(fns, images_dev, targets_dev, key=key, settings=ss)),
      b * n * grads,
    )
  if "random_logit" in checks:
    other = jax.device_put(logits.other_classes(np.asarray(targets_dev), 2, seed=0))
    jobs[f"RANDOM_LOGIT_{name}"] = (
      lambda: block(method.compute(fns, images_dev, other, key=key, settings=s)),
      b * grads,
    )
  if "input_invariance" in checks:
    shifted = invariance.shifted_model_functions(module, variables, 1.0)
    shifted_images = images_dev + 1.0
    jobs[f"INPUT_INVARIANCE_{name}"] = (
      lambda: block(method.compute(shifted, shifted_images, targets_dev, key=key, settings=s)),
      b * grads,
    )
  for label, (fn, count) in jobs.items():
    fn()
    (t, t_raw), _ = best_times([fn, raw.run], repeats)
    overhead = t / (count * t_raw / raw.grads_per_call)
    record(
      {
        "method": label,
        "ours_maps_per_s": b / t,
        "pair_maps_per_s": None,
        "ratio_vs_pair": None,
        "overhead_vs_raw_gradients": overhead,
      },
      f"{label:18s} {b / t:12.2f} {'-':>12s} {'-':>10s} {overhead:22.2f}",
    )
  maps = np.asarray(method.compute(fns, images_dev, targets_dev, key=key, settings=s))
  if "efficient_mprt" in checks:

    def entropies():
      return complexity.histogram_entropy(maps, 100), complexity.histogram_entropy(maps, 100)

    (t, t_raw), _ = best_times([entropies, raw.run], repeats)
    overhead = t / (2 * b * grads * t_raw / raw.grads_per_call)
    record(
      {
        "method": "EFFICIENT_MPRT",
        "ours_maps_per_s": b / t,
        "pair_maps_per_s": None,
        "ratio_vs_pair": None,
        "overhead_vs_raw_gradients": overhead,
      },
      f"{'EFFICIENT_MPRT':18s} {b / t:12.2f} {'-':>12s} {'-':>10s} {overhead:22.2f}"
      "   (extra over the two maps' gradients)",
    )
  if "faithfulness" in checks:
    probs = jax.jit(lambda x: jax.nn.softmax(fns.logits_fn(x), -1))

    def probs_fn(x):
      return np.concatenate([np.asarray(probs(x[i : i + 256])) for i in range(0, len(x), 256)])

    targets = np.asarray(targets_dev)
    steps = faithfulness_steps
    uint8 = np.clip((images[..., 0] + 1) * 127.5, 0, 255).astype(np.uint8)
    cases = {
      "DELETION_INSERTION": (
        lambda: [
          faithfulness.perturbation_curves(
            images,
            maps,
            targets,
            probs_fn,
            steps=steps,
            baseline="blur",
            blur_sigma=5.0,
            insertion=ins,
          )
          for ins in (False, True)
        ],
        2 * (steps + 1) * b,
      ),
      "ROAD": (
        lambda: [
          faithfulness.road_curves(
            images,
            maps,
            targets,
            probs_fn,
            percentages=(0.3, 0.7),
            most_relevant_first=o,
            noise=0.01,
            seed=0,
          )
          for o in (True, False)
        ],
        4 * b,
      ),
      "SIC_AIC": (
        lambda: [
          faithfulness.pic_auc(
            uint8[i],
            maps[i],
            faithfulness.random_mask(uint8[i].shape, 0.01, i),
            lambda x: probs_fn(np.asarray(x, np.float32)[..., None] / 127.5 - 1)[:, 0],
            (0.05, 0.1, 0.3, 0.5),
            min_pred_value=0.0,
          )
          for i in range(b)
        ],
        6 * b,
      ),
    }
    for label, (fn, count) in cases.items():
      forward = RawForward(fns, images, count)
      fn()
      (t, t_raw), _ = best_times([fn, forward.run], repeats)
      record(
        {
          "method": label,
          "ours_maps_per_s": b / t,
          "pair_maps_per_s": None,
          "ratio_vs_pair": None,
          "overhead_vs_raw_gradients": None,
          "overhead_vs_raw_forward": t / t_raw,
          "forward_passes": count,
        },
        f"{label:18s} {b / t:12.2f} {'-':>12s} {'-':>10s} {t / t_raw:22.2f}"
        f"   (vs {count} raw forward passes)",
      )
