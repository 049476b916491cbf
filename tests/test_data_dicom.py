"""Tests of DICOM decoding (saliency_jax.data.dicom) on files written here.

Expected pixels are computed from the DICOM standard's formulas (PS3.3
C.11.1 rescale, C.11.2.1.2.1 LINEAR window, C.11.2.1.1 VOI LUT), not with
pydicom's processing functions.
"""

import io
import os

import numpy as np
from PIL import Image
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
import pytest
import skimage.transform

from saliency_jax.data import dicom


def write_dicom(
  path,
  arr,
  *,
  photometric="MONOCHROME2",
  bits_stored=None,
  slope=None,
  intercept=None,
  center=None,
  width=None,
  voi_lut=None,
  compress=None,
  patient_id="patient",
  sop_instance_uid=None,
):
  """Writes `arr` ([rows, cols] uint8/uint16/int16) as a DICOM file.

  voi_lut: optional (first_mapped, lut values, bits per entry).
  compress: optional transfer syntax UID to compress with (pydicom encoder).
  """
  arr = np.asarray(arr)
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
  meta.MediaStorageSOPInstanceUID = sop_instance_uid or uid.generate_uid()
  meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.PatientID = patient_id
  ds.Modality = "CR"
  ds.Rows, ds.Columns = arr.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = arr.dtype.itemsize * 8
  ds.BitsStored = bits_stored or ds.BitsAllocated
  ds.HighBit = ds.BitsStored - 1
  ds.PixelRepresentation = int(np.issubdtype(arr.dtype, np.signedinteger))
  if slope is not None:
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
  if center is not None:
    ds.WindowCenter = center
    ds.WindowWidth = width
  if voi_lut is not None:
    first, values, bits = voi_lut
    item = Dataset()
    item.LUTDescriptor = [len(values), first, bits]
    item.add_new(0x00283006, "US", [int(v) for v in values])  # LUT Data
    ds.VOILUTSequence = Sequence([item])
  ds.PixelData = arr.tobytes()
  if compress is not None:
    ds.compress(compress, generate_instance_uid=False)
  ds.save_as(path, enforce_file_format=True)
  return path


def linear_window(v, center, width, lo, hi):
  """PS3.3 C.11.2.1.2.1 (LINEAR), output scaled to [0, 1] of [lo, hi]."""
  v = np.asarray(v, np.float64)
  out = (v - (center - 0.5)) / (width - 1) + 0.5
  out = np.where(v <= center - 0.5 - (width - 1) / 2, 0.0, out)
  out = np.where(v > center - 0.5 + (width - 1) / 2, 1.0, out)
  del lo, hi  # the window maps onto the whole output range
  return out


@pytest.fixture
def ramp12():
  """A 64x48 non-square 12-bit ramp covering 0..4095."""
  return (np.arange(64 * 48).reshape(64, 48) * 4095 // (64 * 48 - 1)).astype(np.uint16)


def test_8bit_monochrome2(tmp_path):
  arr = np.random.default_rng(0).integers(0, 256, (64, 48)).astype(np.uint8)
  image = dicom.read_dicom(write_dicom(tmp_path / "a.dcm", arr))
  np.testing.assert_allclose(image.pixels, arr / 255.0, atol=1e-6)
  assert image.pixels.dtype == np.float64 and image.shape == (64, 48)
  assert image.bits_stored == 8 and image.patient_id == "patient"


def test_8bit_monochrome1_inverted(tmp_path):
  arr = np.random.default_rng(1).integers(0, 256, (64, 48)).astype(np.uint8)
  image = dicom.read_dicom(write_dicom(tmp_path / "a.dcm", arr, photometric="MONOCHROME1"))
  np.testing.assert_allclose(image.pixels, 1.0 - arr / 255.0, atol=1e-6)


def test_16bit_normalized_by_bits_stored(tmp_path, ramp12):
  image = dicom.read_dicom(write_dicom(tmp_path / "a.dcm", ramp12, bits_stored=12))
  np.testing.assert_allclose(image.pixels, ramp12 / 4095.0, atol=1e-6)
  assert image.pixels.max() == 1.0


def test_rescale_with_negative_slope(tmp_path, ramp12):
  # out = 4095 - v over the range [0, 4095]: bright where stored values are low.
  image = dicom.read_dicom(
    write_dicom(tmp_path / "a.dcm", ramp12, bits_stored=12, slope=-1.0, intercept=4095.0)
  )
  np.testing.assert_allclose(image.pixels, (4095.0 - ramp12) / 4095.0, atol=1e-6)


def test_rescale_then_window(tmp_path, ramp12):
  path = write_dicom(
    tmp_path / "a.dcm",
    ramp12,
    bits_stored=12,
    slope=2.0,
    intercept=-100.0,
    center=3000.0,
    width=4000.0,
  )
  modality = ramp12 * 2.0 - 100.0
  expected = linear_window(modality, 3000.0, 4000.0, -100.0, 8090.0)
  image = dicom.read_dicom(path)
  np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
  assert (image.pixels == 0).any() and (image.pixels == 1).any()
  assert ((image.pixels > 0) & (image.pixels < 1)).any()


def test_signed_window_monochrome1(tmp_path):
  arr = np.linspace(-3000, 3000, 64 * 48).round().astype(np.int16).reshape(64, 48)
  path = write_dicom(tmp_path / "a.dcm", arr, photometric="MONOCHROME1", center=0.0, width=1000.0)
  expected = 1.0 - linear_window(arr, 0.0, 1000.0, -32768, 32767)
  np.testing.assert_allclose(dicom.read_dicom(path).pixels, expected, atol=1e-6)


def test_signed_no_window(tmp_path):
  arr = np.array([[-2048, -1, 0, 2047]], np.int16).repeat(3, axis=0)
  path = write_dicom(tmp_path / "a.dcm", arr, bits_stored=12)
  expected = (arr + 2048.0) / 4095.0
  np.testing.assert_allclose(dicom.read_dicom(path).pixels, expected, atol=1e-6)


def test_voi_lut_sequence(tmp_path):
  arr = np.array([[0, 5, 10, 15], [20, 100, 3, 7]], np.uint16)
  lut = (np.arange(16) * 4000) % 4096  # 16 entries from value 2, 12-bit out
  path = write_dicom(tmp_path / "a.dcm", arr, bits_stored=12, voi_lut=(2, lut, 12))
  expected = lut[np.clip(arr.astype(int) - 2, 0, 15)] / 4095.0
  np.testing.assert_allclose(dicom.read_dicom(path).pixels, expected, atol=1e-6)


def test_rle_lossless_compressed_equals_uncompressed(tmp_path, ramp12):
  plain = dicom.read_dicom(write_dicom(tmp_path / "a.dcm", ramp12, bits_stored=12))
  packed = dicom.read_dicom(
    write_dicom(tmp_path / "b.dcm", ramp12, bits_stored=12, compress=uid.RLELossless)
  )
  assert packed.transfer_syntax == "RLE Lossless"
  np.testing.assert_array_equal(packed.pixels, plain.pixels)


def test_jpeg_baseline_through_pillow_plugin(tmp_path):
  arr = (np.add.outer(np.arange(64) * 3, np.arange(48) * 2) % 256).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(arr).save(buffer, format="JPEG", quality=90)
  path = write_dicom(tmp_path / "a.dcm", arr)
  ds = pydicom.dcmread(path)
  ds.PixelData = encapsulate([buffer.getvalue()])
  ds["PixelData"].VR = "OB"
  ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
  ds.save_as(path)
  image = dicom.read_dicom(path)
  assert image.transfer_syntax == "JPEG Baseline (Process 1)"
  decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
  np.testing.assert_array_equal(image.pixels, decoded / 255.0)


def test_missing_plugin_names_syntax_and_packages(tmp_path, ramp12):
  path = write_dicom(tmp_path / "a.dcm", ramp12, bits_stored=12, compress=uid.RLELossless)
  ds = pydicom.dcmread(path)
  # Claim JPEG-LS, for which no decoder is installed here.
  ds.file_meta.TransferSyntaxUID = uid.JPEGLSLossless
  ds.save_as(path)
  with pytest.raises(dicom.DicomError) as info:
    dicom.read_dicom(path)
  assert info.value.reason == "missing_plugin"
  assert "JPEG-LS Lossless" in str(info.value)
  assert "pylibjpeg-libjpeg" in str(info.value)


@pytest.mark.parametrize(
  "keep,reasons",
  [
    (-100, {"truncated_pixel_data"}),
    (400, {"no_pixel_data", "unreadable"}),
    (100, {"unreadable"}),
  ],
)
def test_truncated(tmp_path, ramp12, keep, reasons):
  path = write_dicom(tmp_path / "a.dcm", ramp12, bits_stored=12)
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:keep])
  with pytest.raises(dicom.DicomError) as info:
    dicom.read_dicom(path)
  assert info.value.reason in reasons
  assert os.fspath(path) in str(info.value)


def test_not_dicom_and_missing(tmp_path):
  path = tmp_path / "junk.dcm"
  path.write_bytes(b"this is not a DICOM file" * 20)
  with pytest.raises(dicom.DicomError) as info:
    dicom.read_dicom(path)
  assert info.value.reason == "unreadable"
  with pytest.raises(dicom.DicomError) as info:
    dicom.read_dicom(tmp_path / "absent.dcm")
  assert info.value.reason == "missing_file"


def test_color_is_unsupported(tmp_path):
  path = write_dicom(tmp_path / "a.dcm", np.zeros((4, 6), np.uint8))
  ds = pydicom.dcmread(path)
  ds.PhotometricInterpretation = "PALETTE COLOR"
  ds.save_as(path)
  with pytest.raises(dicom.DicomError) as info:
    dicom.read_dicom(path)
  assert info.value.reason == "unsupported"


def test_quantize_rounding():
  x = np.array([0.0, 0.5, 1.0, 1.5 / 255, 0.49 / 255, 1.2, -0.1])
  np.testing.assert_array_equal(dicom.quantize(x, "uint8"), [0, 128, 255, 2, 0, 255, 0])
  np.testing.assert_array_equal(dicom.quantize(np.array([0.5, 1.0]), "uint16"), [32768, 65535])
  with pytest.raises(ValueError):
    dicom.quantize(x, "float32")


def test_load_image_resizes_like_skimage(tmp_path, ramp12):
  path = write_dicom(tmp_path / "a.dcm", ramp12, bits_stored=12, photometric="MONOCHROME1")
  image, info = dicom.load_image(path, 32, "uint16")
  assert image.shape == (32, 32, 1) and image.dtype == np.uint16
  assert info.shape == (64, 48)
  unit = 1.0 - ramp12 / 4095.0
  reference = skimage.transform.resize(unit, (32, 32), order=1, mode="edge", anti_aliasing=True)
  np.testing.assert_array_equal(
    image[..., 0], np.round(np.clip(reference, 0, 1) * 65535).astype(np.uint16)
  )
