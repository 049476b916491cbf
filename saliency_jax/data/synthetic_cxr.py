"""TFDS builder `synthetic_cxr`: the procedural chest radiographs of `synthetic_images.py`.

Written as array_record and read back with `tfds.data_source` without TensorFlow: images and masks
are `tfds.features.Tensor`s (zlib-compressed) because TFDS's `Image` feature needs TensorFlow to
encode PNGs.

Every setting lives in the builder config, whose name encodes it, e.g.
`synthetic_cxr/s64_n1200-300-300_seed0_d0.5_p0.5`, so datasets with different settings sit side by
side in one data_dir, and any such name can be read (or, with `download=True`, generated) by
`tfds.data_source` in a fresh process: the builder parses unknown config names.

Example order is the generation order (shuffling disabled), so example `i` of a split is
`synthetic_images.generate_example(i, split=...)` and its id is `synthetic_<split>_<i:06d>`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import tensorflow_datasets as tfds

from saliency_jax.data import synthetic_images
from saliency_jax.data import tfds_compat

_NAME_RE = re.compile(
  r"^s(?P<image_size>\d+)_n(?P<num_train>\d+)-(?P<num_val>\d+)-(?P<num_test>\d+)"
  r"_seed(?P<seed>\d+)_d(?P<difficulty>[0-9.e+-]+)_p(?P<positive_fraction>[0-9.e+-]+)$"
)


@dataclasses.dataclass
class SyntheticCxrConfig(tfds.core.BuilderConfig):
  """Settings of one synthetic dataset; `name` must be `config_name(...)` of the settings."""

  image_size: int = 64
  num_train: int = 1200
  num_val: int = 300
  num_test: int = 300
  seed: int = 0
  difficulty: float = synthetic_images.DEFAULT_DIFFICULTY
  positive_fraction: float = 0.5


def config_name(
  *, image_size, num_train, num_val, num_test, seed, difficulty, positive_fraction
) -> str:
  """The config name that encodes these settings (floats as their shortest exact repr)."""
  return (
    f"s{int(image_size)}_n{int(num_train)}-{int(num_val)}-{int(num_test)}"
    f"_seed{int(seed)}_d{float(difficulty)!r}_p{float(positive_fraction)!r}"
  )


def make_config(
  *,
  image_size=64,
  num_train=1200,
  num_val=300,
  num_test=300,
  seed=0,
  difficulty=synthetic_images.DEFAULT_DIFFICULTY,
  positive_fraction=0.5,
) -> SyntheticCxrConfig:
  """A config for these settings, validated, named by `config_name`."""
  synthetic_images._check_settings(image_size, difficulty, positive_fraction)  # pylint: disable=protected-access
  counts = (num_train, num_val, num_test)
  if any(int(n) != n or n < 0 for n in counts) or seed < 0 or int(seed) != seed:
    raise ValueError(f"Counts and seed must be non-negative integers, got {counts}, {seed=}.")
  settings = dict(
    image_size=int(image_size),
    num_train=int(num_train),
    num_val=int(num_val),
    num_test=int(num_test),
    seed=int(seed),
    difficulty=float(difficulty),
    positive_fraction=float(positive_fraction),
  )
  return SyntheticCxrConfig(
    name=config_name(**settings),
    description="Procedural chest radiographs: " + str(settings),
    **settings,
  )


def parse_config_name(name: str) -> SyntheticCxrConfig | None:
  """The config encoded by `name`, or None when `name` is not such an encoding."""
  match = _NAME_RE.match(name)
  if match is None:
    return None
  g = match.groupdict()
  try:
    config = make_config(
      **{
        k: (float(v) if k in ("difficulty", "positive_fraction") else int(v)) for k, v in g.items()
      }
    )
  except ValueError:
    return None
  return config if config.name == name else None  # only canonical spellings


DEFAULT_CONFIG = make_config()


class SyntheticCxr(tfds_compat.NoTensorFlowMixin, tfds.core.GeneratorBasedBuilder):
  """Procedural chest-radiograph-like images with exact lesion masks and boxes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [DEFAULT_CONFIG]
  DEFAULT_CONFIG_NAME = DEFAULT_CONFIG.name

  @classmethod
  def get_builder_config(cls, name, version=None):
    # Any canonical settings name is a valid config, not only the listed default.
    return super().get_builder_config(name, version) or parse_config_name(name)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "id": tfds.features.Text(),
          "image": tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8, encoding="zlib"),
          "label": tfds.features.ClassLabel(names=["no_lesion", "lesion"]),
          "mask": tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8, encoding="zlib"),
          "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    counts = {"train": c.num_train, "validation": c.num_val, "test": c.num_test}
    return {split: self._generate_examples(split, n) for split, n in counts.items()}

  def _generate_examples(self, split: str, num_examples: int):
    c = self.builder_config
    for e in synthetic_images.generate_split(
      split,
      num_examples,
      seed=c.seed,
      image_size=c.image_size,
      difficulty=c.difficulty,
      positive_fraction=c.positive_fraction,
    ):
      index = int(e.id.rsplit("_", 1)[1])
      yield (
        index,
        {"id": e.id, "image": e.image, "label": e.label, "mask": e.mask, "boxes": e.boxes},
      )


def build_synthetic(
  data_dir: str,
  *,
  image_size: int = 64,
  num_train: int = 1200,
  num_val: int = 300,
  num_test: int = 300,
  seed: int = 0,
  difficulty: float = synthetic_images.DEFAULT_DIFFICULTY,
  positive_fraction: float = 0.5,
) -> str:
  """Generates the dataset with these settings under `data_dir` unless it is already there.

  Returns the name to pass to `tfds.data_source(name, data_dir=data_dir)`. A second call with
  the same settings does nothing. In a multi-process job call it on one process and wait (TFDS
  writes into a temporary directory and renames it, so readers never see a partial dataset).
  """
  config = make_config(
    image_size=image_size,
    num_train=num_train,
    num_val=num_val,
    num_test=num_test,
    seed=seed,
    difficulty=difficulty,
    positive_fraction=positive_fraction,
  )
  # By name: TFDS only accepts config objects that are not among (or parsed as) its configs.
  builder = SyntheticCxr(config=config.name, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    builder.download_and_prepare()
  return f"{SyntheticCxr.name}/{config.name}"
