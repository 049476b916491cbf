r"""RetinaNet throughput: training and inference images/s (one device, random inputs).

  python -m launch.benchmark_detector                  # CPU: the synthetic config's detector, 64 px
  python -m launch.benchmark_detector --preset=paper   # a GPU: ResNet-50 RetinaNet at 320 x 320

Training is the jitted step of `train.train_detector` (focal + box loss, anchor assignment in
the step, Adam). Inference is what the maps stage runs per image: the network, decoding and
NMS (`postprocess.detect`) and the score map (`postprocess.score_maps`); the network alone is
timed too, so the post-processing's share shows. No input pipeline is timed.
"""

import json
import time

from absl import app
from absl import flags

_PRESET = flags.DEFINE_enum(
  "preset",
  "small",
  ["small", "paper"],
  "small: configs/synthetic.py:retinanet's detector at 64 px, 1 "
  "channel; paper: configs/paper_rsna.py's (ResNet-50) at 320 px, 3 "
  "channels.",
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Image side (default: the preset's).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls (median reported).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Training compute dtype: float32 or bfloat16.")
_JSON = flags.DEFINE_string("json", None, "Write the record here.")


def _median_seconds(fn, steps: int) -> tuple[float, float]:
  """(compile + first call, median of `steps` calls) in seconds."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return first, float(np.median(times))


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from configs import paper_rsna  # pylint: disable=g-import-not-at-top
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from launch.train_step_timing import train_step_time  # pylint: disable=g-import-not-at-top
  from saliency_jax import models  # pylint: disable=g-import-not-at-top
  from saliency_jax import train  # pylint: disable=g-import-not-at-top
  from saliency_jax.detection import postprocess  # pylint: disable=g-import-not-at-top

  if _PRESET.value == "small":
    config, size, channels = synthetic.get_config("retinanet"), 64, 1
  else:
    config, size, channels = paper_rsna.get_config(), 320, 3
  size = _IMAGE_SIZE.value or size
  module = models.create("retinanet", **config.localization.kwargs)
  shape = (size, size, channels)
  batch = _BATCH.value
  mesh = Mesh(np.asarray(jax.local_devices()[:1]), (train.DATA_AXIS,))
  print(
    f"backend {jax.default_backend()}: {jax.local_devices()[0].device_kind}; preset "
    f"{_PRESET.value}, batch {batch}, {shape}"
  )

  trained = train_step_time(
    module,
    shape,
    batch_size=batch,
    mesh=mesh,
    num_steps=_STEPS.value,
    dtype=_DTYPE.value,
    detector=True,
  )
  variables = models.init_variables(module, jax.random.key(0), shape)
  images = jax.device_put(np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32))
  anchors = jax.numpy.asarray(module.anchors(size, size))
  network = jax.jit(module.apply)

  @jax.jit
  def score_maps(variables, images):
    logits, deltas = module.apply(variables, images)
    boxes, scores = postprocess.detect(logits, deltas, anchors, image_shape=(size, size))
    return postprocess.score_maps(boxes, scores, (size, size))

  _, network_s = _median_seconds(lambda: network(variables, images), _STEPS.value)
  maps_compile_s, maps_s = _median_seconds(lambda: score_maps(variables, images), _STEPS.value)
  record = dict(
    preset=_PRESET.value,
    image_shape=shape,
    batch_size=batch,
    backend=jax.default_backend(),
    train_images_per_s=trained["images_per_s"],
    train_step_s=trained["step_s"],
    train_compile_s=trained["compile_s"],
    network_images_per_s=batch / network_s,
    maps_images_per_s=batch / maps_s,
    maps_compile_s=maps_compile_s,
    postprocess_share=1 - network_s / maps_s,
  )
  print(f"{'':<34}{'images/s':>10}{'ms/batch':>10}")
  print(
    f"{'training step':<34}{record['train_images_per_s']:>10.1f}{1e3 * trained['step_s']:>10.1f}"
  )
  print(f"{'inference: network':<34}{batch / network_s:>10.1f}{1e3 * network_s:>10.1f}")
  print(f"{'inference: + NMS + score maps':<34}{batch / maps_s:>10.1f}{1e3 * maps_s:>10.1f}")
  print(f"post-processing share of inference: {record['postprocess_share']:.2f}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(record, f, indent=2)


if __name__ == "__main__":
  app.run(main)
