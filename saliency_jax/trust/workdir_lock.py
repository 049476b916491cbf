"""One run per workdir: `<workdir>/run.lock` names the process that holds it.

Two runs on one workdir would corrupt each other (checkpoints, the dataset build, the progress
log), so a run takes the lock first and a second one is refused with a message naming the
holder (pid, host, start time). The holder refreshes the file's time every HEARTBEAT_S seconds.
A lock is stale, and taken over, when its process is gone (same host) or when it has not been
refreshed for STALE_AFTER_S seconds (another host, whose processes cannot be seen from here).
In a multi-host run only host 0 takes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

from absl import logging

from saliency_jax import processes

FILENAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class WorkdirBusy(RuntimeError):
  """Another live run holds the workdir."""


def _holder(path: str) -> dict | None:
  try:
    with open(path) as f:
      holder = json.load(f)
    holder["age_s"] = time.time() - os.path.getmtime(path)
    return holder
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {"pid": -1, "host": "?", "started": "?", "age_s": 0.0}  # being written: busy


def _stale(holder: dict) -> bool:
  if holder["host"] == socket.gethostname() and holder["pid"] > 0:
    return not processes.pid_alive(holder["pid"])
  return holder["age_s"] > STALE_AFTER_S


@contextlib.contextmanager
def hold(workdir: str):
  """Holds the workdir's lock for the `with` block; raises WorkdirBusy if a live run has it."""
  path = os.path.join(workdir, FILENAME)
  me = {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
  }
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      break
    except FileExistsError:
      holder = _holder(path)
      if holder is None:
        continue  # released meanwhile
      if not _stale(holder):
        raise WorkdirBusy(
          f"{workdir} is in use by another run: pid {holder['pid']} on host "
          f"{holder['host']}, started {holder['started']} (lock {path}). Wait for it or "
          f"stop it; a killed run's lock is taken over once its process is gone (same host) "
          f"or {STALE_AFTER_S:.0f} s after its last heartbeat (another host)."
        ) from None
      logging.warning(
        "taking over the stale lock of pid %s on %s (%s)", holder["pid"], holder["host"], path
      )
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
  with os.fdopen(fd, "w") as f:
    json.dump(me, f)
  stop = threading.Event()

  def heartbeat():
    while not stop.wait(HEARTBEAT_S):
      with contextlib.suppress(OSError):
        os.utime(path)

  thread = threading.Thread(target=heartbeat, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    with contextlib.suppress(OSError, ValueError):
      with open(path) as f:
        if json.load(f).get("pid") == me["pid"]:
          os.remove(path)
