r"""Training throughput: images/s of the jitted training step, and 8-device vs 1-device time.

  python -m launch.benchmark_training                              # CPU: small models, 8 vs 1
  python -m launch.benchmark_training --models=inception_v3 --image_size=320 --channels=3 \
      --batch_size=64 --dtype=bfloat16                             # a GPU/TPU

On the CPU, `--num_cpu_devices=8` simulates 8 devices, so the same global batch is timed on a
mesh of 8 and on a mesh of 1 (same process, same inputs) and the ratio of step times printed:
on one physical CPU the 8-device mesh pays for its partitioning, it cannot be faster. On an
accelerator the mesh is every local device. Random inputs: no input pipeline is timed.
"""

import json

from absl import app
from absl import flags
import jax
from jax.sharding import Mesh
import numpy as np

from launch.train_step_timing import train_step_time
from saliency_jax.train import steps

_MODELS = flags.DEFINE_list("models", ["small_vgg", "small_densenet"], "Models to time.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Image side.")
_CHANNELS = flags.DEFINE_integer("channels", 1, "Image channels.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (median reported).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 or bfloat16.")
_CPU_DEVICES = flags.DEFINE_integer(
  "num_cpu_devices", 8, "Simulated CPU devices (CPU backend only)."
)
_JSON = flags.DEFINE_string("json", None, "Write the records here.")


def main(argv):
  del argv
  # Must precede the first use of the backend; it only affects the CPU backend.
  jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
  from saliency_jax import models  # pylint: disable=g-import-not-at-top

  devices = jax.local_devices()
  meshes = {"1 device": Mesh(np.asarray(devices[:1]), (steps.DATA_AXIS,))}
  if len(devices) > 1:
    meshes[f"{len(devices)} devices"] = Mesh(np.asarray(devices), (steps.DATA_AXIS,))
  shape = (_IMAGE_SIZE.value, _IMAGE_SIZE.value, _CHANNELS.value)
  print(
    f"backend {jax.default_backend()}: {devices[0].device_kind} x{len(devices)}; "
    f"batch {_BATCH.value}, {shape}, {_DTYPE.value}"
  )
  print(
    f"{'model':<16}{'mesh':<12}{'step ms':>10}{'images/s':>12}{'compile s':>11}{'vs 1 device':>13}"
  )
  records = []
  for name in _MODELS.value:
    base = None
    for label, mesh in meshes.items():
      result = train_step_time(
        models.create(name),
        shape,
        batch_size=_BATCH.value,
        mesh=mesh,
        num_steps=_STEPS.value,
        dtype=_DTYPE.value,
      )
      base = base or result["step_s"]
      ratio = result["step_s"] / base
      print(
        f"{name:<16}{label:<12}{1e3 * result['step_s']:>10.1f}"
        f"{result['images_per_s']:>12.1f}{result['compile_s']:>11.1f}{ratio:>13.2f}"
      )
      records.append(
        dict(
          model=name,
          mesh=label,
          image_shape=shape,
          batch_size=_BATCH.value,
          dtype=_DTYPE.value,
          backend=jax.default_backend(),
          step_time_vs_1_device=ratio,
          **result,
        )
      )
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(records, f, indent=2)


if __name__ == "__main__":
  app.run(main)
