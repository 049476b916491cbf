"""The study's data: the dataset's splits, the image sets whose maps are computed, the images
preprocessed for each model, and the average training mask (a baseline)."""

import dataclasses
import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from saliency_jax import data as data_lib
from saliency_jax.trust import checks
from saliency_jax.trust.names import SetName


@dataclasses.dataclass
class ImageSet:
  """Images held in memory for map generation, with their ground truth."""

  name: str
  ids: np.ndarray  # str [N]
  indices: np.ndarray  # int [N], dataset indices in the test split (noise keys fold them)
  raw: np.ndarray  # uint8/uint16 [N,H,W,1], as stored
  masks: np.ndarray  # bool [N,H,W]
  boxes: list[np.ndarray]


class StudyData:
  """The data of one study config, each part loaded once, when first needed."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self._sources: dict[str, Any] | None = None
    self._sets: dict[str, ImageSet] = {}
    self._inputs: dict[tuple[str, str], np.ndarray] = {}
    self._average_mask: np.ndarray | None = None

  @property
  def data_dir(self) -> str:
    return self.config.data.data_dir or os.path.join(self.workdir, "data")

  def set_names(self) -> list[str]:
    """The image sets of the run: utility, eval, and validation for CheXlocalize's tuning."""
    sets = [SetName.UTILITY, SetName.EVAL]
    return sets + (
      [SetName.VALIDATION] if checks.enabled(self.config.study, "chexlocalize") else []
    )

  def dataset_name(self) -> str:
    """The TFDS name of the dataset; the synthetic one is built here if it is not yet."""
    d = self.config.data
    if d.name != "synthetic_cxr":
      return d.name  # real datasets are built beforehand by launch.prepare_data

    def build():
      return data_lib.build_synthetic(
        self.data_dir,
        image_size=d.image_size,
        num_train=d.num_train,
        num_val=d.num_val,
        num_test=d.num_test,
        seed=self.config.seed,
        difficulty=d.difficulty,
        positive_fraction=d.positive_fraction,
      )

    if jax.process_count() > 1:
      # One host writes the dataset; the others find it built (build_synthetic is idempotent).
      if jax.process_index() == 0:
        build()
      multihost_utils.sync_global_devices("synthetic dataset built")
    return build()

  def sources(self) -> dict[str, Any]:
    """{split: random-access source} of the dataset."""
    if self._sources is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

      self._sources = tfds.data_source(self.dataset_name(), data_dir=self.data_dir)
    return self._sources

  def log_sizes(self) -> None:
    sizes = {split: len(source) for split, source in self.sources().items()}
    logging.info("dataset %s: %s", self.config.data.name, sizes)

  def image_set(self, name: str) -> ImageSet:
    if name not in self._sets:
      self._sets[name] = self._load_image_set(name)
    return self._sets[name]

  def _load_image_set(self, name: str) -> ImageSet:
    """The positive test images of a set: all of them for utility, a seeded subset for SSIM;
    the validation set: positive validation images (CheXlocalize's threshold tuning)."""
    split = "validation" if name == SetName.VALIDATION else "test"
    test = self.sources()[split]
    labels = np.array([int(test[i]["label"]) for i in range(len(test))])
    positives = np.flatnonzero(labels == 1)
    if len(positives) < 2:
      raise ValueError(f"the {split} split has {len(positives)} positive images; need >= 2")
    rng = np.random.default_rng(self.config.seed)
    count = {
      SetName.UTILITY: self.config.study.num_utility_images,
      SetName.EVAL: self.config.study.num_eval_images,
      SetName.VALIDATION: self.config.study.chexlocalize.validation_images,
    }[name]
    if count and count < len(positives):
      if name == SetName.UTILITY and self.config.protocol.utility_images == "first":
        positives = positives[:count]  # the authors' SIIM utility set: the first ones
      else:
        positives = np.sort(rng.choice(positives, size=count, replace=False))
    arrays = data_lib.load_arrays(test, positives)
    return ImageSet(
      name=name,
      ids=np.asarray([_text(i) for i in arrays["id"]]),
      indices=np.asarray(arrays["index"]),
      raw=np.asarray(arrays["image"]),
      masks=np.asarray(arrays["mask"])
      .astype(bool)
      .reshape(len(positives), *np.shape(arrays["image"])[1:3]),
      boxes=list(arrays["boxes"]),
    )

  def inputs(self, image_set: ImageSet, style: str) -> np.ndarray:
    """The set's images preprocessed for a model: float32 [N,H,W,C]."""
    key = (image_set.name, style)
    if key not in self._inputs:
      self._inputs[key] = np.asarray(
        data_lib.preprocess(image_set.raw, style=style, channels=self.config.data.channels),
        np.float32,
      )
    return self._inputs[key]

  def image_shape(self, style: str) -> tuple[int, ...]:
    """(H, W, C) of the images a model fed `style` takes."""
    return self.inputs(self.image_set(SetName.EVAL), style).shape[1:]

  def average_mask(self) -> np.ndarray:
    """The mean mask of the positive training images (the average-mask baseline)."""
    if self._average_mask is None:
      from saliency_jax.trust import criteria  # pylint: disable=g-import-not-at-top

      train = self.sources()["train"]
      examples = (train[i] for i in range(len(train)))  # each decoded once
      masks = (np.asarray(ex["mask"]) for ex in examples if int(ex["label"]) == 1)
      self._average_mask = criteria.average_mask(masks)
    return self._average_mask


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)
