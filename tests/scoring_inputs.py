"""Hand-made inputs of the scoring tests: tidy records and map stores, as the maps and criteria
stages would write them."""

import numpy as np

from saliency_jax.maps import MapStore
from saliency_jax.trust import map_reader
from saliency_jax.trust.manifest import CLASSIFIER
from saliency_jax.trust.manifest import LOCALIZER
from saliency_jax.trust.manifest import ModelEntry

# Two replicates of one architecture, one of another, two localization networks.
MODELS = (
  ModelEntry("A1", "a", ("logits", "stem"), CLASSIFIER),
  ModelEntry("A2", "a", ("logits", "stem"), CLASSIFIER),
  ModelEntry("B1", "b", ("head",), CLASSIFIER),
  ModelEntry("U1", "unet", (), LOCALIZER),
  ModelEntry("U2", "unet", (), LOCALIZER),
)


def tidy_records(criterion, metric, method, model, state, values) -> list[dict]:
  """One record per value (image ids img00, img01, ...); NaN as the undefined value None."""
  return [
    dict(
      criterion=criterion,
      metric=metric,
      method=method,
      model=model,
      state=state,
      image_id=f"img{i:02d}",
      value=None if np.isnan(v) else float(v),
    )
    for i, v in enumerate(values)
  ]


def write_store(workdir, set_name, model, state, method, maps, ids, *, chunk_size=2) -> None:
  """The map store of (set, model, state, method) under `workdir`, holding `maps` [N,H,W]."""
  maps = np.asarray(maps, np.float32)
  store = MapStore.create_or_open(
    map_reader.store_path(workdir, set_name, model, state, method),
    num_maps=len(maps),
    map_shape=maps.shape[1:],
    chunk_size=chunk_size,
    ids=ids,
  )
  for chunk in store.missing_chunks():
    start, stop = store.chunk_bounds(chunk)
    store.write_chunk(chunk, maps[start:stop])
