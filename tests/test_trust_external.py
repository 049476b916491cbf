"""Maps from another framework: the documented layouts land in the study's map stores."""

import os
import types

import numpy as np
import pytest

from saliency_jax import attributions
from saliency_jax.maps import MapStore
from saliency_jax.trust import external


def _image_set(name, ids, shape=(6, 5)):
  return types.SimpleNamespace(
    name=name,
    ids=np.asarray(ids),
    indices=np.arange(len(ids)) + 100,
    masks=np.zeros((len(ids), *shape), bool),
  )


def _store_path(root):
  return lambda s, model, state, method: os.path.join(root, s, model, state, method)


def test_npz_and_npy_layouts_fill_the_sets_that_they_cover(tmp_path):
  rng = np.random.default_rng(0)
  maps = {f"img{i}": rng.random((6, 5)).astype(np.float32) for i in range(5)}
  src = tmp_path / "ext"
  (src / "CAPTUM_IG" / "A1").mkdir(parents=True)
  np.savez(src / "CAPTUM_IG" / "A1" / "original.npz", **maps)
  folder = src / "CAPTUM_IG" / "A1" / "cascade_logits"
  folder.mkdir()
  for i in ("img1", "img3"):  # only the eval images: the utility set is skipped
    np.save(folder / f"{i}.npy", maps[i] * 0.5)
  sets = {
    "utility": _image_set("utility", ["img0", "img2", "img4", "img1", "img3"]),
    "eval": _image_set("eval", ["img3", "img1"]),
  }
  root = str(tmp_path / "stores")
  found = external.import_maps(str(src), sets, _store_path(root), chunk_size=2)
  assert found == ["CAPTUM_IG"]
  utility = MapStore.open(os.path.join(root, "utility", "A1", "original", "CAPTUM_IG"))
  np.testing.assert_array_equal(
    utility.read_all(), np.stack([maps[i] for i in sets["utility"].ids])
  )
  np.testing.assert_array_equal(utility.indices, sets["utility"].indices)
  cascade = MapStore.open(os.path.join(root, "eval", "A1", "cascade_logits", "CAPTUM_IG"))
  np.testing.assert_array_equal(cascade.read_all(), np.stack([maps["img3"], maps["img1"]]) * 0.5)
  assert not os.path.exists(os.path.join(root, "utility", "A1", "cascade_logits"))


def test_channel_maps_are_made_grayscale_like_ours(tmp_path):
  rng = np.random.default_rng(1)
  raw = rng.normal(size=(6, 5, 3)).astype(np.float32)
  (tmp_path / "ext" / "PAIR_GRAD" / "B1").mkdir(parents=True)
  np.savez(tmp_path / "ext" / "PAIR_GRAD" / "B1" / "original.npz", a=raw)
  root = str(tmp_path / "stores")
  external.import_maps(
    str(tmp_path / "ext"), {"eval": _image_set("eval", ["a"])}, _store_path(root), chunk_size=4
  )
  got = MapStore.open(os.path.join(root, "eval", "B1", "original", "PAIR_GRAD")).read_all()
  np.testing.assert_allclose(got[0], np.asarray(attributions.to_grayscale(raw[None]))[0], atol=1e-6)


def test_partial_files_and_wrong_sizes_are_errors(tmp_path):
  (tmp_path / "ext" / "X" / "A1").mkdir(parents=True)
  np.savez(tmp_path / "ext" / "X" / "A1" / "original.npz", a=np.zeros((6, 5)))
  sets = {"eval": _image_set("eval", ["a", "b"])}
  with pytest.raises(KeyError, match="lacks maps of 1 of the 2 eval images"):
    external.import_maps(str(tmp_path / "ext"), sets, _store_path(str(tmp_path / "s")), 2)
  np.savez(tmp_path / "ext" / "X" / "A1" / "original.npz", a=np.zeros((4, 4)), b=np.zeros((4, 4)))
  with pytest.raises(ValueError, match="expected"):
    external.import_maps(str(tmp_path / "ext"), sets, _store_path(str(tmp_path / "s")), 2)
  with pytest.raises(FileNotFoundError):
    external.discover(str(tmp_path / "missing"))


def _import_one(tmp_path, maps, method="X"):
  folder = tmp_path / "ext" / method / "A1"
  folder.mkdir(parents=True, exist_ok=True)
  np.savez(folder / "original.npz", **maps)
  sets = {"eval": _image_set("eval", sorted(maps))}
  root = str(tmp_path / "stores")
  external.import_maps(str(tmp_path / "ext"), sets, _store_path(root), chunk_size=2)
  return MapStore.open(os.path.join(root, "eval", "A1", "original", method)).read_all()


def test_integer_maps_are_an_error_naming_the_file(tmp_path):
  # 0..255 maps would score differently from the same maps in [0, 1] (SSIM's data range,
  # thresholds): the user scales them, nothing is guessed.
  maps = {"a": np.full((6, 5), 255, np.uint8), "b": np.zeros((6, 5), np.uint8)}
  with pytest.raises(ValueError, match=r"original\.npz.*'a'.*integer.*\[0, 1\]"):
    _import_one(tmp_path, maps)


def test_maps_outside_zero_one_are_an_error_naming_the_file(tmp_path):
  for bad in (1.5, -0.25):
    maps = {"a": np.full((6, 5), 0.5, np.float32), "b": np.full((6, 5), bad, np.float32)}
    with pytest.raises(ValueError, match=rf"original\.npz.*'b'.*\[{bad}, {bad}\].*\[0, 1\]"):
      _import_one(tmp_path, maps)


def test_inf_is_an_error_naming_the_file_and_nan_is_kept(tmp_path):
  nan_map = np.full((6, 5), np.nan, np.float32)  # NaN marks an undefined map, as ours.
  got = _import_one(tmp_path, {"a": np.full((6, 5), 0.5, np.float32), "b": nan_map})
  assert np.isnan(got[1]).all() and (got[0] == 0.5).all()
  for channels in ((), (3,)):
    bad = np.full((6, 5) + channels, 0.5, np.float32)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"Y[/\\]A1[/\\]original\.npz.*'a'.*inf"):
      _import_one(tmp_path, {"a": bad, "b": np.zeros((6, 5), np.float32)}, method="Y")


def test_a_file_fixed_in_place_is_imported_again(tmp_path):
  first = {"a": np.full((6, 5), 0.25, np.float32), "b": np.zeros((6, 5), np.float32)}
  np.testing.assert_array_equal(_import_one(tmp_path, first)[0], first["a"])
  fixed = {"a": np.full((6, 5), 0.75, np.float32), "b": np.zeros((6, 5), np.float32)}
  np.testing.assert_array_equal(_import_one(tmp_path, fixed)[0], fixed["a"])
