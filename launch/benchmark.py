r"""Times every saliency method against PAIR saliency.core and against raw model gradients.

  python -m launch.benchmark --model=small_vgg --image_size=64 --channels=1 --batch=8 \
      --json=/tmp/benchmark.json

For each method, on the same jitted model and the same images, in one run:
  * ours: `METHODS[name].compute` (the study's [0,1] map) on device-resident images, maps/s
    after compilation, with gradient chunks of the raw baseline's batch size (unless
    `--max_grads_in_flight`);
  * PAIR: `saliency.core` driven as a PAIR user would (a `call_model_function` doing jitted
    JAX gradients per batch; IG-type methods with batch_size = their step count), followed by
    `VisualizeImageGrayscale`, maps/s on `--pair_images` images;
  * raw gradients: the same number of batched `jax.grad` calls of the model, at the best batch
    size among `--raw_batch_sizes`, timed alternately with ours (so that the shared CPU's
    drifts affect both), and `overhead_vs_raw_gradients` = ours / raw time.
The sanity checks (`--sanity`) are timed against the raw model work they need, alternately with
it: sMPRT (`--sanity_method` on `--smooth_samples` noisy copies), the random-logit map (the
method for another class) and the input-invariance map (the method through the model with its
first layer adjusted) against raw gradients; eMPRT's entropies against the raw gradients of the
two maps they compare; deletion and insertion (blur baseline) against the same number of raw
batched forward passes, ROAD (2 fractions, both orders) and SIC/AIC (4 thresholds) likewise.
XRAI is also timed in parts: region selection alone (ours, the batched JAX program, vs our
NumPy selection and PAIR "full" on the same attributions and segments, identical output
asserted; `--selection_images` per call), at the benchmark image size and at `--selection_size`
(the paper's 320x320, about 500 masks), its IG part alone, and whole XRAI with PAIR's default
segmentation.

Method settings are the paper's, overridden by `--settings` (JSON: {"SG": {"samples": 10}}),
identically for ours and PAIR. The load average is printed: on a shared CPU the ratios, measured
in the same run, mean more than the absolute numbers. `--json` writes a list of records with keys
method, ours_maps_per_s, pair_maps_per_s, ratio_vs_pair, overhead_vs_raw_gradients (rewritten
after every method, so that a run cut short keeps what it measured); `--pair_images=0` skips
PAIR (its occlusion makes one model call per window position).
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from launch import benchmark_sanity
from launch import pair_maps
from launch.timing import best_of as _best_of
from launch.timing import best_times as _best_times
from launch.timing import block as _block
from saliency_jax import attributions
from saliency_jax import models
from saliency_jax.attributions import pair_interop
from saliency_jax.attributions import xrai_method
from saliency_jax.attributions import xrai_segments
from saliency_jax.attributions import xrai_selection
from saliency_jax.attributions import xrai_selection_jax

_MODEL = flags.DEFINE_string("model", "small_vgg", "Model name (saliency_jax.models).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Image side.")
_CHANNELS = flags.DEFINE_integer("channels", 1, "Image channels.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per call of ours.")
_PAIR_IMAGES = flags.DEFINE_integer(
  "pair_images", 2, "Images timed with PAIR (per image; 0: skip PAIR)."
)
_METHODS = flags.DEFINE_list(
  "methods",
  ["GRAD", "SG", "IG", "SIG", "GCAM", "XRAI", "GBP", "GGCAM", "BLUR_IG", "GUIDED_IG", "OCCLUSION"],
  "Methods to time.",
)
_SETTINGS = flags.DEFINE_string(
  "settings",
  json.dumps({"XRAI": {"steps": 20}, "BLUR_IG": {"steps": 20}, "GUIDED_IG": {"steps": 20}}),
  "JSON overrides of the methods' default settings, applied to ours and PAIR.",
)
_MAX_GRADS = flags.DEFINE_integer(
  "max_grads_in_flight",
  0,
  "Our gradient chunk size (0: the raw baseline's fastest batch size; the CPU plan caps it "
  "at CPU_GRADS_PER_CALL).",
)
_RAW_BATCH_SIZES = flags.DEFINE_list(
  "raw_batch_sizes",
  ["1", "8", "16", "32", "64"],
  "Batch sizes tried for the raw-gradient baseline.",
)
_SELECTION_SIZE = flags.DEFINE_integer(
  "selection_size", 320, "Also time XRAI selection on an image of this side (0: skip)."
)
_SELECTION_IMAGES = flags.DEFINE_integer(
  "selection_images", 4, "Images per call of the XRAI selection timing."
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Warm repetitions; the best is reported.")
_JSON = flags.DEFINE_string("json", None, "Write the records here.")
_SANITY = flags.DEFINE_list(
  "sanity",
  ["smooth_mprt", "random_logit", "input_invariance", "efficient_mprt", "faithfulness"],
  "Sanity checks to time (saliency_jax.sanity); empty: none.",
)
_SANITY_METHOD = flags.DEFINE_string(
  "sanity_method", "GRAD", "The method the map-making checks wrap."
)
_SMOOTH_SAMPLES = flags.DEFINE_integer("smooth_samples", 8, "sMPRT's noisy copies per map.")
_FAITHFULNESS_STEPS = flags.DEFINE_integer("faithfulness_steps", 16, "Deletion / insertion steps.")


def _fmt(value, width, digits):
  return f"{'-':>{width}s}" if value is None else f"{value:{width}.{digits}f}"


def _gradients_per_map(name, s):
  """Model gradients one map needs (None: not gradient-based)."""
  return {
    "GRAD": 1,
    "GBP": 1,
    "GCAM": 1,
    "GGCAM": 2,
    "SG": s.get("samples"),
    "IG": s.get("steps"),
    "SIG": s.get("samples", 0) * s.get("steps", 0),
    "XRAI": 2 * s.get("steps", 0),
    "BLUR_IG": s.get("steps"),
    "GUIDED_IG": s.get("steps"),
  }.get(name)


class _RawGradients:
  """Batched jax.grad calls of the model at the best of `batch_sizes` (chosen once)."""

  def __init__(self, fns, image_shape, batch_sizes, repeats):
    self._grad_fn = jax.jit(
      lambda x, t: jax.grad(
        lambda x: jnp.take_along_axis(fns.logits_fn(x), t[:, None], axis=1).sum()
      )(x)
    )
    best = float("inf")
    for bs in batch_sizes:
      self._use(bs, image_shape)
      seconds, _ = _best_of(self.run, max(3, repeats))
      if seconds / self.grads_per_call < best:
        best, best_bs = seconds / self.grads_per_call, bs
    self._use(best_bs, image_shape)
    self.batch_size = best_bs

  def _use(self, bs, image_shape):
    self._x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (bs,) + image_shape), jnp.float32)
    self._t = jnp.zeros((bs,), jnp.int32)
    self._calls = max(1, 256 // bs)  # enough gradients per timing to rise above timer noise
    self.grads_per_call = self._calls * bs
    _block(self._grad_fn(self._x, self._t))

  def run(self):
    for _ in range(self._calls):
      _block(self._grad_fn(self._x, self._t))


def _xrai_selection_records(images, attrs, repeats, label):
  """XRAI "full" selection on the same attributions and PAIR-default segments: ours (the
  batched JAX program, all images in one call, masks prepared in the call as XRAI does), the
  NumPy one (image by image) timed alternately with it, and PAIR (first image)."""
  masks = [xrai_segments.felzenszwalb_segments(im) for im in images]
  t_pair, ref = _best_of(lambda: xrai_selection.pair_xrai_reference(attrs[0], masks[0]), 1)
  batch = lambda: xrai_selection_jax.select_full_batch_details(attrs, masks)  # noqa: E731
  start = time.perf_counter()
  batch()
  first_call_s = time.perf_counter() - start
  (t_ours, t_numpy), (got, outs) = _best_times(
    [batch, lambda: [xrai_selection.select_full(a, m) for a, m in zip(attrs, masks)]], repeats
  )
  if not np.array_equal(got.maps[0], ref) or not all(
    np.array_equal(a, b) for a, b in zip(got.maps, outs)
  ):
    raise AssertionError(f"{label}: XRAI selection differs from PAIR or the NumPy selection")
  regions = [xrai_selection_jax.prepare(m) for m in masks]
  t_prepared, _ = _best_of(lambda: xrai_selection_jax.select_full_batch(attrs, regions), repeats)
  n = len(images)
  print(
    f"{label}: {n} images, {min(map(len, masks))}-{max(map(len, masks))} masks, identical "
    f"output; per map: ours {t_ours / n:.4f} s (first call {first_call_s:.1f} s; masks "
    f"prepared once {t_prepared / n:.4f} s), NumPy {t_numpy / n:.4f} s, PAIR {t_pair:.4f} s;"
    f" ours/NumPy {t_numpy / t_ours:.2f}x, ours/PAIR {t_pair * n / t_ours:.1f}x, "
    f"{got.host_decisions} near-ties decided on the host"
  )
  return {
    "method": label,
    "ours_maps_per_s": n / t_ours,
    "pair_maps_per_s": 1 / t_pair,
    "ratio_vs_pair": t_pair * n / t_ours,
    "overhead_vs_raw_gradients": None,
    "numpy_maps_per_s": n / t_numpy,
    "ratio_vs_numpy": t_numpy / t_ours,
    "prepared_maps_per_s": n / t_prepared,
    "first_call_s": first_call_s,
    "host_decisions": got.host_decisions,
    "num_masks": [len(m) for m in masks],
    "identical_output": True,
  }


def main(argv):
  del argv
  print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, backend {jax.default_backend()}")
  size, c, b = _IMAGE_SIZE.value, _CHANNELS.value, _BATCH.value
  module = models.create(_MODEL.value, num_classes=2)
  variables = models.init_variables(module, jax.random.key(0), (size, size, c))
  fns = models.model_functions(module, variables)
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:size, :size]
  smooth = (np.sin(yy / 5.0) + np.cos(xx / 7.0))[None, ..., None] / 2
  images = np.clip(smooth + 0.3 * rng.normal(size=(b, size, size, c)), -1, 1).astype(np.float32)
  targets = np.asarray(jnp.argmax(fns.logits_fn(jnp.asarray(images)), axis=1), np.int32)
  overrides = json.loads(_SETTINGS.value)
  raw = _RawGradients(
    fns, images.shape[1:], [int(v) for v in _RAW_BATCH_SIZES.value], _REPEATS.value
  )
  print(
    f"raw gradients: batches of {raw.batch_size} (the fastest of "
    f"{_RAW_BATCH_SIZES.value}), timed alternately with each method"
  )
  cmf = pair_interop.pair_call_model_function(fns)
  pair_maps.patch_pair_quantile()
  max_grads = _MAX_GRADS.value or raw.batch_size
  # Ours gets device-resident inputs, as the raw gradients do: an input pipeline prefetches to
  # the device, and a host-to-device copy per call is not the method's cost.
  images_dev, targets_dev = jax.device_put(images), jax.device_put(targets)
  records = []
  header = (
    f"{'method':18s} {'ours maps/s':>12s} {'PAIR maps/s':>12s} {'ours/PAIR':>10s} "
    f"{'overhead vs raw grads':>22s}"
  )
  rows = []

  def record(r, row=None):
    records.append(r)
    if row is not None:
      rows.append(row)
      print(row, flush=True)
    if _JSON.value:  # after every record: a run cut short keeps what it measured
      with open(_JSON.value, "w") as f:
        json.dump(records, f, indent=1, default=str)

  for name in _METHODS.value:
    method = attributions.METHODS[name]
    s = {**method.default_settings, **overrides.get(name, {}), "max_grads_in_flight": max_grads}
    key = jax.random.key(0)

    def ours():
      return _block(method.compute(fns, images_dev, targets_dev, key=key, settings=s))

    start = time.perf_counter()
    ours()  # compile
    first_call_s = time.perf_counter() - start
    (t_ours, t_raw), _ = _best_times([ours, raw.run], _REPEATS.value)
    raw_per_grad = t_raw / raw.grads_per_call
    n_pair = min(_PAIR_IMAGES.value, b)
    pair_rate = None
    if n_pair:
      pair_maps.pair_map(name, s, images[0], targets[0], cmf)  # compile PAIR's jitted gradients
      t_pair, _ = _best_of(
        lambda: [pair_maps.pair_map(name, s, images[i], targets[i], cmf) for i in range(n_pair)], 1
      )
      pair_rate = n_pair / t_pair
    ours_rate = b / t_ours
    ratio = None if pair_rate is None else ours_rate / pair_rate
    grads = _gradients_per_map(name, s)
    overhead = None if grads is None else t_ours / (b * grads * raw_per_grad)
    record(
      {
        "method": name,
        "ours_maps_per_s": ours_rate,
        "pair_maps_per_s": pair_rate,
        "ratio_vs_pair": ratio,
        "overhead_vs_raw_gradients": overhead,
        "first_call_s": first_call_s,
        "gradients_per_map": grads,
        "settings": {k: v for k, v in s.items()},
      },
      f"{name:18s} {ours_rate:12.2f} {_fmt(pair_rate, 12, 2)} {_fmt(ratio, 10, 1)} "
      f"{_fmt(overhead, 22, 2)}   (first call {first_call_s:.1f} s)",
    )
    if name == "XRAI":
      # The model part alone (IG from two baselines, as XRAI runs it), against the same raw
      # gradients.
      ig_settings = {"steps": s["steps"], "max_grads_in_flight": s["max_grads_in_flight"]}

      def ig():
        return _block(xrai_method.IG_COMPUTE(fns, images_dev, targets_dev, settings=ig_settings))

      ig()
      (t_ig, t_raw), _ = _best_times([ig, raw.run], _REPEATS.value)
      raw_per_grad = t_raw / raw.grads_per_call
      ig_overhead = t_ig / (b * grads * raw_per_grad)
      record(
        {
          "method": "XRAI_IG",
          "ours_maps_per_s": b / t_ig,
          "pair_maps_per_s": None,
          "ratio_vs_pair": None,
          "overhead_vs_raw_gradients": ig_overhead,
        },
        f"{'XRAI_IG':18s} {b / t_ig:12.2f} {'-':>12s} {'-':>10s} {ig_overhead:22.2f}",
      )
      k = min(b, _SELECTION_IMAGES.value)
      attr = np.asarray(
        attributions.xrai_base_attribution(fns.logits_fn, images[:k], targets[:k], steps=s["steps"])
      )
      record(
        _xrai_selection_records(images[:k], list(attr), _REPEATS.value, f"XRAI_SELECTION_{size}")
      )
      if _SELECTION_SIZE.value and _SELECTION_SIZE.value != size:  # else timed just above
        n, k = _SELECTION_SIZE.value, _SELECTION_IMAGES.value
        yy, xx = np.mgrid[:n, :n]  # the benchmark images' recipe: about 500 masks at 320
        big = np.clip(
          (np.sin(yy / 5.0) + np.cos(xx / 7.0))[None, ..., None] / 2
          + 0.3 * rng.normal(size=(k, n, n, c)),
          -1,
          1,
        ).astype(np.float32)
        big_attr = list(rng.normal(size=(k, n, n, c)).astype(np.float32))
        record(_xrai_selection_records(big, big_attr, _REPEATS.value, f"XRAI_SELECTION_{n}"))
  if _SANITY.value:
    name = _SANITY_METHOD.value
    method = attributions.METHODS[name]
    s = {**method.default_settings, **overrides.get(name, {}), "max_grads_in_flight": max_grads}
    work = benchmark_sanity.Workload(module, variables, fns, images, images_dev, targets_dev)
    benchmark_sanity.sanity_records(
      work,
      raw,
      record,
      checks=_SANITY.value,
      method_name=name,
      settings=s,
      grads=_gradients_per_map(name, s),
      smooth_samples=_SMOOTH_SAMPLES.value,
      faithfulness_steps=_FAITHFULNESS_STEPS.value,
      repeats=_REPEATS.value,
    )
  print()
  print(f"{_MODEL.value} {size}x{size}x{c}, batch {b}, settings overrides {overrides}")
  print(header)
  print("\n".join(rows))
  for r in records:
    if r["method"].startswith("XRAI_SELECTION"):
      print(
        f"{r['method']:18s} {r['ours_maps_per_s']:12.2f} {r['pair_maps_per_s']:12.2f} "
        f"{r['ratio_vs_pair']:10.1f} {'-':>22s}  ({max(r['num_masks'])} masks, identical; "
        f"NumPy {r['numpy_maps_per_s']:.2f} maps/s, ours/NumPy {r['ratio_vs_numpy']:.2f})"
      )
  if _JSON.value:
    print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
