"""Faults of a study's workdir: what a user sees when stores, configs or runs go wrong."""
import numpy as np
import pytest

from configs import tiny
from saliency_jax import maps as maps_lib
from saliency_jax import trust


def _study(tmp_path, **study_overrides):
  config = tiny.get_config()
  for key, value in study_overrides.items():
    config.study[key] = value
  return trust.Study(config, str(tmp_path / "work"))


def test_an_incomplete_store_names_the_redo_flag(tmp_path):
  study = _study(tmp_path)
  path = study.store_path("eval", "A1", "original", "GRAD")
  store = maps_lib.MapStore.create_or_open(path, num_maps=3, map_shape=(4, 4), chunk_size=2)
  store.write_chunk(0, np.zeros((2, 4, 4), np.float32))
  with pytest.raises(RuntimeError, match=f"{path} is incomplete.*--redo=maps"):
    study.read_maps("eval", "A1", "original", "GRAD")
