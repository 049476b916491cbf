"""The `image_mask_folder` builder: the authors' sample format (float .npy in [-1, 1], 3 equal
channels) and PNG images with PNG masks, boxes, RLE and a labels CSV; bad input is skipped and
counted in the skip report."""

import numpy as np
from PIL import Image
import pytest
import skimage.transform
import tensorflow_datasets as tfds

import saliency_jax.data  # noqa: F401  (registers the builders)
from saliency_jax.data import prepare_real
from saliency_jax.data import rle


def _examples(name, data_dir):
  sources = tfds.data_source(name, data_dir=data_dir)
  return {
    split: {
      str(ex["id"], "utf8") if isinstance(ex["id"], bytes) else str(ex["id"]): ex
      for ex in (source[i] for i in range(len(source)))
    }
    for split, source in sources.items()
  }


def test_authors_sample_format(tmp_path):
  """320x320x3 float .npy in [-1, 1] as the authors' samples, here at 24x24."""
  root = tmp_path / "samples"
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  rng = np.random.default_rng(0)
  pixels, masks = {}, {}
  for i in range(5):
    gray = rng.integers(0, 256, (24, 24)).astype(np.uint8)
    pixels[f"s{i}"] = gray
    sample = np.repeat((gray / 127.5 - 1.0).astype(np.float32)[..., None], 3, axis=-1)
    np.save(root / "images" / f"s{i}.npy", sample)
    mask = np.zeros((24, 24), bool)
    if i != 3:  # s3: an empty mask, hence a negative image
      mask[i : i + 5, 2 * i : 2 * i + 7] = True
    masks[f"s{i}"] = mask
    np.save(root / "masks" / f"s{i}.npy", mask)
  np.save(root / "images" / "too_bright.npy", np.full((24, 24, 3), 2.0, np.float32))
  np.save(root / "masks" / "too_bright.npy", np.ones((24, 24), bool))
  np.save(root / "images" / "wrong_mask.npy", np.zeros((24, 24, 3), np.float32))
  np.save(root / "masks" / "wrong_mask.npy", np.ones((12, 12), bool))
  (root / "images" / "corrupt.npy").write_bytes(b"not an npy file")
  np.save(root / "masks" / "orphan.npy", np.ones((24, 24), bool))

  data_dir = str(tmp_path / "tfds")
  name, report = prepare_real.prepare(
    "image_mask_folder",
    manual_dir=str(root),
    data_dir=data_dir,
    image_size=24,
    split_fractions=(0, 0, 1),
  )
  examples = _examples(name, data_dir)
  assert set(examples) == {"test"} and set(examples["test"]) == set(pixels)
  for image_id, ex in examples["test"].items():
    # Back on the 8-bit grid exactly: (x + 1) / 2 * 255 of x = v / 127.5 - 1 is v.
    np.testing.assert_array_equal(ex["image"][..., 0], pixels[image_id])
    np.testing.assert_array_equal(ex["mask"][..., 0], masks[image_id])
    assert int(ex["label"]) == int(masks[image_id].any())
    assert ex["boxes"].shape == (0, 4)
  assert report["num_written"] == 5
  assert {r: e["count"] for r, e in report["skipped"].items()} == {
    "value_out_of_range": 1,
    "mask_shape_mismatch": 1,
    "npy_unreadable": 1,
    "image_missing_file": 1,
  }
  assert report["info"]["labels"] == "ground truth present"
  # Another float range is another build, and maps [0, 2] to the unit range.
  name2, _ = prepare_real.prepare(
    "image_mask_folder",
    manual_dir=str(root),
    data_dir=data_dir,
    image_size=24,
    split_fractions=(0, 0, 1),
    float_range=(-2, 2),
  )
  assert name2 != name
  bright = _examples(name2, data_dir)["test"]["too_bright"]
  np.testing.assert_array_equal(bright["image"], 255)


def _png(path, array):
  Image.fromarray(array).save(path)


def test_png_images_with_masks_boxes_rle_and_labels(tmp_path):
  root = tmp_path / "pngs"
  (root / "images" / "sub").mkdir(parents=True)
  (root / "masks").mkdir()
  rng = np.random.default_rng(1)
  gray = {f"p{i}": rng.integers(0, 256, (20, 16)).astype(np.uint8) for i in range(6)}
  for image_id, g in gray.items():
    folder = root / "images" / ("sub" if image_id == "p5" else "")
    if image_id == "p4":  # RGB with unequal channels: averaged, with a note
      rgb = np.stack([g, g // 2, g // 3], axis=-1)
      _png(folder / f"{image_id}.png", rgb)
      gray[image_id] = (rgb / 255.0).mean(-1) * 255.0
    else:
      _png(folder / f"{image_id}.png", g)
  mask0 = np.zeros((20, 16), np.uint8)
  mask0[4:10, 2:8] = 255
  _png(root / "masks" / "p0.png", mask0)
  (root / "boxes.csv").write_text("id,x,y,width,height\np1,2,4,6,8\np2,1,1,2,2\np3,0,0,40,4\n")
  rle_mask = np.zeros((20, 16), bool)
  rle_mask[3:7, 5:9] = True
  (root / "rle.csv").write_text(f"id,EncodedPixels\np4,{rle.rle_encode(rle_mask)}\n")
  (root / "labels.csv").write_text(
    "id,label,split\np0,1,train\np1,1,test\np2,0,test\np3,1,test\np4,1,validation\n"
    "p5,1,test\nghost,1,test\n"
  )

  data_dir = str(tmp_path / "tfds")
  name, report = prepare_real.prepare(
    "image_mask_folder", manual_dir=str(root), data_dir=data_dir, image_size=10
  )
  examples = _examples(name, data_dir)
  assert {s: sorted(e) for s, e in examples.items()} == {
    "train": ["p0"],
    "validation": ["p4"],
    "test": ["p1", "p5"],
  }
  ex = {k: v for split in examples.values() for k, v in split.items()}
  for image_id, e in ex.items():
    expected = skimage.transform.resize(
      gray[image_id] / 255.0,
      (10, 10),
      order=1,
      mode="edge",
      anti_aliasing=True,
      preserve_range=True,
    )
    np.testing.assert_array_equal(e["image"][..., 0], np.round(expected * 255).astype(np.uint8))
  # Nearest neighbour at pixel centres: target row r samples source row floor((r + .5) * 2).
  rows = np.arange(10) * 2 + 1
  cols = np.floor((np.arange(10) + 0.5) * 1.6).astype(int)
  np.testing.assert_array_equal(ex["p0"]["mask"][..., 0], mask0[np.ix_(rows, cols)] > 0)
  np.testing.assert_array_equal(ex["p4"]["mask"][..., 0], rle_mask[np.ix_(rows, cols)])
  # Box (x 2, y 4, w 6, h 8) -> (ymin, xmin, ymax, xmax) scaled by (0.5, 0.625).
  np.testing.assert_allclose(ex["p1"]["boxes"], [[2.0, 1.25, 6.0, 5.0]])
  assert ex["p1"]["mask"][2:6, 1:5].all() and ex["p1"]["mask"].sum() == 16
  assert int(ex["p5"]["label"]) == 1 and not ex["p5"]["mask"].any()
  assert {r: e["count"] for r, e in report["skipped"].items()} == {
    "label_conflict": 1,
    "box_outside_image": 1,
    "image_missing_file": 1,
  }
  assert report["notes"]["channels_averaged"]["count"] == 1
  assert report["notes"]["positive_without_ground_truth"]["count"] == 1


def test_missing_images_dir_explains(tmp_path):
  with pytest.raises(FileNotFoundError, match="images"):
    prepare_real.prepare(
      "image_mask_folder", manual_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=8
    )


def test_a_split_the_run_reads_but_the_dataset_lacks_is_named_before_any_stage(tmp_path):
  from configs import default
  from configs import synthetic
  from saliency_jax.trust import config_check
  from saliency_jax.trust import study

  root = tmp_path / "no_validation"
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  rng = np.random.default_rng(2)
  mask = np.zeros((12, 12), np.uint8)
  mask[2:6, 3:7] = 255
  rows = ["id,label,split"]
  for i in range(6):
    _png(root / "images" / f"i{i}.png", rng.integers(0, 256, (12, 12)).astype(np.uint8))
    _png(root / "masks" / f"i{i}.png", mask)
    rows.append(f"i{i},1,{'train' if i < 2 else 'test'}")
  (root / "labels.csv").write_text("\n".join(rows) + "\n")
  data_dir = str(tmp_path / "tfds")
  name, _ = prepare_real.prepare(
    "image_mask_folder", manual_dir=str(root), data_dir=data_dir, image_size=8
  )
  config = default.get_config()
  config.data.name, config.data.data_dir = name, data_dir
  workdir = tmp_path / "run"
  with pytest.raises(config_check.ConfigError) as raised:
    study.Study(config, str(workdir))
  assert not workdir.exists()  # stopped before any stage
  problems = [p for field, p in raised.value.problems if field == "data.name"]
  assert len(problems) == 1, raised.value.problems
  assert "has no 'validation' split" in problems[0]
  for reader in ("models ['A1'", "localization.seeds", "study.chexlocalize"):
    assert reader in problems[0]
  # Nothing that reads validation: no problem with the splits.
  config.localization.seeds = ()
  config.study.chexlocalize.enabled = False
  config.models = [dict(m, weights="given.msgpack") for m in config.models]
  config_problems = []
  try:
    config_check.validate(config)
  except config_check.ConfigError as e:
    config_problems = e.problems
  assert not [p for field, p in config_problems if field == "data.name"]
  # The synthetic dataset's splits come from its counts.
  config = synthetic.get_config()
  config.data.num_train = 0
  with pytest.raises(config_check.ConfigError, match="no 'train' split.*average training mask"):
    config_check.validate(config)
