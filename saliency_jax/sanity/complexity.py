"""eMPRT (Hedström et al. 2023): the rise in a map's complexity when the model is randomized.

Complexity is Quantus' discrete entropy: the Shannon entropy (nats) of the histogram of the
map's values in `bins` equal-width bins over [min, max] of the map. eMPRT's score of an image
is the relative rise (H_random - H_trained) / H_trained from the trained to the fully
randomized model's map; a method sensitive to the model's parameters gets noisier, so more
complex, maps from the randomized model (a positive rise).
"""

import numpy as np


def histogram_entropy(maps: np.ndarray, bins: int = 100) -> np.ndarray:
  """Entropy of each map's value histogram: float64 [N]; NaN where a map has a NaN."""
  if bins < 1:
    raise ValueError(f"eMPRT bins must be >= 1, got {bins}")
  maps = np.asarray(maps, np.float64)
  flat = maps.reshape(len(maps), -1)
  out = np.full(len(maps), np.nan)
  for i, values in enumerate(flat):
    if not np.isfinite(values).all():
      continue
    counts, _ = np.histogram(values, bins=bins)
    p = counts[counts > 0] / counts.sum()
    out[i] = float(-(p * np.log(p)).sum()) + 0.0
  return out


def relative_rise(before: np.ndarray, after: np.ndarray) -> np.ndarray:
  """(after - before) / before: float64 [N]; NaN where `before` is 0 or undefined."""
  before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(before > 0, (after - before) / np.where(before > 0, before, 1.0), np.nan)
