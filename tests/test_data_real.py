"""Builds rsna_pneumonia and siim_acr_pneumothorax from small directories made here.

The manual directories hold real DICOM files written with pydicom (8/16 bit,
MONOCHROME1/2, rescale, window, RLE-compressed), CSVs with multi-box patients,
negatives, multi-region RLE images, and one example of each kind of bad input.
Expected pixels, boxes and masks are computed independently (formulas,
scikit-image, PIL), and the skip report must list exactly the bad inputs.
"""

import os

import numpy as np
from PIL import Image
import pydicom
from pydicom import uid
import pytest
import skimage.transform
import tensorflow_datasets as tfds
from test_data_dicom import linear_window
from test_data_dicom import write_dicom

import saliency_jax.data  # noqa: F401  (registers the builders)
from saliency_jax.data import build_report
from saliency_jax.data import geometry
from saliency_jax.data import prepare_real
from saliency_jax.data import real_builder
from saliency_jax.data import rle
from saliency_jax.data import rsna_pneumonia
from saliency_jax.data import siim_acr_pneumothorax
from saliency_jax.data import splits

SIZE = 32


def expected_image(unit, dtype=np.uint8):
  """Reference resize + quantization of a [0, 1] image to SIZE x SIZE."""
  resized = skimage.transform.resize(unit, (SIZE, SIZE), order=1, mode="edge", anti_aliasing=True)
  scale = np.iinfo(dtype).max
  return np.round(np.clip(resized, 0, 1) * scale).astype(dtype)[..., None]


def centers_in_boxes(boxes, size=SIZE):
  """Mask of pixels whose centers lie in any box (ymin <= r + .5 < ymax)."""
  r, c = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
  mask = np.zeros((size, size), bool)
  for ymin, xmin, ymax, xmax in boxes:
    mask |= (r >= ymin) & (r < ymax) & (c >= xmin) & (c < xmax)
  return mask


def pil_nearest(mask, size=SIZE):
  image = Image.fromarray(mask.astype(np.uint8))
  return np.array(image.resize((size, size), Image.NEAREST))


def corrupt(path, keep):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:keep])


def claim_jpeg_ls(path):
  ds = pydicom.dcmread(path)
  ds.file_meta.TransferSyntaxUID = uid.JPEGLSLossless
  ds.save_as(path)


def by_id(source):
  return {
    e["id"].decode() if isinstance(e["id"], bytes) else e["id"]: e
    for e in (source[i] for i in range(len(source)))
  }


def all_examples(sources):
  out = {}
  for split, source in sources.items():
    for key, example in by_id(source).items():
      out[key] = (split, example)
  return out


# ---------------------------------------------------------------------------
# RSNA

RSNA_ROWS, RSNA_COLS = 64, 48  # non-square, taller than wide


@pytest.fixture(scope="module")
def rsna_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("rsna_manual")
  images = root / rsna_pneumonia.IMAGES_DIR
  images.mkdir()
  rng = np.random.default_rng(0)
  arrays = {}

  def dcm(pid, arr, **kwargs):
    arrays[pid] = arr
    kwargs.setdefault("patient_id", pid)
    return write_dicom(images / f"{pid}.dcm", arr, **kwargs)

  shape = (RSNA_ROWS, RSNA_COLS)
  dcm("pos_two_boxes", rng.integers(0, 256, shape).astype(np.uint8))
  dcm(
    "pos_windowed_m1",
    rng.integers(0, 4096, shape).astype(np.uint16),
    bits_stored=12,
    photometric="MONOCHROME1",
    slope=2.0,
    intercept=-100.0,
    center=3000.0,
    width=4000.0,
  )
  dcm(
    "neg_rescaled",
    rng.integers(0, 4096, shape).astype(np.uint16),
    bits_stored=12,
    slope=-1.0,
    intercept=4095.0,
  )
  dcm("neg_m1", rng.integers(0, 256, shape).astype(np.uint8), photometric="MONOCHROME1")
  dcm("neg_rle", rng.integers(0, 256, shape).astype(np.uint8), compress=uid.RLELossless)
  for pid in ("neg_a", "neg_b", "neg_c", "class_conflict", "bad_row", "label_conflict"):
    dcm(pid, rng.integers(0, 256, shape).astype(np.uint8))
  corrupt(dcm("truncated", rng.integers(0, 256, shape).astype(np.uint8)), -200)
  dcm("box_outside", rng.integers(0, 256, shape).astype(np.uint8))
  dcm("wrong_id", rng.integers(0, 256, shape).astype(np.uint8), patient_id="somebody_else")
  claim_jpeg_ls(
    dcm("no_plugin", rng.integers(0, 256, shape).astype(np.uint8), compress=uid.RLELossless)
  )
  (root / rsna_pneumonia.LABELS_CSV).write_text(
    "patientId,x,y,width,height,Target\n"
    "pos_two_boxes,4.0,8.0,20.0,16.0,1\n"
    "pos_two_boxes,30.0,40.0,10.0,20.0,1\n"
    "pos_two_boxes,4.0,8.0,20.0,16.0,1\n"  # exact duplicate row
    "pos_windowed_m1,0,0,48,64,1\n"  # the whole image
    "neg_rescaled,,,,,0\n"
    "neg_m1,,,,,0\n"
    "neg_rle,,,,,0\n"
    "neg_a,,,,,0\n"
    "neg_b,,,,,0\n"
    "neg_c,,,,,0\n"
    "class_conflict,10,10,5,5,1\n"
    "bad_row,abc,1,2,3,1\n"
    ",1,2,3,4,1\n"
    "label_conflict,,,,,0\n"
    "label_conflict,1,2,3,4,1\n"
    "missing_file,,,,,0\n"
    "truncated,,,,,0\n"
    "box_outside,40,10,20,5,1\n"  # x + width = 60 > 48 columns
    "wrong_id,,,,,0\n"
    "no_plugin,,,,,0\n"
  )
  (root / rsna_pneumonia.CLASS_INFO_CSV).write_text(
    "patientId,class\n"
    "pos_two_boxes,Lung Opacity\n"
    "class_conflict,Normal\n"
    "neg_a,No Lung Opacity / Not Normal\n"
  )
  return root, arrays


RSNA_SKIPS = {
  "csv_row_unparsable": 2,  # bad_row, the row without patientId
  "label_conflict": 2,  # label_conflict, class_conflict
  "dicom_missing_file": 1,
  "dicom_truncated_pixel_data": 1,
  "box_outside_image": 1,
  "id_mismatch": 1,
  "dicom_missing_plugin": 1,
}
RSNA_GOOD = {
  "pos_two_boxes",
  "pos_windowed_m1",
  "neg_rescaled",
  "neg_m1",
  "neg_rle",
  "neg_a",
  "neg_b",
  "neg_c",
}


def seed_filling_every_split(groups, good, fractions=splits.DEFAULT_FRACTIONS):
  """The first seed whose split by patient gives each split a good image.

  Args:
    groups: {image id: patient}.
    good: the ids that are not skipped.
    fractions: split fractions.
  """
  for seed in range(100):
    assignment = splits.split_examples(groups, seed=seed, fractions=fractions)
    if all(any(assignment[i] == s for i in good) for s in splits.SPLITS):
      return seed
  raise AssertionError("no seed fills every split")


@pytest.fixture(scope="module")
def rsna_seed(rsna_dir):
  root, _ = rsna_dir
  records = rsna_pneumonia.read_labels(str(root), build_report.BuildReport("x"))
  return seed_filling_every_split({r.id: r.id for r in records}, RSNA_GOOD)


@pytest.fixture(scope="module")
def rsna_built(rsna_dir, rsna_seed, tmp_path_factory):
  root, arrays = rsna_dir
  data_dir = str(tmp_path_factory.mktemp("rsna_data"))
  name, report = prepare_real.prepare(
    "rsna_pneumonia", manual_dir=str(root), data_dir=data_dir, image_size=SIZE, split_seed=rsna_seed
  )
  return name, data_dir, report, arrays


def test_rsna_report(rsna_built, rsna_seed):
  name, data_dir, report, _ = rsna_built
  config = f"{SIZE}_seed{rsna_seed}" if rsna_seed else f"{SIZE}"
  assert name == f"rsna_pneumonia/{config}"
  skipped = {k: v["count"] for k, v in report["skipped"].items()}
  assert skipped == RSNA_SKIPS
  assert report["num_written"] == len(RSNA_GOOD)
  assert report["skipped"]["box_outside_image"]["examples"][0]["id"] == ("box_outside")
  assert "JPEG-LS" in report["skipped"]["dicom_missing_plugin"]["examples"][0]["detail"]
  # The JSON next to the dataset holds the same report.
  dataset_dir = os.path.join(data_dir, name, "1.0.0")
  assert build_report.load_report(dataset_dir) == report
  text = build_report.format_report(report)
  assert "id_mismatch: 1" in text and "e.g. wrong_id" in text


def test_rsna_examples(rsna_built):
  name, data_dir, _, arrays = rsna_built
  sources = tfds.data_source(name, data_dir=data_dir)
  examples = all_examples(sources)
  assert set(examples) == RSNA_GOOD
  for _, e in examples.values():
    assert e["image"].shape == (SIZE, SIZE, 1) and e["image"].dtype == np.uint8
    assert e["mask"].shape == (SIZE, SIZE, 1) and e["mask"].dtype == np.uint8
    assert e["boxes"].dtype == np.float32 and e["boxes"].shape[1:] == (4,)

  # Two boxes (the duplicate row dropped), scaled by 32/64 in y, 32/48 in x.
  e = examples["pos_two_boxes"][1]
  assert e["label"] == 1
  sy, sx = SIZE / RSNA_ROWS, SIZE / RSNA_COLS
  boxes = np.array([[8 * sy, 4 * sx, 24 * sy, 24 * sx], [40 * sy, 30 * sx, 60 * sy, 40 * sx]])
  np.testing.assert_allclose(e["boxes"], boxes, rtol=1e-6)
  np.testing.assert_array_equal(e["mask"][..., 0], centers_in_boxes(boxes))
  np.testing.assert_array_equal(e["image"], expected_image(arrays["pos_two_boxes"] / 255.0))

  # Rescale, then window, then MONOCHROME1 inversion; the box covers it all.
  e = examples["pos_windowed_m1"][1]
  unit = 1.0 - linear_window(arrays["pos_windowed_m1"] * 2.0 - 100.0, 3000.0, 4000.0, None, None)
  np.testing.assert_array_equal(e["image"], expected_image(unit))
  np.testing.assert_allclose(e["boxes"], [[0, 0, SIZE, SIZE]])
  assert e["mask"].all()

  e = examples["neg_rescaled"][1]
  assert e["label"] == 0 and e["boxes"].shape == (0, 4) and not e["mask"].any()
  np.testing.assert_array_equal(
    e["image"], expected_image((4095.0 - arrays["neg_rescaled"]) / 4095.0)
  )
  np.testing.assert_array_equal(
    examples["neg_m1"][1]["image"], expected_image(1.0 - arrays["neg_m1"] / 255.0)
  )
  np.testing.assert_array_equal(
    examples["neg_rle"][1]["image"], expected_image(arrays["neg_rle"] / 255.0)
  )


def test_rsna_split_follows_seeded_patient_split(rsna_built, rsna_dir, rsna_seed):
  name, data_dir, _, _ = rsna_built
  examples = all_examples(tfds.data_source(name, data_dir=data_dir))
  # The split is computed over every patient of the CSV (skipped ones too).
  root, _ = rsna_dir
  report = build_report.BuildReport("x")
  records = rsna_pneumonia.read_labels(str(root), report)
  assignment = splits.split_by_group([r.id for r in records], seed=rsna_seed)
  for pid, (split, _) in examples.items():
    assert assignment[pid] == split


def test_rsna_split_csv_and_uint16(rsna_dir, tmp_path):
  root, arrays = rsna_dir
  split_csv = tmp_path / "pneumonia_splits.csv"
  split_csv.write_text(
    ",Image_ID,Split\n"
    "0,pos_two_boxes.png,train\n"
    "1,neg_a.png,val\n"
    "2,neg_b.png,test\n"
    "3,not_in_labels.png,test\n"
  )
  name, report = prepare_real.prepare(
    "rsna_pneumonia",
    manual_dir=str(root),
    data_dir=str(tmp_path / "d"),
    image_size=SIZE,
    image_dtype="uint16",
    split_csv=str(split_csv),
  )
  assert name.startswith(f"rsna_pneumonia/{SIZE}_u16_csv")
  sources = tfds.data_source(name, data_dir=str(tmp_path / "d"))
  assert {s: sorted(by_id(src)) for s, src in sources.items()} == {
    "train": ["pos_two_boxes"],
    "validation": ["neg_a"],
    "test": ["neg_b"],
  }
  image = by_id(sources["train"])["pos_two_boxes"]["image"]
  assert image.dtype == np.uint16
  np.testing.assert_array_equal(image, expected_image(arrays["pos_two_boxes"] / 255.0, np.uint16))
  assert report["notes"]["split_csv_id_not_in_labels"]["count"] == 1
  # CSV problems are reported whatever the split; bad DICOMs are never read.
  assert {k: v["count"] for k, v in report["skipped"].items()} == {
    "csv_row_unparsable": 2,
    "label_conflict": 2,
  }


def test_missing_manual_dir_explains(tmp_path):
  with pytest.raises(real_builder.ManualDirError) as info:
    prepare_real.prepare(
      "rsna_pneumonia",
      manual_dir=str(tmp_path / "no"),
      data_dir=str(tmp_path / "d"),
      image_size=SIZE,
    )
  message = str(info.value)
  assert "kaggle.com/c/rsna-pneumonia-detection-challenge" in message
  assert "stage_2_train_images/<patientId>.dcm" in message
  (tmp_path / "siim").mkdir()
  (tmp_path / "siim" / "train-rle.csv").write_text("ImageId, EncodedPixels\n")
  with pytest.raises(real_builder.ManualDirError) as info:
    prepare_real.prepare(
      "siim_acr_pneumothorax",
      manual_dir=str(tmp_path / "siim"),
      data_dir=str(tmp_path / "d"),
      image_size=SIZE,
    )
  assert "missing dicom-images-train" in str(info.value)
  assert "kaggle.com/c/siim-acr-pneumothorax-segmentation" in str(info.value)


class _Interrupt(Exception):
  pass


def test_interrupted_build_restarts(rsna_dir, rsna_seed, tmp_path, monkeypatch):
  root, _ = rsna_dir
  data_dir = str(tmp_path / "d")
  calls = []

  def failing(record, options):
    calls.append(record.id)
    if len(calls) == 3:
      raise _Interrupt()
    return rsna_pneumonia.make_example(record, options)

  monkeypatch.setattr(rsna_pneumonia.RsnaPneumonia, "make_example", staticmethod(failing))
  with pytest.raises(_Interrupt):
    prepare_real.prepare(
      "rsna_pneumonia",
      manual_dir=str(root),
      data_dir=data_dir,
      image_size=SIZE,
      split_seed=rsna_seed,
    )
  monkeypatch.undo()
  config_dir = os.path.join(
    data_dir, "rsna_pneumonia", real_builder.config_name(SIZE, split_seed=rsna_seed)
  )
  # A build killed outright leaves its incomplete directory: fake one.
  stale = os.path.join(config_dir, "incomplete.ABCDEF_1.0.0")
  os.makedirs(stale)
  with open(os.path.join(stale, "rsna_pneumonia-train.array_record-00000-of-00001"), "wb") as f:
    f.write(b"half written")
  name, report = prepare_real.prepare(
    "rsna_pneumonia", manual_dir=str(root), data_dir=data_dir, image_size=SIZE, split_seed=rsna_seed
  )
  assert not os.path.exists(stale)
  assert os.listdir(config_dir) == ["1.0.0"]
  assert report["num_written"] == len(RSNA_GOOD)
  sources = tfds.data_source(name, data_dir=data_dir)
  assert sum(len(s) for s in sources.values()) == len(RSNA_GOOD)
  # A second call finds the dataset and does not rebuild.
  again, _ = prepare_real.prepare(
    "rsna_pneumonia",
    manual_dir="/nonexistent",
    data_dir=data_dir,
    image_size=SIZE,
    split_seed=rsna_seed,
  )
  assert again == name
  # overwrite rebuilds from the manual directory.
  _, rebuilt = prepare_real.prepare(
    "rsna_pneumonia",
    manual_dir=str(root),
    data_dir=data_dir,
    image_size=SIZE,
    split_seed=rsna_seed,
    overwrite=True,
  )
  assert rebuilt["num_written"] == len(RSNA_GOOD)
  assert os.listdir(config_dir) == ["1.0.0"]


def test_rsna_through_grain_pipeline(rsna_built):
  from saliency_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  name, data_dir, _, _ = rsna_built
  sources = tfds.data_source(name, data_dir=data_dir)
  source = sources["train"]
  dataset = pipeline.make_dataset(
    source, batch_size=2, seed=0, channels=3, num_epochs=1, shard_by_process=False
  )
  batches = list(dataset)
  assert len(batches) == len(source) // 2
  seen = {}
  for batch in batches:
    assert batch["image"].shape == (2, SIZE, SIZE, 3)
    for image, index, mask in zip(batch["image"], batch["index"], batch["mask"]):
      seen[int(index)] = True
      stored = source[int(index)]
      np.testing.assert_allclose(
        image, np.repeat(stored["image"] / 127.5 - 1.0, 3, axis=-1), atol=1e-6
      )
      np.testing.assert_array_equal(mask, stored["mask"][..., 0] == 1)
  assert len(seen) == len(batches) * 2


# ---------------------------------------------------------------------------
# SIIM

SIIM_ROWS, SIIM_COLS = 40, 56  # non-square, wider than tall
# Two images of one patient: the split by patient keeps them together.
SIIM_PATIENTS = {"1.2.3.1": "pt_shared", "1.2.3.6": "pt_shared"}
SIIM_FRACTIONS = (0.5, 0.25, 0.25)


def _rect(r0, r1, c0, c1):
  mask = np.zeros((SIIM_ROWS, SIIM_COLS), bool)
  mask[r0:r1, c0:c1] = True
  return mask


@pytest.fixture(scope="module")
def siim_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("siim_manual")
  rng = np.random.default_rng(1)
  arrays, masks = {}, {}
  shape = (SIIM_ROWS, SIIM_COLS)

  def dcm(image_id, arr, depth=3, **kwargs):
    # Nested like dicom-images-train/<study>/<series>/<ImageId>.dcm
    folder = root / siim_acr_pneumothorax.IMAGES_DIR / f"study_{image_id}"
    if depth == 3:
      folder = folder / "series"
    folder.mkdir(parents=True, exist_ok=True)
    arrays[image_id] = arr
    kwargs.setdefault("sop_instance_uid", image_id)
    kwargs.setdefault("patient_id", SIIM_PATIENTS.get(image_id, f"pt_{image_id}"))
    return write_dicom(folder / f"{image_id}.dcm", arr, **kwargs)

  dcm("1.2.3.1", rng.integers(0, 256, shape).astype(np.uint8))
  dcm("1.2.3.2", rng.integers(0, 256, shape).astype(np.uint8), depth=2)
  dcm(
    "1.2.3.3",
    rng.integers(0, 65536, shape).astype(np.uint16),
    photometric="MONOCHROME1",
    center=30000.0,
    width=20000.0,
  )
  dcm("1.2.3.4", rng.integers(0, 256, shape).astype(np.uint8), compress=uid.RLELossless)
  for image_id in ("1.2.3.5", "1.2.3.6", "1.2.9.1", "1.2.9.2", "1.2.9.3"):
    dcm(image_id, rng.integers(0, 256, shape).astype(np.uint8))
  dcm("1.2.9.4", rng.integers(0, 256, shape).astype(np.uint8), sop_instance_uid="1.2.999")
  corrupt(dcm("1.2.9.5", rng.integers(0, 256, shape).astype(np.uint8)), 300)
  dcm("1.2.9.7", rng.integers(0, 256, shape).astype(np.uint8))
  dcm("1.2.9.7", rng.integers(0, 256, shape).astype(np.uint8), depth=2)

  masks["1.2.3.1"] = (_rect(2, 10, 3, 9), _rect(20, 38, 30, 50))  # 2 regions
  masks["1.2.3.3"] = (_rect(5, 35, 0, 56),)
  masks["1.2.3.4"] = (_rect(0, 40, 55, 56),)  # ends on the last pixel
  masks["1.2.3.5"] = (_rect(1, 2, 1, 2),)  # vanishes under nearest resizing
  lines = ["ImageId, EncodedPixels"]  # the leading space of the Kaggle header
  for image_id, regions in masks.items():
    lines += [f"{image_id}, {rle.rle_encode(m)}" for m in regions]
  lines += [
    "1.2.3.2, -1",
    "1.2.3.6, -1",
    f"1.2.9.1, {SIIM_ROWS * SIIM_COLS - 3} 4",
    "1.2.9.2, 1 2 3",
    "1.2.9.3, 1 2, 5 6",
    "1.2.9.4, -1",
    "1.2.9.5, -1",
    "1.2.9.6, -1",
    "1.2.9.7, -1",
  ]
  (root / siim_acr_pneumothorax.RLE_CSV).write_text("\n".join(lines) + "\n")
  return root, arrays, masks


SIIM_SKIPS = {
  "rle_past_image": 1,
  "rle_malformed": 1,
  "csv_row_unparsable": 1,
  "id_mismatch": 1,
  "dicom_no_pixel_data": 1,
  "dicom_missing_file": 1,
  "duplicate_file": 1,
}
SIIM_GOOD = {f"1.2.3.{i}" for i in range(1, 7)}


@pytest.fixture(scope="module")
def siim_groups(siim_dir):
  root, _, _ = siim_dir
  records = siim_acr_pneumothorax.read_rles(str(root), build_report.BuildReport("x"))
  return {r.id: r.group for r in records}


@pytest.fixture(scope="module")
def siim_seed(siim_groups):
  return seed_filling_every_split(siim_groups, SIIM_GOOD, SIIM_FRACTIONS)


@pytest.fixture(scope="module")
def siim_built(siim_dir, siim_seed, tmp_path_factory):
  root, arrays, masks = siim_dir
  data_dir = str(tmp_path_factory.mktemp("siim_data"))
  name, report = prepare_real.prepare(
    "siim_acr_pneumothorax",
    manual_dir=str(root),
    data_dir=data_dir,
    image_size=SIZE,
    split_seed=siim_seed,
    split_fractions=SIIM_FRACTIONS,
  )
  return name, data_dir, report, arrays, masks


def test_siim_report(siim_built, siim_seed):
  name, _, report, _, _ = siim_built
  assert name == "siim_acr_pneumothorax/" + real_builder.config_name(
    SIZE, split_seed=siim_seed, split_fractions=SIIM_FRACTIONS
  )
  assert name.endswith("_f50-25-25")
  assert {k: v["count"] for k, v in report["skipped"].items()} == SIIM_SKIPS
  assert report["num_written"] == len(SIIM_GOOD)
  assert report["notes"]["mask_redrawn_after_resize"]["count"] == 1
  assert report["notes"]["mask_redrawn_after_resize"]["examples"][0]["id"] == ("1.2.3.5")


def test_siim_examples(siim_built, siim_groups, siim_seed):
  name, data_dir, _, arrays, masks = siim_built
  examples = all_examples(tfds.data_source(name, data_dir=data_dir))
  assert set(examples) == SIIM_GOOD
  # Grouped by the DICOM PatientID.
  assert siim_groups["1.2.3.1"] == siim_groups["1.2.3.6"] == "pt_shared"
  assert examples["1.2.3.1"][0] == examples["1.2.3.6"][0]
  assignment = splits.split_examples(siim_groups, seed=siim_seed, fractions=SIIM_FRACTIONS)
  assert all(assignment[k] == split for k, (split, _) in examples.items())
  labels = {k: int(e["label"]) for k, (_, e) in examples.items()}
  assert labels == {
    "1.2.3.1": 1,
    "1.2.3.2": 0,
    "1.2.3.3": 1,
    "1.2.3.4": 1,
    "1.2.3.5": 1,
    "1.2.3.6": 0,
  }
  for image_id, (_, e) in examples.items():
    assert e["boxes"].shape == (0, 4)
    full = np.zeros((SIIM_ROWS, SIIM_COLS), bool)
    for region in masks.get(image_id, ()):
      full |= region
    if image_id == "1.2.3.5":
      # Pixel (1, 1) falls between nearest samples (columns 0, 1.75, ...):
      # redrawn where its center lands, (1.5 * 32/40, 1.5 * 32/56) -> (1, 0).
      assert not pil_nearest(full).any()
      expected = np.zeros((SIZE, SIZE), np.uint8)
      expected[1, 0] = 1
    else:
      expected = pil_nearest(full)
    np.testing.assert_array_equal(e["mask"][..., 0], expected)
  np.testing.assert_array_equal(
    examples["1.2.3.1"][1]["image"], expected_image(arrays["1.2.3.1"] / 255.0)
  )
  unit = 1.0 - linear_window(arrays["1.2.3.3"], 30000.0, 20000.0, None, None)
  np.testing.assert_array_equal(examples["1.2.3.3"][1]["image"], expected_image(unit))
  np.testing.assert_array_equal(
    examples["1.2.3.4"][1]["image"], expected_image(arrays["1.2.3.4"] / 255.0)
  )


def test_siim_with_workers_matches(siim_dir, siim_built, siim_seed, tmp_path):
  root, _, _ = siim_dir
  name, data_dir, report, _, _ = siim_built
  name2, report2 = prepare_real.prepare(
    "siim_acr_pneumothorax",
    manual_dir=str(root),
    data_dir=str(tmp_path / "d"),
    image_size=SIZE,
    split_seed=siim_seed,
    split_fractions=SIIM_FRACTIONS,
    num_workers=2,
  )
  assert name2 == name and report2 == report
  a = all_examples(tfds.data_source(name, data_dir=data_dir))
  b = all_examples(tfds.data_source(name2, data_dir=str(tmp_path / "d")))
  assert a.keys() == b.keys()
  for key in a:
    assert a[key][0] == b[key][0]
    for field in ("image", "mask", "label", "boxes"):
      np.testing.assert_array_equal(a[key][1][field], b[key][1][field])


# ---------------------------------------------------------------------------
# Splits and geometry


def test_split_by_group_deterministic_and_grouped():
  groups = [f"patient{i // 2}" for i in range(200)]  # two images per patient
  ids = [f"image{i}" for i in range(200)]
  a = splits.split_examples(dict(zip(ids, groups)), seed=3)
  b = splits.split_examples(dict(reversed(list(zip(ids, groups)))), seed=3)
  assert a == b
  for i in range(0, 200, 2):
    assert a[ids[i]] == a[ids[i + 1]]
  counts = {s: sum(v == s for v in a.values()) for s in splits.SPLITS}
  assert counts == {"train": 160, "validation": 20, "test": 20}
  c = splits.split_examples(dict(zip(ids, groups)), seed=4)
  assert c != a
  with pytest.raises(ValueError):
    splits.split_by_group(groups, seed=0, fractions=(0.5, 0.5, 0.5))


def test_read_split_csv(tmp_path):
  path = tmp_path / "s.csv"
  path.write_text(",Image_ID,Split\n0,a.png,train\n1,b,val\n2,c.dcm,test\n")
  assert splits.read_split_csv(path) == {"a": "train", "b": "validation", "c": "test"}
  path.write_text("Image_ID,Split\na,train\na,test\n")
  with pytest.raises(ValueError, match="both"):
    splits.read_split_csv(path)
  path.write_text("Image_ID,Split\na,holdout\n")
  with pytest.raises(ValueError, match="unknown split"):
    splits.read_split_csv(path)
  path.write_text("image,split\na,train\n")
  with pytest.raises(ValueError, match="Image_ID"):
    splits.read_split_csv(path)


def test_rasterize_boxes_hand_worked():
  # Box rows [1.2, 3.5): centers 1.5, 2.5 in; 3.5 out. Columns [0, 2): 0, 1.
  mask = geometry.rasterize_boxes(np.array([[1.2, 0.0, 3.5, 2.0]]), 5)
  expected = np.zeros((5, 5), np.uint8)
  expected[1:3, 0:2] = 1
  np.testing.assert_array_equal(mask, expected)
  # A box thinner than a pixel keeps the pixel holding its center.
  mask = geometry.rasterize_boxes(np.array([[2.1, 3.6, 2.3, 3.9]]), 5)
  assert mask.sum() == 1 and mask[2, 3] == 1
