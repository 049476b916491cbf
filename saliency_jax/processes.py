"""Whether a process of this machine is still running (worker watchdogs, stale locks)."""

import os


def pid_alive(pid: int) -> bool:
  """True while `pid` runs; a killed process not yet reaped (a zombie) counts as gone."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:
    with open(f"/proc/{pid}/stat") as f:  # Linux: killed but not reaped yet
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):
    return True
