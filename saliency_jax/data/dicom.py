"""Reading chest X-ray DICOM files into normalized grayscale images.

`read_dicom(path)` returns the image as float64 in [0, 1] where 1 is bright
(bone white, as displayed), following the DICOM display pipeline:

1. stored values (pydicom's pixel-data plugins decode compressed transfer
   syntaxes; a missing plugin is a `DicomError` naming the packages to install);
2. the Modality LUT or Rescale Slope/Intercept (`apply_modality_lut`);
3. the VOI LUT, or the first Window Center/Width, when present (`apply_voi_lut`);
4. division by the range those steps can produce: the stored bit depth
   (BitsStored, signed or unsigned, times the rescale), or the LUT's bit depth;
   values outside are clipped;
5. MONOCHROME1 is inverted (1 - x) so that every image reads like MONOCHROME2.

`resize_unit_image` resizes with scikit-image (bilinear, with a Gaussian
anti-aliasing filter of sigma (factor - 1) / 2 when shrinking; the aspect ratio
is not kept: a non-square image is stretched to the square, as the study did)
and `quantize` stores the result as uint8 (x * 255) or uint16 (x * 65535),
rounded to nearest.
"""

import dataclasses
import os
from typing import Any

import numpy as np
import pydicom
from pydicom import errors as pydicom_errors
from pydicom import pixels as pydicom_pixels
from pydicom import uid as pydicom_uid
import skimage.transform

# Packages that provide pydicom pixel-data decoders, by transfer syntax.
_JPEG_LIBJPEG = "pylibjpeg and pylibjpeg-libjpeg (pip install 'saliency_jax[jpeg]')"
_JPEG2000 = "pylibjpeg and pylibjpeg-openjpeg (pip install 'saliency_jax[jpeg]')"
_DECODER_PACKAGES = {
  pydicom_uid.JPEGBaseline8Bit: _JPEG_LIBJPEG + ", or pillow",
  pydicom_uid.JPEGExtended12Bit: _JPEG_LIBJPEG + ", or pillow",
  pydicom_uid.JPEGLossless: _JPEG_LIBJPEG,
  pydicom_uid.JPEGLosslessSV1: _JPEG_LIBJPEG,
  pydicom_uid.JPEGLSLossless: _JPEG_LIBJPEG + ", or pyjpegls",
  pydicom_uid.JPEGLSNearLossless: _JPEG_LIBJPEG + ", or pyjpegls",
  pydicom_uid.JPEG2000Lossless: _JPEG2000 + ", or pillow",
  pydicom_uid.JPEG2000: _JPEG2000 + ", or pillow",
  pydicom_uid.HTJ2KLossless: _JPEG2000,
  pydicom_uid.HTJ2KLosslessRPCL: _JPEG2000,
  pydicom_uid.HTJ2K: _JPEG2000,
  pydicom_uid.RLELossless: "nothing (built in); pylibjpeg-rle is faster",
}


class DicomError(ValueError):
  """A DICOM file that cannot be turned into an image.

  Attributes:
    reason: short category for skip reports: "unreadable" (not DICOM, corrupt
      or truncated header), "no_pixel_data", "truncated_pixel_data",
      "missing_plugin", "unsupported" (color, multi-frame, unknown transfer
      syntax or photometric interpretation) or "invalid_header".
    path: the file.
  """

  def __init__(self, message: str, reason: str, path: str = ""):
    super().__init__(f"{path}: {message}" if path else message)
    self.reason = reason
    self.path = path


@dataclasses.dataclass(frozen=True)
class DicomImage:
  """A decoded DICOM image.

  Attributes:
    pixels: float64 [rows, columns] in [0, 1], 1 = bright (float64 so that
      16-bit values survive until they are quantized).
    bits_stored: BitsStored of the file.
    photometric_interpretation: as stored (MONOCHROME1 was inverted).
    transfer_syntax: the Transfer Syntax UID's name.
    patient_id: PatientID or None.
    sop_instance_uid: SOPInstanceUID or None.
  """

  pixels: np.ndarray
  bits_stored: int
  photometric_interpretation: str
  transfer_syntax: str
  patient_id: str | None
  sop_instance_uid: str | None

  @property
  def shape(self) -> tuple[int, int]:
    return self.pixels.shape


def _stored_range(ds: Any) -> tuple[float, float]:
  bits = int(ds.BitsStored)
  if int(ds.get("PixelRepresentation", 0)) == 0:
    return 0.0, float(2**bits - 1)
  return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def _rescaled(lo_hi: tuple[float, float], ds: Any) -> tuple[float, float]:
  slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
  if slope is None or intercept is None:
    return lo_hi
  a, b = (v * float(slope) + float(intercept) for v in lo_hi)
  return min(a, b), max(a, b)


def _modality_range(ds: Any) -> tuple[float, float]:
  """The range of values the Modality LUT / rescale step can produce."""
  if ds.get("ModalityLUTSequence"):
    depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
    return 0.0, float(2**depth - 1)
  return _rescaled(_stored_range(ds), ds)


def _has_voi_lut(ds: Any) -> bool:
  seq = ds.get("VOILUTSequence")
  return bool(seq) and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData"))


def _has_window(ds: Any) -> bool:
  return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _voi_range(ds: Any) -> tuple[float, float]:
  """The range of values after the VOI step (as pydicom computes it)."""
  if _has_voi_lut(ds):  # pydicom prefers the LUT over the window
    depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    return 0.0, float(2**depth - 1)
  # pydicom's apply_windowing maps the window onto the modality range (with
  # rescale applied to the stored range whenever slope/intercept are present).
  if ds.get("ModalityLUTSequence"):
    return _modality_range(ds)
  return _rescaled(_stored_range(ds), ds)


def _decode(ds: Any, path: str) -> np.ndarray:
  """Stored pixel values, with a clear error for a missing decoder."""
  tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
  name = getattr(tsyntax, "name", str(tsyntax))
  try:
    return ds.pixel_array
  except (RuntimeError, NotImplementedError) as e:
    message = str(e)
    if "missing dependencies" in message:
      packages = _DECODER_PACKAGES.get(tsyntax, "a pydicom pixel-data plugin")
      raise DicomError(
        f"pixel data in transfer syntax '{name}' ({tsyntax}) needs a "
        f"decoder that is not installed: install {packages}. "
        f"pydicom said: {message}",
        "missing_plugin",
        path,
      ) from None
    if "exceptions were raised" in message:  # a decoder exists, data is bad
      raise DicomError(f"corrupt '{name}' pixel data: {message}", "unreadable", path) from None
    raise DicomError(
      f"cannot decode transfer syntax '{name}': {message}", "unsupported", path
    ) from None
  except ValueError as e:
    message = str(e)
    reason = "truncated_pixel_data" if "less than expected" in message else "unreadable"
    raise DicomError(f"cannot decode pixel data: {message}", reason, path) from None
  except (AttributeError, KeyError, TypeError, EOFError, OSError) as e:
    raise DicomError(
      f"cannot decode pixel data: {type(e).__name__}: {e}", "unreadable", path
    ) from None


def unit_range_pixels(ds: Any, arr: np.ndarray) -> np.ndarray:
  """Maps stored values `arr` of dataset `ds` to float64 [0, 1], 1 = bright.

  Applies the modality LUT/rescale, the VOI LUT or window, the bit-depth
  normalization and the MONOCHROME1 inversion described in the module
  docstring.
  """
  photometric = str(ds.get("PhotometricInterpretation", ""))
  if photometric not in ("MONOCHROME1", "MONOCHROME2"):
    raise DicomError(
      f"photometric interpretation '{photometric}' is not grayscale "
      "(MONOCHROME1/MONOCHROME2 expected for chest X-rays)",
      "unsupported",
    )
  values = pydicom_pixels.apply_modality_lut(arr, ds)
  if _has_voi_lut(ds) or _has_window(ds):
    lo, hi = _voi_range(ds)
    values = pydicom_pixels.apply_voi_lut(values, ds, index=0)
  else:
    lo, hi = _modality_range(ds)
  if hi <= lo:
    raise DicomError(f"empty output range [{lo}, {hi}]", "invalid_header")
  unit = (np.asarray(values, np.float64) - lo) / (hi - lo)
  unit = np.clip(unit, 0.0, 1.0)
  if photometric == "MONOCHROME1":
    unit = 1.0 - unit
  return unit


def read_dicom(path: str | os.PathLike[str]) -> DicomImage:
  """Reads one grayscale single-frame DICOM file.

  Args:
    path: the .dcm file.

  Returns:
    A DicomImage with pixels float64 [rows, columns] in [0, 1].

  Raises:
    DicomError: missing/corrupt/truncated file, missing decoder plugin, or an
      image that is not a single grayscale frame. `err.reason` says which.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DicomError("file not found", "missing_file", path)
  try:
    ds = pydicom.dcmread(path)
  except pydicom_errors.InvalidDicomError as e:
    raise DicomError(f"not a DICOM file: {e}", "unreadable", path) from None
  except Exception as e:  # pylint: disable=broad-except
    # pydicom raises many types on corrupt headers (EOFError, struct.error...).
    raise DicomError(
      f"corrupt or truncated header: {type(e).__name__}: {e}", "unreadable", path
    ) from None
  if "PixelData" not in ds:
    raise DicomError("no Pixel Data element (the file may be truncated)", "no_pixel_data", path)
  try:
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits_stored = int(ds.BitsStored)
  except (AttributeError, TypeError, ValueError) as e:
    raise DicomError(f"invalid image header: {e}", "invalid_header", path) from None
  if samples != 1 or frames != 1:
    raise DicomError(
      f"expected one grayscale frame, got SamplesPerPixel={samples}, NumberOfFrames={frames}",
      "unsupported",
      path,
    )
  arr = _decode(ds, path)
  try:
    pixels = unit_range_pixels(ds, arr)
  except DicomError as e:
    raise DicomError(str(e), e.reason, path) from None
  except (ValueError, NotImplementedError, AttributeError, IndexError) as e:
    raise DicomError(f"invalid LUT or window: {e}", "invalid_header", path) from None
  tsyntax = ds.file_meta.get("TransferSyntaxUID")
  patient_id = ds.get("PatientID")
  sop_uid = ds.get("SOPInstanceUID")
  return DicomImage(
    pixels=pixels,
    bits_stored=bits_stored,
    photometric_interpretation=str(ds.PhotometricInterpretation),
    transfer_syntax=getattr(tsyntax, "name", str(tsyntax)),
    patient_id=None if patient_id is None else str(patient_id),
    sop_instance_uid=None if sop_uid is None else str(sop_uid),
  )


def resize_unit_image(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes float [H, W] in [0, 1] to `size` (bilinear, anti-aliased).

  Returns float64 [size[0], size[1]] in [0, 1].
  """
  pixels = np.asarray(pixels, np.float64)
  if tuple(pixels.shape) == tuple(size):
    return pixels
  out = skimage.transform.resize(
    pixels, size, order=1, mode="edge", anti_aliasing=True, preserve_range=True
  )
  return np.clip(out, 0.0, 1.0)


def quantize(pixels: np.ndarray, dtype: str | np.dtype = "uint8") -> np.ndarray:
  """Float [0, 1] -> uint8 (x * 255) or uint16 (x * 65535), rounded."""
  dtype = np.dtype(dtype)
  if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
    raise ValueError(f"dtype must be uint8 or uint16, got {dtype}")
  scale = float(np.iinfo(dtype).max)
  return np.round(np.clip(pixels, 0.0, 1.0) * scale).astype(dtype)


def load_image(
  path: str | os.PathLike[str], size: int, dtype: str = "uint8"
) -> tuple[np.ndarray, DicomImage]:
  """Reads, resizes to [size, size] and quantizes; returns ([S, S, 1], info)."""
  image = read_dicom(path)
  resized = resize_unit_image(image.pixels, (size, size))
  return quantize(resized, dtype)[..., None], image
