"""Files shared by several JAX processes (hosts): one host writes, every host reads after it.

A multi-host run shares its workdir: a file that several hosts read (training settings,
summaries, the progress log) is written by host 0 only, atomically (a temporary name renamed
over the final one, so no reader ever sees half a file), and read by the others only after a
barrier that host 0 reaches once the file is there.

  multihost.initialize(coordinator_address, num_processes, process_id)   # the launchers
  multihost.write_shared_json(path, data, "what")   # host 0 writes, every host waits
"""

from __future__ import annotations

import json
import os
import tempfile

import jax


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """`jax.distributed.initialize` for the launchers; None lets a cluster's environment (SLURM,
  MPI, TPU pods, Kubernetes) fill in a value, the three flags start hosts anywhere else."""
  # CPU hosts need a collectives library for barriers and gathers; accelerators ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # Hosts other than 0 finish with the maps stage and wait in JAX's shutdown barrier while
  # host 0 scores and reports: give that an hour, not the default five minutes.
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    shutdown_timeout_seconds=3600,
  )


def is_writer() -> bool:
  """Whether this process writes the files that every host shares (host 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every host got here (nothing to wait for in a single-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)


def write_json(path: str, data) -> None:
  """Writes JSON atomically: a reader finds the old file, the new one, or none; never half."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(data, f, indent=1, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_shared_json(path: str, data, name: str) -> None:
  """Host 0 writes `path`; every host returns once it is there (`name` labels the barrier)."""
  if is_writer():
    write_json(path, data)
  barrier(name)
