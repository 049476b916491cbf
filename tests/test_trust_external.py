"""Maps from another framework: the documented layouts land in the study's map stores."""
import os
import types

import numpy as np
import pytest

from saliency_jax import attributions
from saliency_jax.maps import MapStore
from saliency_jax.trust import external


def _image_set(name, ids, shape=(6, 5)):
  return types.SimpleNamespace(name=name, ids=np.asarray(ids),
                               indices=np.arange(len(ids)) + 100,
                               masks=np.zeros((len(ids), *shape), bool))


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
  sets = {"utility": _image_set("utility", ["img0", "img2", "img4", "img1", "img3"]),
          "eval": _image_set("eval", ["img3", "img1"])}
  root = str(tmp_path / "stores")
  found = external.import_maps(str(src), sets, _store_path(root), chunk_size=2)
  assert found == ["CAPTUM_IG"]
  utility = MapStore.open(os.path.join(root, "utility", "A1", "original", "CAPTUM_IG"))
  np.testing.assert_array_equal(utility.read_all(),
                                np.stack([maps[i] for i in sets["utility"].ids]))
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
  external.import_maps(str(tmp_path / "ext"), {"eval": _image_set("eval", ["a"])},
                       _store_path(root), chunk_size=4)
  got = MapStore.open(os.path.join(root, "eval", "B1", "original", "PAIR_GRAD")).read_all()
  np.testing.assert_allclose(got[0], np.asarray(attributions.to_grayscale(raw[None]))[0],
                             atol=1e-6)


def test_partial_files_and_wrong_sizes_are_errors(tmp_path):
  (tmp_path / "ext" / "X" / "A1").mkdir(parents=True)
  np.savez(tmp_path / "ext" / "X" / "A1" / "original.npz", a=np.zeros((6, 5)))
  sets = {"eval": _image_set("eval", ["a", "b"])}
  with pytest.raises(KeyError, match="lacks maps of 1 of the 2 eval images"):
    external.import_maps(str(tmp_path / "ext"), sets, _store_path(str(tmp_path / "s")), 2)
  np.savez(tmp_path / "ext" / "X" / "A1" / "original.npz", a=np.zeros((4, 4)),
           b=np.zeros((4, 4)))
  with pytest.raises(ValueError, match="expected"):
    external.import_maps(str(tmp_path / "ext"), sets, _store_path(str(tmp_path / "s")), 2)
  with pytest.raises(FileNotFoundError):
    external.discover(str(tmp_path / "missing"))
