"""Maps computed elsewhere (PAIR, Captum, ...), scored by the same criteria as ours.

Layout of the directory named by `config.study.external_maps`:

  <dir>/<METHOD>/<model>/<state>.npz        one array per image, keyed by image id
  <dir>/<METHOD>/<model>/<state>/<id>.npy   or one .npy file per image

METHOD is any name (it becomes a column of the report, e.g. CAPTUM_IG); model is a name from
`config.models` (A1, A2, B1, ...); state is `original`, `untrained`, `cascade_<block>` or
`independent_<block>` with the model's block names (see `models/<name>` in the report). Each
map is [H, W] in [0, 1], as our maps are (used as it is), or [H, W, C] (made 2-D by
`to_grayscale`, PAIR's VisualizeImageGrayscale) at the dataset's image size; float, since an
integer map (0..255) or one outside [0, 1] would score differently from the same map scaled.
NaN marks an undefined map (every metric is NaN for it, as for ours); inf is an error. Image
ids are the dataset's "id" feature. Missing states leave the criteria that need them N/A; a
map of the wrong size, type or range, or an id the set needs but the file lacks is an error
naming the file and the id. Stores are keyed by the maps' content, so a file fixed in place is
imported again.
"""

import hashlib
import logging
import os
import shutil

import numpy as np

from saliency_jax import attributions
from saliency_jax.maps import MapStore
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State


def discover(directory: str) -> dict[str, dict[str, dict[str, str]]]:
  """{method: {model: {state: path}}} of the maps under `directory`."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"external maps directory {directory!r} does not exist")
  found: dict[str, dict[str, dict[str, str]]] = {}
  for method in sorted(os.listdir(directory)):
    method_dir = os.path.join(directory, method)
    if not os.path.isdir(method_dir):
      continue
    for model in sorted(os.listdir(method_dir)):
      model_dir = os.path.join(method_dir, model)
      if not os.path.isdir(model_dir):
        continue
      for entry in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, entry)
        if entry.endswith(".npz"):
          found.setdefault(method, {}).setdefault(model, {})[entry[:-4]] = path
        elif os.path.isdir(path):
          found.setdefault(method, {}).setdefault(model, {})[entry] = path
  return found


def _load_arrays(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".npz"):
    with np.load(path) as archive:
      return {k: archive[k] for k in archive.files}
  return {f[:-4]: np.load(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".npy")}


def _as_map(array: np.ndarray, image_id: str, path: str, shape) -> np.ndarray:
  where = f"{path}: map of {image_id!r}"
  array = np.asarray(array)
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(
      f"{where} has {array.dtype} (integer) values; maps must be float in "
      "[0, 1] as ours are (e.g. divide 0..255 maps by 255)."
    )
  if np.isinf(array).any():
    raise ValueError(f"{where} has inf values; use NaN to mark an undefined map.")
  m = np.asarray(array, np.float32)
  if m.ndim == 3:
    m = np.asarray(attributions.to_grayscale(m[None]))[0]
  if m.shape != tuple(shape):
    raise ValueError(f"{where} has shape {m.shape}, expected {tuple(shape)}")
  if not np.isnan(m).all():
    lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
    if lo < 0 or hi > 1:
      raise ValueError(
        f"{where} has values in [{lo:g}, {hi:g}], outside [0, 1]; scale the "
        "maps to [0, 1] as ours are (the criteria are not scale-invariant)."
      )
  return m


def _sets_of_state(state: str) -> tuple[str, ...]:
  if state == State.ORIGINAL:
    return (SetName.UTILITY, SetName.EVAL)
  if state == State.UNTRAINED:
    return (SetName.UTILITY,)
  return (SetName.EVAL,)


def import_maps(directory: str, image_sets, store_path, chunk_size: int) -> list[str]:
  """Copies every external map into the study's stores; returns the method names found.

  Each state fills the image sets the criteria read it from: `original` both sets,
  `untrained` the utility set, the randomization states the eval set. The file must hold a
  map for every id of those sets (it may hold more); a missing id is an error.

  Args:
    directory: the external maps directory.
    image_sets: {set name: ImageSet} the study scores.
    store_path: (set, model, state, method) -> the store directory.
    chunk_size: the study's chunk size.
  """
  found = discover(directory)
  for method, by_model in found.items():
    for model, by_state in by_model.items():
      for state, path in by_state.items():
        arrays = _load_arrays(path)
        for set_name in _sets_of_state(state):
          if set_name not in image_sets:
            continue
          image_set = image_sets[set_name]
          ids = [str(i) for i in image_set.ids]
          missing = [i for i in ids if i not in arrays]
          if missing:
            raise KeyError(
              f"{path} lacks maps of {len(missing)} of the {len(ids)} "
              f"{set_name} images, e.g. {missing[:3]}"
            )
          shape = image_set.masks.shape[1:]
          maps = np.stack([_as_map(arrays[i], i, path, shape) for i in ids])
          path_out = store_path(set_name, model, state, method)
          # Keyed by content: a file fixed in place gives another digest and is imported again.
          metadata = {
            "method": method,
            "sha256": hashlib.sha256(np.ascontiguousarray(maps).data).hexdigest(),
          }
          if (
            os.path.exists(os.path.join(path_out, "manifest.json"))
            and MapStore.open(path_out).metadata != metadata
          ):
            logging.warning("%s changed since it was imported: importing it again", path)
            shutil.rmtree(path_out)
          store = MapStore.create_or_open(
            path_out,
            num_maps=len(ids),
            map_shape=shape,
            chunk_size=chunk_size,
            dtype="float32",
            ids=ids,
            indices=image_set.indices,
            metadata=metadata,
          )
          for chunk in store.missing_chunks(verify=True):
            start, stop = store.chunk_bounds(chunk)
            store.write_chunk(chunk, maps[start:stop])
  return sorted(found)
