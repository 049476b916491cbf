r"""Computes one method's maps for a tiny seeded model and image set into a resumable map store.

A standalone map job: it fills the store at --store chunk by chunk, and a rerun of the same
command (after a crash, a kill or a preemption) computes only the chunks not on disk yet.
The model and images come from `saliency_jax.maps.demo.tiny_problem(seed=...)`, so every
process with the same flags sees the same inputs.

  python -m launch.generate_maps --store=/tmp/maps/sg --method=SG --num_images=64 \
      --chunk_size=16 --dtype=float16

Several hosts (each computes and writes chunks i with i % num_processes == process_id, then all
wait for each other):

  python -m launch.generate_maps --store=... --distributed \
      [--coordinator_address=host0:1234 --num_processes=2 --process_id=0]

Methods: the study's registry `saliency_jax.attributions.METHODS` (GRAD, SG, IG, ...) and the
two demo methods DEMO_GRAD and DEMO_SG of saliency_jax.maps.demo.

Maps of a study. The study's own map job is `launch/run_all.py --stages=maps` on its workdir; it
calls the same `saliency_jax.maps.generate_maps`, one store per (set, model, state, method)
under <workdir>/maps/<set>/<model>/<state>/<method>/, and resumes the same way (rerun the same
command; with --distributed each host takes its share of every store's chunks). To see how far
any store is, from any machine, while the job runs or after it was stopped:

  python -m launch.generate_maps --status --store=<workdir>/maps/eval/<model>/original/SG

--chunk_delay_s slows every chunk down and --chunk_log appends "chunk_index seconds" per chunk
computed by this process: the resumption test uses them to kill a job between chunks and to
check that the restart recomputes nothing that was finished.
"""

import time

from absl import app
from absl import flags
import jax

from saliency_jax import maps
from saliency_jax import multihost
from saliency_jax.maps import demo

_STORE = flags.DEFINE_string("store", None, "Directory of the map store.", required=True)
_METHOD = flags.DEFINE_string("method", "DEMO_SG", "Method name (METHODS or DEMO_*).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 16, "Images in the tiny set.")
_HEIGHT = flags.DEFINE_integer("height", 12, "Image height.")
_WIDTH = flags.DEFINE_integer("width", 10, "Image width.")
_CHANNELS = flags.DEFINE_integer("channels", 1, "Image channels.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the tiny model and images.")
_KEY_SEED = flags.DEFINE_integer("key_seed", 0, "Seed of the methods' noise key.")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 4, "Maps per chunk.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float16"], "Stored dtype.")
_NUM_DEVICES = flags.DEFINE_integer(
  "num_devices", 0, "Devices to shard each chunk over; 0 for the default mesh."
)
_PREPARED_DIR = flags.DEFINE_string(
  "prepared_dir", None, "Cache of model-independent data (XRAI segments) per chunk."
)
_CHUNK_DELAY_S = flags.DEFINE_float("chunk_delay_s", 0.0, "Sleep after each chunk (tests).")
_CHUNK_LOG = flags.DEFINE_string("chunk_log", None, "File to append computed chunks to.")
_STATUS = flags.DEFINE_bool("status", False, "Only print the store's progress and exit.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Run as one of several hosts (jax.distributed.initialize; the "
  "three flags below, or the cluster's environment when they are unset).",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of hosts.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This host's index.")


def _method(name: str):
  if name in demo.DEMO_METHODS:
    return demo.DEMO_METHODS[name]
  from saliency_jax.attributions import METHODS  # pylint: disable=g-import-not-at-top

  if name not in METHODS:
    raise app.UsageError(
      f"Unknown method {name!r}; known: {sorted(METHODS) + sorted(demo.DEMO_METHODS)}"
    )
  return METHODS[name]


def _print_status(path: str) -> None:
  store = maps.MapStore.open(path)
  missing = store.missing_chunks()
  print(store)
  print(f"metadata: {store.metadata}")
  if missing:
    print(f"missing chunks ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
  else:
    print("complete")


def main(argv):
  del argv
  if _STATUS.value:
    _print_status(_STORE.value)
    return
  if _DISTRIBUTED.value:
    multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  model_fns, images, targets, indices, ids = demo.tiny_problem(
    seed=_SEED.value,
    num_images=_NUM_IMAGES.value,
    height=_HEIGHT.value,
    width=_WIDTH.value,
    channels=_CHANNELS.value,
  )
  mesh = maps.batch_mesh(jax.local_devices()[: _NUM_DEVICES.value]) if _NUM_DEVICES.value else None

  def on_chunk(index, seconds):
    if _CHUNK_LOG.value:
      with open(_CHUNK_LOG.value, "a") as f:
        f.write(f"{index} {seconds:.4f}\n")
    time.sleep(_CHUNK_DELAY_S.value)

  plan = maps.MapPlan(
    chunk_size=_CHUNK_SIZE.value,
    dtype=_DTYPE.value,
    mesh=mesh,
    prepared_dir=_PREPARED_DIR.value,
    on_chunk=on_chunk,
  )
  store = maps.generate_maps(
    _STORE.value,
    _method(_METHOD.value),
    model_fns,
    maps.MapInputs(images, targets, indices, ids),
    key=jax.random.key(_KEY_SEED.value),
    plan=plan,
  )
  print(store)


if __name__ == "__main__":
  app.run(main)
