"""Tests of the procedural generator and of the `synthetic_cxr` TFDS builder."""

import os
import sys

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score
import tensorflow_datasets as tfds

from saliency_jax.data import build_synthetic
from saliency_jax.data import load_arrays
from saliency_jax.data import make_dataset
from saliency_jax.data import synthetic_cxr
from saliency_jax.data import synthetic_images

EIGHT_CONNECTED = np.ones((3, 3), int)


@pytest.fixture(scope="module")
def train40():
  return [
    synthetic_images.generate_example(i, split="train", seed=3, image_size=48) for i in range(40)
  ]


def test_same_seed_same_bytes_other_seed_or_split_differs():
  a = synthetic_images.generate_example(7, split="train", seed=11)
  b = synthetic_images.generate_example(7, split="train", seed=11)
  for field in ("image", "mask", "boxes"):
    assert getattr(a, field).tobytes() == getattr(b, field).tobytes()
  assert (a.id, a.label) == (b.id, b.label)
  other_seed = synthetic_images.generate_example(7, split="train", seed=12)
  other_split = synthetic_images.generate_example(7, split="test", seed=11)
  assert other_seed.image.tobytes() != a.image.tobytes()
  assert other_split.image.tobytes() != a.image.tobytes()


def test_examples_do_not_depend_on_generation_order():
  forward = list(synthetic_images.generate_split("validation", 6, seed=5, image_size=32))
  alone = synthetic_images.generate_example(4, split="validation", seed=5, image_size=32)
  assert forward[4].image.tobytes() == alone.image.tobytes()
  assert forward[4].mask.tobytes() == alone.mask.tobytes()


@pytest.mark.parametrize("size", [37, 64])
def test_shapes_and_dtypes(size):
  for i in range(6):
    e = synthetic_images.generate_example(i, image_size=size, seed=1)
    assert e.image.shape == (size, size, 1) and e.image.dtype == np.uint8
    assert e.mask.shape == (size, size, 1) and e.mask.dtype == np.uint8
    assert set(np.unique(e.mask)) <= {0, 1}
    assert e.boxes.dtype == np.float32 and e.boxes.ndim == 2 and e.boxes.shape[1] == 4
    assert e.label in (0, 1)
    assert e.id == f"synthetic_train_{i:06d}"


def test_negatives_have_no_lesions_and_positives_have_exact_boxes(train40):
  labels = [e.label for e in train40]
  assert 0 < sum(labels) < len(labels)
  for e in train40:
    mask = e.mask[..., 0]
    if e.label == 0:
      assert not mask.any()
      assert e.boxes.shape == (0, 4)
      continue
    # Independent reference: connected components of the mask and their bounding slices.
    components, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    assert 1 <= n <= 3 and n == len(e.boxes)
    ref = sorted(
      (s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(components)
    )
    assert sorted(map(tuple, e.boxes.astype(int).tolist())) == ref
    np.testing.assert_array_equal(e.boxes, np.round(e.boxes))
    # Lesions lie inside the lungs.
    assert not (mask.astype(bool) & ~e.lungs).any()


def test_positive_fraction():
  labels = [
    synthetic_images.generate_example(i, image_size=16, positive_fraction=0.5).label
    for i in range(200)
  ]
  assert 0.4 < np.mean(labels) < 0.6
  assert not any(
    synthetic_images.generate_example(i, image_size=16, positive_fraction=0.0).label
    for i in range(20)
  )
  assert all(
    synthetic_images.generate_example(i, image_size=16, positive_fraction=1.0).label
    for i in range(20)
  )


def test_difficulty_changes_only_lesion_pixels():
  # The random draws do not depend on difficulty, so a harder image differs only on the lesion.
  for i in range(8):
    easy = synthetic_images.generate_example(i, seed=2, difficulty=1.0, positive_fraction=1.0)
    hard = synthetic_images.generate_example(i, seed=2, difficulty=2.0, positive_fraction=1.0)
    np.testing.assert_array_equal(easy.mask, hard.mask)
    diff = easy.image.astype(int) - hard.image.astype(int)
    inside = easy.mask.astype(bool)
    assert (diff[~inside] == 0).all()
    assert diff[inside].mean() > 10  # lesions are brighter at lower difficulty


def test_distractors_in_both_classes(train40):
  negatives = [e for e in train40 if e.label == 0]
  positives = [e for e in train40 if e.label == 1]
  # Negatives carry bright things too (markers, tubes, electrodes reach near-white).
  assert np.mean([e.image.max() >= 220 for e in negatives]) > 0.7
  # In most positives the brightest pixel is not a lesion pixel.
  assert np.mean([e.image[e.mask.astype(bool)].max() < e.image.max() for e in positives]) > 0.7
  # Intensity itself is a poor localization map (a perfect one scores 1).
  aps = [average_precision_score(e.mask.ravel(), e.image.ravel()) for e in positives]
  assert np.mean(aps) < 0.5


def test_bad_settings_raise():
  with pytest.raises(ValueError, match="difficulty"):
    synthetic_images.generate_example(0, difficulty=0.0)
  with pytest.raises(ValueError, match="image_size"):
    synthetic_images.generate_example(0, image_size=8)
  with pytest.raises(ValueError, match="split"):
    synthetic_images.generate_example(0, split="dev")
  with pytest.raises(ValueError, match="positive_fraction"):
    synthetic_images.generate_example(0, positive_fraction=1.5)


def test_config_names_round_trip():
  config = synthetic_cxr.make_config(
    image_size=40,
    num_train=5,
    num_val=3,
    num_test=2,
    seed=9,
    difficulty=1.25,
    positive_fraction=0.3,
  )
  assert config.name == "s40_n5-3-2_seed9_d1.25_p0.3"
  parsed = synthetic_cxr.parse_config_name(config.name)
  assert (
    parsed.image_size,
    parsed.num_train,
    parsed.num_val,
    parsed.num_test,
    parsed.seed,
    parsed.difficulty,
    parsed.positive_fraction,
  ) == (40, 5, 3, 2, 9, 1.25, 0.3)
  assert synthetic_cxr.parse_config_name("s40_n5-3-2_seed9_d1.250_p0.3") is None  # not canonical
  assert synthetic_cxr.parse_config_name("default") is None


SETTINGS = dict(
  image_size=32, num_train=9, num_val=4, num_test=3, seed=4, difficulty=1.0, positive_fraction=0.5
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return data_dir, build_synthetic(data_dir, **SETTINGS)


def test_tfds_round_trip_equals_generator(built):
  data_dir, name = built
  assert name == "synthetic_cxr/s32_n9-4-3_seed4_d1.0_p0.5"
  sources = tfds.data_source(name, data_dir=data_dir, download=False)
  for split, n in (("train", 9), ("validation", 4), ("test", 3)):
    assert len(sources[split]) == n
    for i in range(n):
      stored = sources[split][i]
      ref = synthetic_images.generate_example(i, split=split, seed=4, image_size=32)
      assert stored["id"].decode() == ref.id
      assert stored["label"] == ref.label
      assert stored["image"].dtype == np.uint8 and stored["mask"].dtype == np.uint8
      np.testing.assert_array_equal(stored["image"], ref.image)
      np.testing.assert_array_equal(stored["mask"], ref.mask)
      np.testing.assert_array_equal(stored["boxes"], ref.boxes)
      assert stored["boxes"].shape == ref.boxes.shape  # (0, 4) for negatives
  assert "tensorflow" not in sys.modules


def test_load_arrays_matches_generator(built):
  data_dir, name = built
  source = tfds.data_source(name, data_dir=data_dir)["train"]
  arrays = load_arrays(source, indices=[5, 0, 2])
  ref = synthetic_images.generate_arrays("train", 9, seed=4, image_size=32)
  np.testing.assert_array_equal(arrays["index"], [5, 0, 2])
  assert arrays["id"].tolist() == [ref["id"][i] for i in (5, 0, 2)]
  np.testing.assert_array_equal(arrays["image"], ref["image"][[5, 0, 2]])
  np.testing.assert_array_equal(arrays["label"], ref["label"][[5, 0, 2]])
  assert arrays["mask"].dtype == bool and arrays["mask"].shape == (3, 32, 32)
  np.testing.assert_array_equal(arrays["mask"], ref["mask"][[5, 0, 2]])
  for got, want in zip(arrays["boxes"], [ref["boxes"][i] for i in (5, 0, 2)]):
    np.testing.assert_array_equal(got, want)
  everything = load_arrays(source)
  np.testing.assert_array_equal(everything["index"], np.arange(9))
  with pytest.raises(IndexError):
    load_arrays(source, indices=[9])
  with pytest.raises(ValueError):
    load_arrays(source, indices=[])


def test_rebuild_is_a_no_op_and_settings_do_not_collide(built):
  data_dir, name = built
  root = os.path.join(data_dir, *name.split("/"))
  files = {
    os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
    for d, _, fs in os.walk(root)
    for f in fs
  }
  assert build_synthetic(data_dir, **SETTINGS) == name
  assert {p: os.stat(p).st_mtime_ns for p in files} == files
  # Another seed is another config next to the first one.
  other = build_synthetic(
    data_dir, **{**SETTINGS, "seed": 5, "num_train": 2, "num_val": 1, "num_test": 1}
  )
  assert other != name
  a = tfds.data_source(name, data_dir=data_dir)["train"][0]["image"]
  b = tfds.data_source(other, data_dir=data_dir)["train"][0]["image"]
  assert a.tobytes() != b.tobytes()


def test_grain_pipeline_reads_the_tfds_source(built):
  data_dir, name = built
  source = tfds.data_source(name, data_dir=data_dir)["train"]
  batch = next(iter(make_dataset(source, batch_size=4, seed=0, channels=3)))
  ref = synthetic_images.generate_arrays("train", 9, seed=4, image_size=32)
  idx = batch["index"]
  assert len(set(idx.tolist())) == 4
  np.testing.assert_allclose(
    batch["image"], np.repeat(ref["image"][idx] / 127.5 - 1, 3, -1), rtol=1e-6, atol=1e-6
  )
  np.testing.assert_array_equal(batch["mask"], ref["mask"][idx])
  np.testing.assert_array_equal(batch["label"], ref["label"][idx])


def test_data_source_generates_an_unbuilt_config(tmp_path):
  # Any canonical settings name is a config; data_source prepares it (array_record, no TF).
  name = "synthetic_cxr/" + synthetic_cxr.config_name(
    image_size=24, num_train=2, num_val=1, num_test=1, seed=8, difficulty=2.0, positive_fraction=1.0
  )
  source = tfds.data_source(name, data_dir=str(tmp_path))["train"]
  ref = synthetic_images.generate_example(
    1, split="train", seed=8, image_size=24, difficulty=2.0, positive_fraction=1.0
  )
  np.testing.assert_array_equal(source[1]["image"], ref.image)
  assert source[1]["label"] == 1
  assert "tensorflow" not in sys.modules
