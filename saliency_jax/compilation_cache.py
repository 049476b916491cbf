"""JAX's persistent compilation cache: programs compiled once, reused by later runs.

A rerun, a resumed run or the tests reuse the compiled programs of an earlier run instead of
compiling again (on a GPU, InceptionV3's gradient programs take tens of seconds each). Where:

  "workdir"  <workdir>/compilation_cache: reruns and resumed runs of that workdir (the default);
  "user"     $XDG_CACHE_HOME/saliency_jax/compilation_cache (else ~/.cache/...): every workdir
             of this user, e.g. the second dataset of the paper;
  "off"      no cache;
  a path     that directory.

A directory that cannot be written is only read (its entries are used, none is written), and
one that cannot be created is not used; both say so. On several hosts JAX writes entries only
from process 0: other hosts reuse them when the directory is on a shared file system.
"""

import os

import jax

# JAX's default (1 s) leaves out most of the study's programs on a GPU; entries are small.
MIN_COMPILE_SECONDS = 0.2

LOCATIONS = ("workdir", "user", "off")


def cache_dir(location: str, workdir: str | None = None) -> str | None:
  """The cache directory for `location` (see the module docstring); None for "off"."""
  if location == "off" or not location:
    return None
  if location == "workdir":
    if not workdir:
      raise ValueError('compilation cache "workdir" needs a workdir')
    return os.path.join(workdir, "compilation_cache")
  if location == "user":
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "saliency_jax", "compilation_cache")
  return location


def enable(location: str = "workdir", workdir: str | None = None) -> str | None:
  """Points JAX's persistent compilation cache at `location`; returns the directory used.

  Call it before the first compilation of the process (later calls reset JAX's cache state so
  that they take effect for the programs compiled afterwards).
  """
  path = cache_dir(location, workdir)
  if path is None:
    jax.config.update("jax_compilation_cache_dir", None)
    _reset()
    return None
  path = os.path.abspath(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    print(f"compilation cache: cannot create {path} ({e.strerror}); compiling without a cache")
    return None
  min_seconds = MIN_COMPILE_SECONDS
  if not os.access(path, os.W_OK):
    print(f"compilation cache: {path} is read-only: using its entries, writing none")
    min_seconds = float("inf")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
  _reset()
  return path


def _reset():
  """Makes JAX look at the cache settings again (it checks them once per process)."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  compilation_cache.reset_cache()
