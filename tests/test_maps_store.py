"""Tests of the chunked map store: layout, atomic chunks, resuming, float16, streaming."""

import errno
import gc
import os
import re
import weakref

import numpy as np
import pytest

from saliency_jax.maps import iter_aligned
from saliency_jax.maps import MapStore


def _maps(n, h=5, w=7, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (n, h, w)).astype(np.float32)


def _create(path, n=11, chunk_size=4, dtype="float32", **kwargs):
  return MapStore.create_or_open(
    str(path), num_maps=n, map_shape=(5, 7), chunk_size=chunk_size, dtype=dtype, **kwargs
  )


def test_chunks_cover_all_maps_with_a_short_last_chunk(tmp_path):
  store = _create(tmp_path / "s", n=11, chunk_size=4)
  assert store.num_chunks == 3
  assert [store.chunk_bounds(i) for i in range(3)] == [(0, 4), (4, 8), (8, 11)]
  assert store.missing_chunks() == [0, 1, 2]
  assert store.missing_chunks(process_index=1, process_count=2) == [1]
  assert not store.complete
  np.testing.assert_array_equal(store.indices, np.arange(11))
  np.testing.assert_array_equal(store.ids, [str(i) for i in range(11)])


def test_write_then_read_all_equals_the_maps_written(tmp_path):
  maps = _maps(11)
  ids = np.array([f"img{i}" for i in range(11)])
  indices = np.arange(100, 111)
  store = _create(tmp_path / "s", ids=ids, indices=indices)
  for i in (2, 0, 1):  # Any order, as several hosts would.
    start, stop = store.chunk_bounds(i)
    store.write_chunk(i, maps[start:stop])
  assert store.complete
  reopened = MapStore.open(str(tmp_path / "s"))
  np.testing.assert_array_equal(reopened.read_all(), maps)
  np.testing.assert_array_equal(reopened.ids, ids)
  np.testing.assert_array_equal(reopened.indices, indices)
  chunk = reopened.read_chunk(2)
  assert (chunk.start, chunk.stop) == (8, 11)
  np.testing.assert_array_equal(chunk.ids, ids[8:])
  np.testing.assert_array_equal(chunk.indices, indices[8:])


def test_a_finished_chunk_is_never_rewritten(tmp_path):
  store = _create(tmp_path / "s")
  store.write_chunk(0, _maps(4))
  before = os.stat(store.chunk_path(0))
  with pytest.raises(FileExistsError):
    store.write_chunk(0, _maps(4, seed=1))
  after = os.stat(store.chunk_path(0))
  assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
  np.testing.assert_array_equal(store.read_chunk(0).maps, _maps(4))


def test_bad_chunks_are_refused(tmp_path):
  store = _create(tmp_path / "s")
  with pytest.raises(ValueError, match="shape"):
    store.write_chunk(2, _maps(4))  # The last chunk holds 3 maps.
  bad = _maps(4)
  bad[1, 2, 3] = np.inf
  with pytest.raises(ValueError, match="infinite"):
    store.write_chunk(0, bad)
  with pytest.raises(IndexError):
    store.write_chunk(3, _maps(4))
  assert store.missing_chunks() == [0, 1, 2]  # Nothing half-written was left behind.
  assert sorted(os.listdir(tmp_path / "s")) == ["ids.npy", "indices.npy", "manifest.json"]


def test_nan_maps_are_kept_as_nan(tmp_path):
  # NaN is the methods' mark of an undefined (constant) map; the store keeps it for the metrics.
  for dtype in ("float32", "float16"):
    store = _create(tmp_path / dtype, n=3, chunk_size=3, dtype=dtype)
    maps = _maps(3)
    maps[1] = np.nan
    store.write_chunk(0, maps)
    out = store.read_all()
    assert np.isnan(out[1]).all() and not np.isnan(out[[0, 2]]).any()


def test_reopening_with_another_description_is_an_error(tmp_path):
  _create(tmp_path / "s", metadata={"method": "GRAD"})
  assert _create(tmp_path / "s", metadata={"method": "GRAD"}).num_maps == 11
  with pytest.raises(ValueError, match="other maps"):
    _create(tmp_path / "s", chunk_size=5, metadata={"method": "GRAD"})
  with pytest.raises(ValueError, match="other maps"):
    _create(tmp_path / "s", dtype="float16", metadata={"method": "GRAD"})
  with pytest.raises(ValueError, match="other maps"):
    _create(tmp_path / "s", metadata={"method": "SG"})
  with pytest.raises(ValueError, match="other images"):
    _create(tmp_path / "s", indices=np.arange(1, 12), metadata={"method": "GRAD"})
  with pytest.raises(FileNotFoundError):
    MapStore.open(str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="dtype"):
    _create(tmp_path / "t", dtype="int8")


def test_float16_storage_roundtrip(tmp_path):
  maps = _maps(11)
  maps[0, 0, :3] = [0.0, 1.0, 0.5]  # Exactly representable values stay exact.
  s32 = _create(tmp_path / "s32", dtype="float32")
  s16 = _create(tmp_path / "s16", dtype="float16")
  for store in (s32, s16):
    for i in range(store.num_chunks):
      start, stop = store.chunk_bounds(i)
      store.write_chunk(i, maps[start:stop])
  back = MapStore.open(str(tmp_path / "s16"))
  assert back.dtype == "float16"
  out = back.read_all()
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, maps.astype(np.float16).astype(np.float32))
  np.testing.assert_allclose(out, maps, rtol=0, atol=2.0**-11)  # Half an ulp at 1.0.
  np.testing.assert_array_equal(out[0, 0, :3], [0.0, 1.0, 0.5])
  # Half the bytes of the maps (the .npy headers are the same size).
  header = os.path.getsize(s32.chunk_path(0)) - 4 * 4 * 35
  assert os.path.getsize(s16.chunk_path(0)) == header + 2 * 4 * 35


def test_streaming_reads_one_chunk_at_a_time_and_keeps_none(tmp_path):
  maps = _maps(11)
  store = _create(tmp_path / "s")
  for i in range(store.num_chunks):
    start, stop = store.chunk_bounds(i)
    store.write_chunk(i, maps[start:stop])
  reader = MapStore.open(str(tmp_path / "s"))
  stream = reader.iter_chunks()
  assert reader.chunks_read == 0  # Lazy: nothing is loaded before the first chunk is asked.
  previous = None
  for i, chunk in enumerate(stream):
    assert reader.chunks_read == i + 1  # Exactly one more chunk loaded per step.
    assert chunk.maps.shape == (chunk.stop - chunk.start, 5, 7)
    np.testing.assert_array_equal(chunk.maps, maps[chunk.start : chunk.stop])
    if previous is not None:
      gc.collect()
      assert previous() is None  # The reader kept no reference to the previous chunk.
    previous = weakref.ref(chunk.maps)
    del chunk
  assert reader.chunks_read == 3


def test_streaming_an_incomplete_store_is_an_error(tmp_path):
  store = _create(tmp_path / "s")
  store.write_chunk(0, _maps(4))
  with pytest.raises(ValueError, match="incomplete: 2 of 3 chunks missing"):
    next(store.iter_chunks())
  with pytest.raises(ValueError, match="incomplete"):
    store.read_all()


def test_aligned_stores_stream_the_same_images_together(tmp_path):
  a, b = _maps(11, seed=1), _maps(11, seed=2)
  stores = []
  for name, maps, dtype in (("a", a, "float32"), ("b", b, "float16")):
    store = _create(tmp_path / name, dtype=dtype)
    for i in range(store.num_chunks):
      start, stop = store.chunk_bounds(i)
      store.write_chunk(i, maps[start:stop])
    stores.append(store)
  pairs = list(iter_aligned(*stores))
  assert [(x.start, y.start) for x, y in pairs] == [(0, 0), (4, 4), (8, 8)]
  np.testing.assert_array_equal(np.concatenate([x.maps for x, _ in pairs]), a)
  np.testing.assert_array_equal(
    np.concatenate([y.maps for _, y in pairs]), b.astype(np.float16).astype(np.float32)
  )
  other = _create(tmp_path / "c", chunk_size=5)
  with pytest.raises(ValueError, match="same images"):
    next(iter_aligned(stores[0], other))


def _filled(path, n=11, chunk_size=4, seed=0):
  store = _create(path, n=n, chunk_size=chunk_size)
  maps = _maps(n, seed=seed)
  for i in range(store.num_chunks):
    start, stop = store.chunk_bounds(i)
    store.write_chunk(i, maps[start:stop])
  return store, maps


def test_a_truncated_chunk_is_an_error_naming_its_file(tmp_path):
  store, _ = _filled(tmp_path / "s")
  path = store.chunk_path(1)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 10)
  reader = MapStore.open(str(tmp_path / "s"))
  with pytest.raises(ValueError, match=re.escape(path) + ".*checksum.*--redo=maps"):
    reader.read_all()
  np.testing.assert_array_equal(reader.read_chunk(0).maps, _maps(11)[:4])  # The others read.


def test_a_chunk_replaced_by_another_valid_one_is_an_error(tmp_path):
  # Chunks 0 and 1 have the same shape: a copied file is a valid .npy of the wrong maps.
  store, _ = _filled(tmp_path / "s")
  with open(store.chunk_path(1), "rb") as f:
    other = f.read()
  with open(store.chunk_path(0), "wb") as f:
    f.write(other)
  with pytest.raises(ValueError, match=re.escape(store.chunk_path(0)) + ".*checksum"):
    MapStore.open(str(tmp_path / "s")).read_chunk(0)


def test_a_chunk_that_fails_its_checksum_is_rewritten_and_counts_as_missing(tmp_path):
  store, maps = _filled(tmp_path / "s")
  assert store.missing_chunks(verify=True) == []
  with open(store.chunk_path(2), "r+b") as f:
    f.seek(-4, os.SEEK_END)
    f.write(b"\0\0\x80\x7f")  # A different but valid float32 (inf) in the last map.
  assert store.missing_chunks() == []  # Both files are there ...
  assert store.missing_chunks(verify=True) == [2]  # ... but the bytes are not the ones written.
  assert store.missing_chunks(process_index=1, process_count=2, verify=True) == []
  store.write_chunk(2, maps[8:])  # A bad chunk may be replaced; a good one may not.
  np.testing.assert_array_equal(store.read_all(), maps)
  with pytest.raises(FileExistsError):
    store.write_chunk(2, maps[8:])


def test_a_chunk_without_its_checksum_is_unfinished(tmp_path):
  # A writer killed between the chunk and its checksum: the chunk is redone, not trusted.
  store, maps = _filled(tmp_path / "s")
  os.remove(store.checksum_path(1))
  assert store.missing_chunks() == [1] and not store.complete
  store.write_chunk(1, maps[4:8])
  np.testing.assert_array_equal(store.read_all(), maps)


class _FullDisk:
  """A file that takes `room` bytes, then fails as a full disk does (ENOSPC)."""

  def __init__(self, f, room):
    self._f, self._room = f, room

  def write(self, data):
    if len(data) > self._room:
      self._room = 0
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    self._room -= len(data)
    return self._f.write(data)

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return self._f.__exit__(*exc)


def test_a_full_disk_says_so_names_the_file_and_that_a_rerun_resumes(tmp_path, monkeypatch):
  store, maps = _filled(tmp_path / "s")
  os.remove(store.checksum_path(2))  # Chunk 2 still to do.
  real_fdopen = os.fdopen
  monkeypatch.setattr(
    os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k), room=100)
  )
  with pytest.raises(
    OSError, match=re.escape(store.chunk_path(2)) + ".*disk full.*rerun.*resume"
  ) as raised:
    store.write_chunk(2, maps[8:])
  assert raised.value.errno == errno.ENOSPC
  monkeypatch.undo()
  assert not [f for f in os.listdir(tmp_path / "s") if f.startswith(".tmp")]
  assert store.missing_chunks() == [2]  # The rerun finds what is left to do.
  store.write_chunk(2, maps[8:])
  np.testing.assert_array_equal(store.read_all(), maps)


def test_replace_swaps_a_store_of_other_maps_for_an_empty_one(tmp_path):
  store, _ = _filled(tmp_path / "s")
  same = _create(tmp_path / "s", replace=True)
  assert same.complete  # The same description: kept, chunks and all.
  other = _create(tmp_path / "s", ids=[f"x{i}" for i in range(11)], replace=True)
  assert other.missing_chunks() == [0, 1, 2]
  np.testing.assert_array_equal(MapStore.open(str(tmp_path / "s")).ids, other.ids)
  assert _create(tmp_path / "s", metadata={"model": "b"}, replace=True).missing_chunks() == [
    0,
    1,
    2,
  ]
