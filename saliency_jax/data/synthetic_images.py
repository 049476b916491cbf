"""Procedural chest-radiograph-like images with exactly known lesions (pure NumPy).

Each image is a frontal "radiograph" at S x S: a soft-tissue body on a dark background, two dark
lung fields, a bright mediastinum and heart, a spine, clavicles and ribs, a soft-tissue gradient and
fine texture. Positive images (label 1) carry 1-3 opacities inside the lungs: irregular blobs of
varying size, contrast and texture, whose pixel mask and bounding boxes are exact. Both classes
carry the same distractors (a bright "L" side marker, a line/tube, ECG electrodes), so a map that
merely finds bright things does not localize the lesions. `difficulty` divides the lesion
contrast (1.0: plainly visible lesions; 2.0: half the contrast).

Everything is deterministic: example `index` of `split` is drawn from its own generator seeded by
(seed, split, index), so an example does not depend on the order or the number of examples
generated (nor on the difficulty, except for the lesion pixels).

Coordinates: pixel (r, c) covers [r, r+1) x [c, c+1). Boxes are (ymin, xmin, ymax, xmax) in these
continuous pixel coordinates with exclusive ends, so `mask[ymin:ymax, xmin:xmax]` is the smallest
rectangle holding the lesion (the convention of box-labelled data such as RSNA's x, y, w, h).
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import functools
import math
import zlib

import numpy as np

from saliency_jax.data.splits import SPLITS

# Lesion contrast (added intensity on a [0, 1] scale) is drawn from this range divided by the
# difficulty. At the default difficulty (1.0) lesions are plainly visible, yet a CNN still has to
# tell their shape and texture from ribs, vessels and electrodes.
_CONTRAST = (0.30, 0.50)
DEFAULT_DIFFICULTY = 1.0


@dataclasses.dataclass(frozen=True)
class Example:
  """One generated example (the fields of the dataset contract, plus the lung mask)."""

  id: str
  image: np.ndarray  # uint8 [S, S, 1]
  label: int  # 0 or 1
  mask: np.ndarray  # uint8 [S, S, 1], values {0, 1}
  boxes: np.ndarray  # float32 [n, 4] (ymin, xmin, ymax, xmax), n = number of lesions
  lungs: np.ndarray  # bool [S, S], where lesions may lie (for diagnostics and tests)


def example_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
  """The seed of one example: a hash of (seed, split, index), independent of generation order."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  if seed < 0 or index < 0:
    raise ValueError(f"seed and index must be non-negative, got {seed=}, {index=}.")
  return np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index)])


@functools.lru_cache(maxsize=64)
def _gaussian_transfer(size: int, sigma: float) -> np.ndarray:
  """Fourier transfer function of a Gaussian blur of `sigma` pixels on a periodic grid."""
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.rfftfreq(size)[None, :]
  return np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
  """Gaussian noise blurred with `sigma` pixels, rescaled to zero mean and unit std.

  The blur is periodic (FFT), which is harmless for stationary noise and avoids multithreaded
  BLAS, which is slow on busy small machines.
  """
  spectrum = np.fft.rfft2(rng.standard_normal((size, size)))
  n = np.fft.irfft2(spectrum * _gaussian_transfer(size, sigma), s=(size, size))
  return ((n - n.mean()) / (n.std() + 1e-12)).astype(np.float32)


def _ellipse_radius(yy, xx, cy, cx, ry, rx, angle=0.0):
  """Normalized elliptical radius: < 1 inside the ellipse."""
  ca, sa = math.cos(angle), math.sin(angle)
  dy, dx = yy - cy, xx - cx
  u = (ca * dx + sa * dy) / rx
  v = (-sa * dx + ca * dy) / ry
  return np.sqrt(u * u + v * v)


def _soft_inside(rho, edge):
  """Smooth indicator of rho < 1 with an edge of relative width `edge`."""
  return 1.0 / (1.0 + np.exp(np.clip((rho - 1.0) / edge, -50, 50)))


def _draw_anatomy(rng, yy, xx, s):
  """Returns the background radiograph (float, ~[0, 1]) and the lungs (bool) at size s."""
  # Posture and body habitus vary per image.
  tilt = rng.uniform(-0.04, 0.04)
  cx = 0.5 + rng.uniform(-0.03, 0.03)
  body_rx = rng.uniform(0.44, 0.52)
  img = 0.08 + 0.04 * rng.random()
  # Trunk: a superellipse (square shoulders) extending below the image, plus the neck.
  trunk = (np.abs((xx - cx) / body_rx) ** 3 + np.abs((yy - 0.68) / 0.66) ** 3) ** (1 / 3)
  neck = _ellipse_radius(yy, xx, 0.0, cx, 0.2, 0.12)
  body = _soft_inside(np.minimum(trunk, neck), 0.04)
  # Soft tissue: brighter towards the abdomen and the shoulders, darker at the lateral edges.
  tissue = 0.48 + rng.uniform(-0.05, 0.05) + 0.16 * np.clip(yy - 0.72, 0, None) / 0.28
  tissue = tissue - 0.10 * (np.abs(xx - cx) / body_rx) ** 4
  img = img + body * (tissue - img)

  # Lungs: two tilted ellipses, the left lung (image right) narrower because of the heart.
  lung_cy = 0.46 + rng.uniform(-0.03, 0.03)
  lung_ry = rng.uniform(0.29, 0.33)
  gap = rng.uniform(0.05, 0.07)
  lung_rx = rng.uniform(0.17, 0.2)
  lung_params = (
    (lung_cy, cx - gap - lung_rx, lung_ry, lung_rx, -0.08 + tilt),
    (lung_cy + 0.01, cx + gap + 0.9 * lung_rx, lung_ry * 0.97, 0.9 * lung_rx, 0.08 + tilt),
  )
  lung_rho = np.minimum(*[_ellipse_radius(yy, xx, *p) for p in lung_params])
  lungs = lung_rho < 0.92  # Lesions stay clear of the soft lung edge.
  air = _soft_inside(lung_rho, 0.06)
  # Lungs are darkest laterally and at the apices' periphery; hila (medial) denser.
  lung_depth = rng.uniform(0.26, 0.32)
  hilum = 0.10 * np.exp(
    -(((np.abs(xx - cx) - gap - 0.05) / 0.07) ** 2) - ((yy - lung_cy) / 0.15) ** 2
  )
  img = img - air * (lung_depth - hilum)

  # Heart: bright ellipse low in the mediastinum, bulging to the image right.
  heart = _soft_inside(
    _ellipse_radius(yy, xx, lung_cy + 0.17, cx + 0.05, 0.15, rng.uniform(0.13, 0.17), 0.3), 0.08
  )
  img = img + 0.16 * heart * (1 - 0.7 * air)
  # Spine: a faint vertical band with vertebral modulation.
  spine = np.exp(-(((xx - cx) / 0.045) ** 2)) * (0.8 + 0.2 * np.cos(2 * np.pi * yy * 14))
  img = img + 0.10 * spine * body

  # Ribs: arched bands on each side, brightest over the lungs where contrast is highest.
  n_ribs = 9
  rib_y0 = lung_cy - lung_ry + 0.02 + np.arange(n_ribs) * (2 * lung_ry / n_ribs)
  rib_y0 = (rib_y0 + rng.uniform(-0.01, 0.01, n_ribs)).astype(np.float32)
  thick = rng.uniform(0.012, 0.017)
  dx = np.abs(xx - cx)
  # Posterior ribs rise from the spine then fall laterally, more steeply lower down.
  steep = 1.0 + 0.8 * np.linspace(0, 1, n_ribs, dtype=np.float32)[:, None, None]
  arch = 0.9 * dx - steep * 2.2 * dx**2
  d = (yy[None] - (rib_y0[:, None, None] - arch)) / thick
  ribs = np.exp(-(d * d).min(axis=0)) * (dx > 0.04)  # = max over ribs, one exp
  img = img + rng.uniform(0.05, 0.08) * ribs * body * (0.4 + 0.6 * air)
  # Clavicles: bright oblique bands at the top.
  clav_y = lung_cy - lung_ry + 0.02 - 0.25 * (dx - 0.22) ** 2 * 4 + 0.15 * (dx - 0.05)
  clav = np.exp(-(((yy - clav_y) / 0.022) ** 2)) * (dx > 0.04) * (dx < 0.38)
  img = img + 0.12 * clav * body

  # Vessels/texture inside lungs, a smooth soft-tissue gradient, then fine noise.
  img = img + 0.035 * air * _smooth_noise(rng, s, max(0.8, s / 40))
  ang = rng.uniform(0, 2 * np.pi)
  img = img + rng.uniform(0.0, 0.08) * ((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang))
  return img, lungs


def _lesion_shape(rng, yy, xx, cy, cx, radius):
  """A star-shaped irregular blob around (cy, cx): returns its normalized radius field."""
  aspect = rng.uniform(0.7, 1.3)
  angle = rng.uniform(0, np.pi)
  rho = _ellipse_radius(yy, xx, cy, cx, radius * aspect, radius / aspect, angle)
  theta = np.arctan2(yy - cy, xx - cx)
  # Low-order harmonics of the boundary (total amplitude < 0.3) keep the region star-shaped
  # around its centre, hence one connected component.
  boundary = np.ones_like(theta)
  for k in (2, 3, 5):
    boundary += rng.uniform(0.0, 0.1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
  return rho / boundary


def _draw_lesions(rng, img, yy, xx, lungs, s, contrast_scale):
  """Adds 1-3 non-touching lesions inside the lungs; returns the image, mask and boxes."""
  n_target = int(rng.integers(1, 4))
  lung_pixels = np.argwhere(lungs)
  mask = np.zeros((s, s), bool)
  boxes = []
  placed = []  # (cy, cx, outer radius) in normalized units
  # One texture field per image (blurring is the costly step at large sizes).
  grain = np.clip(_smooth_noise(rng, s, max(0.7, s / 30)), -1.5, 1.5) / 1.5
  for _ in range(20 * n_target):
    if len(placed) == n_target:
      break
    radius = rng.uniform(0.045, 0.11)
    r, c = map(int, lung_pixels[rng.integers(len(lung_pixels))])
    cy, cx = (r + 0.5) / s, (c + 0.5) / s
    outer = 1.45 * radius  # aspect 1.3 x boundary 1.3 bounds the blob's extent
    if any(np.hypot(cy - py, cx - px) < outer + pr + 2.5 / s for py, px, pr in placed):
      continue
    rho = _lesion_shape(rng, yy, xx, cy, cx, radius)
    region = (rho < 1.0) & lungs
    if region.sum() < 4 or not region[r, c]:
      continue
    placed.append((cy, cx, outer))
    contrast = contrast_scale * rng.uniform(*_CONTRAST)
    # Texture: from homogeneous consolidation to patchy ground glass.
    patchiness = rng.uniform(0.0, 0.6)
    texture = 1.0 + patchiness * grain
    profile = np.clip(1.0 - rho, 0.0, 1.0) ** rng.uniform(0.3, 0.8)
    img = img + np.where(region, contrast * profile * texture, 0.0)
    mask |= region
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    boxes.append((rows[0], cols[0], rows[-1] + 1, cols[-1] + 1))
  return img, mask, np.asarray(boxes, np.float32).reshape(-1, 4)


def _draw_distractors(rng, img, yy, xx, s):
  """Bright things unrelated to disease, drawn with the same odds in both classes."""
  px = 1.0 / s
  # Side marker: a bright "L" in one of the upper corners.
  if rng.random() < 0.8:
    h = rng.uniform(0.09, 0.13)
    w = 0.6 * h
    stroke = max(1.2 * px, 0.25 * w)
    y0 = rng.uniform(0.04, 0.12)
    x0 = rng.uniform(0.04, 0.10) if rng.random() < 0.5 else rng.uniform(0.80, 0.92) - w
    in_l = ((yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + stroke)) | (
      (yy >= y0 + h - stroke) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
    )
    img = np.where(in_l, rng.uniform(0.9, 1.0), img)
  # A line or tube: a thin bright curve entering from the top, often crossing a lung.
  if rng.random() < 0.5:
    x_start = rng.uniform(0.25, 0.75)
    x_end = rng.uniform(0.25, 0.75)
    bend = rng.uniform(-0.15, 0.15)
    y_end = rng.uniform(0.45, 0.85)
    t = np.clip(yy / y_end, 0, 1)
    x_line = x_start + (x_end - x_start) * t + bend * np.sin(np.pi * t)
    width = rng.uniform(0.7, 1.2) * px
    line = np.exp(-(((xx - x_line) / width) ** 2)) * (yy < y_end)
    img = img + rng.uniform(0.25, 0.4) * line
  # ECG electrodes: small bright rings with a dot, anywhere on the chest, lungs included.
  if rng.random() < 0.6:
    for _ in range(int(rng.integers(1, 4))):
      cy, cx = rng.uniform(0.2, 0.9), rng.uniform(0.15, 0.85)
      rad = rng.uniform(0.025, 0.035)
      d = np.hypot(yy - cy, xx - cx)
      ring = np.exp(-(((d - rad) / (0.6 * px)) ** 2)) + np.exp(-((d / (0.8 * px)) ** 2))
      img = img + rng.uniform(0.3, 0.5) * np.clip(ring, 0, 1)
  return img


def generate_example(
  index: int,
  *,
  split: str = "train",
  seed: int = 0,
  image_size: int = 64,
  difficulty: float = DEFAULT_DIFFICULTY,
  positive_fraction: float = 0.5,
) -> Example:
  """Generates example `index` of `split` (deterministic, independent of other examples)."""
  _check_settings(image_size, difficulty, positive_fraction)
  rng = np.random.default_rng(example_seed(seed, split, index))
  s = image_size
  label = int(rng.random() < positive_fraction)
  coords = ((np.arange(s) + 0.5) / s).astype(np.float32)  # float32: half the memory traffic
  yy, xx = np.meshgrid(coords, coords, indexing="ij")
  img, lungs = _draw_anatomy(rng, yy, xx, s)
  if label:
    img, mask, boxes = _draw_lesions(rng, img, yy, xx, lungs, s, 1.0 / difficulty)
  else:
    mask, boxes = np.zeros((s, s), bool), np.zeros((0, 4), np.float32)
  img = _draw_distractors(rng, img, yy, xx, s)
  img = img + rng.uniform(0.012, 0.025) * rng.standard_normal((s, s))  # quantum noise
  image = np.clip(np.round(np.clip(img, 0, 1) * 255), 0, 255).astype(np.uint8)
  return Example(
    id=f"synthetic_{split}_{index:06d}",
    image=image[..., None],
    label=label,
    mask=mask.astype(np.uint8)[..., None],
    boxes=boxes,
    lungs=lungs,
  )


def generate_split(split: str, num_examples: int, **kwargs) -> Iterator[Example]:
  """Yields examples 0..num_examples-1 of `split`; kwargs as `generate_example`."""
  for index in range(num_examples):
    yield generate_example(index, split=split, **kwargs)


def generate_arrays(split: str, num_examples: int, **kwargs) -> dict[str, object]:
  """A split as stacked arrays (same fields as `saliency_jax.data.load_arrays`), for tests."""
  examples = list(generate_split(split, num_examples, **kwargs))
  return {
    "id": np.array([e.id for e in examples]),
    "image": np.stack([e.image for e in examples]),
    "label": np.array([e.label for e in examples], np.int64),
    "mask": np.stack([e.mask[..., 0].astype(bool) for e in examples]),
    "boxes": [e.boxes for e in examples],
    "index": np.arange(num_examples, dtype=np.int64),
  }


def _check_settings(image_size, difficulty, positive_fraction):
  if not isinstance(image_size, (int, np.integer)) or image_size < 16:
    raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}.")
  if not difficulty > 0.0:
    raise ValueError(
      f"difficulty must be positive (lesion contrast scales as 1 / difficulty), got {difficulty!r}."
    )
  if not 0.0 <= positive_fraction <= 1.0:
    raise ValueError(f"positive_fraction must lie in [0, 1], got {positive_fraction!r}.")
