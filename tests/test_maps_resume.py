"""A map job killed mid-way (SIGKILL, a real separate process) resumes without recomputing.

The restart runs as two hosts (two JAX processes joined by jax.distributed), so the same test
shows that hosts split the remaining chunks between them.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from saliency_jax import maps
from saliency_jax.maps import demo

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FLAGS = {
  "num_images": 14,
  "height": 11,
  "width": 8,
  "channels": 1,
  "seed": 5,
  "chunk_size": 3,
  "method": "DEMO_GRAD",
  "key_seed": 2,
}


def _launch(store, log, **extra):
  flags = {**_FLAGS, "store": store, "chunk_log": log, **extra}
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")]),
  }
  return subprocess.Popen(
    [sys.executable, "-m", "launch.generate_maps"] + [f"--{k}={v}" for k, v in flags.items()],
    cwd=_ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
  )


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _logged_chunks(log):
  with open(log) as f:
    return [int(line.split()[0]) for line in f]


def test_a_killed_job_restarts_where_it_stopped(tmp_path):
  store_path, log1, log2 = (str(tmp_path / n) for n in ("store", "log1", "log2"))
  # A pause after each chunk, so the kill lands while chunk 2 or 3 is pending.
  job = _launch(store_path, log1, chunk_delay_s=1.5)
  deadline = time.monotonic() + 120
  while True:
    done = (
      [f for f in os.listdir(store_path) if f.endswith(".sha256")]
      if os.path.isdir(store_path)
      else []
    )
    if len(done) >= 2:
      break
    assert job.poll() is None, job.stdout.read().decode()
    assert time.monotonic() < deadline, "the map job wrote no chunks in time"
    time.sleep(0.05)
  job.send_signal(signal.SIGKILL)
  job.wait()
  assert job.returncode == -signal.SIGKILL

  store = maps.MapStore.open(store_path)
  finished = [i for i in range(store.num_chunks) if store.has_chunk(i)]
  assert 2 <= len(finished) < store.num_chunks
  assert sorted(_logged_chunks(log1)) == finished
  stamps = {i: os.stat(store.chunk_path(i)) for i in finished}
  leftovers = [f for f in os.listdir(store_path) if f.startswith(".tmp")]
  assert not leftovers

  port = _free_port()
  restarts = [
    _launch(
      store_path,
      log2 + str(host),
      distributed=True,
      num_processes=2,
      process_id=host,
      coordinator_address=f"localhost:{port}",
    )
    for host in (0, 1)
  ]
  for restart in restarts:
    output = restart.communicate(timeout=180)[0].decode()
    assert restart.returncode == 0, output
  # The restart computed exactly the chunks that were missing, each host those of its share,
  # and touched no finished chunk.
  missing = [i for i in range(store.num_chunks) if i not in finished]
  for host in (0, 1):
    assert _logged_chunks(log2 + str(host)) == [i for i in missing if i % 2 == host]
  for i, before in stamps.items():
    after = os.stat(store.chunk_path(i))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
  assert store.complete

  # The same maps as an uninterrupted job (here in this process, one chunk for all images).
  model_fns, images, targets, indices, ids = demo.tiny_problem(
    seed=_FLAGS["seed"],
    num_images=_FLAGS["num_images"],
    height=_FLAGS["height"],
    width=_FLAGS["width"],
    channels=_FLAGS["channels"],
  )
  whole = maps.generate_maps(
    str(tmp_path / "whole"),
    demo.DEMO_METHODS["DEMO_GRAD"],
    model_fns,
    maps.MapInputs(images, targets, indices, ids),
    key=jax.random.key(_FLAGS["key_seed"]),
    plan=maps.MapPlan(chunk_size=_FLAGS["num_images"], progress=False),
  )
  np.testing.assert_allclose(store.read_all(), whole.read_all(), rtol=0, atol=1e-6)
  np.testing.assert_array_equal(store.ids, ids)
