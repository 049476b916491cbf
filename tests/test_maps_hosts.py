"""Two real JAX processes (jax.distributed) fill one map store, each with its own chunks."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from saliency_jax import maps
from saliency_jax.maps import demo

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FLAGS = {"num_images": 9, "height": 7, "width": 10, "channels": 2, "seed": 1,
          "chunk_size": 2, "method": "DEMO_SG", "key_seed": 4}


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_hosts_write_disjoint_chunks_of_one_store(tmp_path):
  store_path = str(tmp_path / "store")
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")])}
  jobs = []
  for host in (0, 1):
    flags = {**_FLAGS, "store": store_path, "chunk_log": str(tmp_path / f"log{host}"),
             "distributed": True, "coordinator_address": f"localhost:{port}",
             "num_processes": 2, "process_id": host}
    jobs.append(subprocess.Popen(
        [sys.executable, "-m", "launch.generate_maps"] + [f"--{k}={v}" for k, v in flags.items()],
        cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  for job in jobs:
    output = job.communicate(timeout=180)[0].decode()
    assert job.returncode == 0, output
    assert "chunks 5/5" in output  # Each host returned only once the store was complete.
  for host in (0, 1):
    with open(tmp_path / f"log{host}") as f:
      assert [int(line.split()[0]) for line in f] == list(range(host, 5, 2))

  model_fns, images, targets, indices, ids = demo.tiny_problem(
      seed=_FLAGS["seed"], num_images=_FLAGS["num_images"], height=_FLAGS["height"],
      width=_FLAGS["width"], channels=_FLAGS["channels"])
  whole = maps.generate_maps(
      str(tmp_path / "whole"), demo.DEMO_METHODS["DEMO_SG"], model_fns, images, targets,
      indices, ids, key=jax.random.key(_FLAGS["key_seed"]), chunk_size=9, progress=False)
  np.testing.assert_allclose(maps.MapStore.open(store_path).read_all(), whole.read_all(),
                             rtol=0, atol=1e-6)
