r"""Times the batched metrics against the per-map reference loop, in one run.

  python -m launch.benchmark_metrics --num_maps=100 --size=320

Prints a table (seconds for the whole stack, per map, and the ratio reference / ours) for SSIM
(scikit-image `structural_similarity`, both window kinds) and the rank metrics (scikit-learn
`precision_recall_curve` + `auc`, `average_precision_score`, `roc_auc_score`), and the largest
difference between the two answers. Our first call (compilation) is timed separately; the table
reports the best of `--repeats` warm calls for both sides. The load average is printed because
the timings only mean something against it.
"""

import os
import time

from absl import app
from absl import flags
import jax
import numpy as np
from skimage.metrics import structural_similarity
from sklearn import metrics as skm

from saliency_jax import metrics

_NUM_MAPS = flags.DEFINE_integer("num_maps", 100, "Maps in the stack.")
_SIZE = flags.DEFINE_integer("size", 320, "Map side (square maps).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Warm repetitions; the best is reported.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic maps.")


def _best_of(fn, repeats):
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return best, result


def _smooth_maps(rng, n, size):
  """Blob-like [0, 1] maps (saliency-like: smooth, with quantized ties) and box masks."""
  freq = rng.normal(size=(n, size // 16 + 1, size // 16 + 1))
  maps = np.kron(freq, np.ones((16, 16)))[:, :size, :size]
  maps += 0.3 * rng.random((n, size, size))
  maps = maps - maps.min(axis=(1, 2), keepdims=True)
  maps = (maps / maps.max(axis=(1, 2), keepdims=True)).astype(np.float32)
  maps = np.round(maps * 1000) / 1000  # ties, as maps stored at limited precision have
  masks = np.zeros((n, size, size), bool)
  for i in range(n):
    y, x = rng.integers(0, size // 2, 2)
    masks[i, y : y + size // 3, x : x + size // 4] = True
  return maps.astype(np.float32), masks


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  n, size, repeats = _NUM_MAPS.value, _SIZE.value, _REPEATS.value
  a, masks = _smooth_maps(rng, n, size)
  b, _ = _smooth_maps(rng, n, size)
  print(
    f"{n} maps of {size}x{size}; JAX backend {jax.default_backend()}; "
    f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()}"
  )

  rows = []

  def compare(name, ours_fn, ref_fn):
    start = time.perf_counter()
    ours_fn()
    first = time.perf_counter() - start
    t_ours, ours = _best_of(ours_fn, repeats)
    t_ref, ref = _best_of(ref_fn, repeats)
    diff = float(np.nanmax(np.abs(np.asarray(ours) - np.asarray(ref))))
    rows.append((name, t_ref, t_ours, first, diff))

  for gaussian in (False, True):
    compare(
      f"ssim ({'gaussian' if gaussian else 'uniform 7x7'})",
      lambda g=gaussian: metrics.ssim(a, b, data_range=1.0, gaussian_weights=g),
      lambda g=gaussian: [
        structural_similarity(x, y, data_range=1.0, gaussian_weights=g) for x, y in zip(a, b)
      ],
    )

  def sk_auprc():
    out = []
    for x, m in zip(a, masks):
      precision, recall, _ = skm.precision_recall_curve(m.ravel(), x.ravel())
      out.append(skm.auc(recall, precision))
    return out

  compare("auprc", lambda: metrics.auprc(a, masks), sk_auprc)
  compare(
    "average_precision",
    lambda: metrics.average_precision(a, masks),
    lambda: [skm.average_precision_score(m.ravel(), x.ravel()) for x, m in zip(a, masks)],
  )
  compare(
    "roc_auc",
    lambda: metrics.roc_auc(a, masks),
    lambda: [skm.roc_auc_score(m.ravel(), x.ravel()) for x, m in zip(a, masks)],
  )

  header = (
    "| metric | reference loop (s) | ours (s) | ms/map ours | speed-up | "
    "ours first call (s) | max abs diff |"
  )
  print(header)
  print("|" + "---|" * 7)
  for name, t_ref, t_ours, first, diff in rows:
    print(
      f"| {name} | {t_ref:.3f} | {t_ours:.3f} | {1000 * t_ours / n:.2f} | "
      f"{t_ref / t_ours:.1f}x | {first:.2f} | {diff:.1e} |"
    )
  print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
