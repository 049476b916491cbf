"""The persistent compilation cache: entries written, reused after the in-memory caches are
cleared, a read-only directory read but not written, an impossible one refused."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import compilation_cache


@pytest.fixture(autouse=True)
def _restore_jax_cache_settings(monkeypatch):
  monkeypatch.setattr(compilation_cache, "MIN_COMPILE_SECONDS", 0.0)  # cache every program
  yield
  compilation_cache.enable("off")


def _hits():
  hits = []
  jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None
  )
  return hits


def _entries(path):
  return sorted(f for f in os.listdir(path) if not f.startswith("."))


def test_workdir_cache_written_and_reused(tmp_path):
  path = compilation_cache.enable("workdir", str(tmp_path))
  assert path == os.path.join(str(tmp_path), "compilation_cache")
  f = jax.jit(lambda x: jnp.sin(x) * 3.0 + x.sum())
  x = np.arange(7.0, dtype=np.float32)
  expected = np.asarray(f(x))
  assert _entries(path)  # the compiled program was written
  hits = _hits()
  jax.clear_caches()  # as a new process: nothing compiled in memory
  np.testing.assert_array_equal(np.asarray(f(x)), expected)
  assert hits  # ... and it came from the directory


def test_read_only_cache_is_read_not_written(tmp_path, monkeypatch, capsys):
  path = compilation_cache.enable("workdir", str(tmp_path))
  g = jax.jit(lambda x: jnp.cos(x) - 1.5)
  x = np.arange(5.0, dtype=np.float32)
  g(x)
  before = _entries(path)
  real_access = os.access
  monkeypatch.setattr(
    os,
    "access",
    lambda p, mode: (
      False if mode == os.W_OK and os.path.abspath(p) == path else real_access(p, mode)
    ),
  )
  assert compilation_cache.enable("workdir", str(tmp_path)) == path
  assert "read-only" in capsys.readouterr().out
  hits = _hits()
  jax.clear_caches()
  g(x)  # read from the directory
  jax.jit(lambda x: jnp.tanh(x) * 2.5)(x)  # compiled, not written
  assert hits and _entries(path) == before


def test_user_and_off_and_impossible_locations(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compilation_cache.cache_dir("user") == str(
    tmp_path / "xdg" / "saliency_jax" / "compilation_cache"
  )
  assert compilation_cache.cache_dir("off", "w") is None
  assert compilation_cache.cache_dir(str(tmp_path / "c")) == str(tmp_path / "c")
  with pytest.raises(ValueError, match="needs a workdir"):
    compilation_cache.cache_dir("workdir")
  (tmp_path / "file").write_text("x")
  assert compilation_cache.enable(str(tmp_path / "file" / "cache")) is None
  assert "cannot create" in capsys.readouterr().out
