"""The maps stage's outputs as scoring and reporting read them: map stores and ground truth.

Layout under the workdir (written by the maps stage, read by `MapReader`):

  maps/<set>/<model>/<state>/<method>/   a `MapStore` (see `store_path`)
  maps/<set>/ground_truth.npz            ids, raw images, masks and boxes of the set, map order
  maps/average_mask.npy                  the mean positive training mask (a baseline map)

  reader = MapReader(workdir, required_methods=manifest.computed_methods)
  reader.read(SetName.EVAL, "A1", State.ORIGINAL, "GRAD")   # float32 [N,H,W] or None
  reader.ground_truth(SetName.UTILITY).masks                 # bool [N,H,W]
  reader.average_mask()                                      # float32 [H,W]
"""

from collections.abc import Sequence
import dataclasses
import os

import numpy as np

from saliency_jax.maps.store import MapStore
from saliency_jax.trust.names import Baseline

AVERAGE_MASK_FILE = "average_mask.npy"
GROUND_TRUTH_FILE = "ground_truth.npz"


def store_path(workdir: str, set_name: str, model: str, state: str, method: str) -> str:
  return os.path.join(workdir, "maps", set_name, model, state, method)


@dataclasses.dataclass
class GroundTruth:
  """The images of a set and their ground truth, in the order of the set's maps."""

  ids: np.ndarray  # str [N]
  raw: np.ndarray  # uint8/uint16 [N,H,W,1], as stored in the dataset
  masks: np.ndarray  # bool [N,H,W]
  boxes: list[np.ndarray]  # [K,4] per image (y0, x0, y1, x1)


def write_ground_truth(
  workdir: str,
  set_name: str,
  ids: Sequence[str],
  raw: np.ndarray,
  masks: np.ndarray,
  boxes: Sequence[np.ndarray],
) -> None:
  boxes = [np.asarray(b).reshape(-1, 4) for b in boxes]
  path = os.path.join(workdir, "maps", set_name, GROUND_TRUTH_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(
    tmp,
    ids=np.asarray([str(i) for i in ids]),
    raw=np.asarray(raw),
    masks=np.asarray(masks, bool),
    boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4)),
    box_counts=np.asarray([len(b) for b in boxes], np.int64),
  )
  os.replace(tmp, path)


def write_average_mask(workdir: str, mask: np.ndarray) -> None:
  path = os.path.join(workdir, "maps", AVERAGE_MASK_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.npy"
  np.save(tmp, np.asarray(mask))
  os.replace(tmp, path)


def minmax(maps: np.ndarray) -> np.ndarray:
  """Each map rescaled to [0, 1] by its own min and max, as the authors' `saliency_ttest` did
  to every map before storing it (a constant map gives NaN, their 0/0)."""
  maps = np.asarray(maps, np.float32)
  lo = maps.min(axis=(1, 2), keepdims=True)
  hi = maps.max(axis=(1, 2), keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    return ((maps - lo) / (hi - lo)).astype(np.float32)


class MapReader:
  """Reads the maps and ground truth of a workdir's maps stage.

  `required_methods`: methods whose stores must exist (the ones the maps stage computed, and
  the localization network's output); a missing store of another (external) method, or of a
  (model, method) pair in `skipped` (the model cannot give that method), reads as None, which
  leaves the criteria that need it N/A.
  """

  def __init__(
    self,
    workdir: str,
    required_methods: Sequence[str],
    skipped: Sequence[tuple[str, str]] = (),
    *,
    minmax: bool = False,
  ):
    self.workdir = workdir
    self.required = set(required_methods) | {Baseline.LOCALIZATION}
    self.skipped = {tuple(pair) for pair in skipped}
    self.minmax = minmax  # protocol.minmax_maps: saliency maps rescaled as the authors did
    self._ground_truth: dict[str, GroundTruth] = {}

  def read(self, set_name: str, model: str, state: str, method: str) -> np.ndarray | None:
    """The maps of one store as float32 [N,H,W]; None where an external method's store does
    not exist."""
    path = store_path(self.workdir, set_name, model, state, method)
    if not os.path.exists(path):
      if method in self.required and (model, method) not in self.skipped:
        raise FileNotFoundError(f"no maps at {path}: run the maps stage first")
      return None
    store = MapStore.open(path)
    if not store.complete:
      raise RuntimeError(
        f"the map store {path} is incomplete: rerun the maps stage (launch.run_all --redo=maps)"
      )
    if os.path.exists(self._ground_truth_path(set_name)):
      ids = self.ground_truth(set_name).ids
      if not np.array_equal(store.ids.astype(str), np.asarray(ids).astype(str)):
        raise ValueError(
          f"{path} holds maps of other images than the {set_name} set "
          f"({len(store.ids)} maps, {len(ids)} images in the set): the maps "
          "stage ran with another config; rerun it (launch.run_all "
          "--redo=maps)."
        )
    maps = store.read_all()
    if self.minmax and method != Baseline.LOCALIZATION:
      maps = minmax(maps)
    return maps

  def _ground_truth_path(self, set_name: str) -> str:
    return os.path.join(self.workdir, "maps", set_name, GROUND_TRUTH_FILE)

  def ground_truth(self, set_name: str) -> GroundTruth:
    if set_name not in self._ground_truth:
      path = self._ground_truth_path(set_name)
      if not os.path.exists(path):
        raise FileNotFoundError(f"no ground truth at {path}: run the maps stage first")
      with np.load(path) as f:
        ends = np.cumsum(f["box_counts"])
        boxes = np.split(f["boxes"], ends[:-1]) if len(ends) else []
        self._ground_truth[set_name] = GroundTruth(
          ids=f["ids"], raw=f["raw"], masks=f["masks"], boxes=list(boxes)
        )
    return self._ground_truth[set_name]

  def average_mask(self) -> np.ndarray:
    path = os.path.join(self.workdir, "maps", AVERAGE_MASK_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"no average mask at {path}: run the maps stage first")
    return np.load(path)
