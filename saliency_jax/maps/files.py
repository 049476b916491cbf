"""Files written atomically: to a temporary name in the same directory, then renamed.

`os.replace` is atomic on POSIX filesystems, so a file is either completely present or absent,
whatever happens to the writer; a full disk is an error that says how much space is left and
that a rerun resumes.
"""

import errno
import io
import os
import shutil
import tempfile

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str, write_fn) -> None:
  """Writes a file through `write_fn(file)` to a temporary name, then renames it to `path`."""
  directory = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
  try:
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give them the usual mode.
    with os.fdopen(fd, "wb") as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())  # The rename must not publish a file whose bytes are not on disk.
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      raise OSError(
        e.errno,
        f"writing {path}: disk full ({free_space(directory)}); "
        "free some space and rerun the same command: finished files are kept "
        "and the run resumes where it stopped",
      ) from e
    raise


def free_space(directory: str) -> str:
  try:
    return f"{shutil.disk_usage(directory).free / 2**20:.1f} MiB free on that filesystem"
  except OSError:
    return "free space unknown"


def save_npy(path: str, array: np.ndarray) -> None:
  data = npy_bytes(array)  # Written by Python, whose errors carry errno (ENOSPC).
  atomic_write(path, lambda f: f.write(data))


def npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  return buffer.getvalue()
