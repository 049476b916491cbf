"""XRAI's image segments: PAIR's `_get_segments_felzenszwalb`, batched over worker processes.

Per image, exactly PAIR's recipe: values min-max scaled to [-1, 1]; resized (cubic,
anti-aliased) to `resize` (PAIR: 224x224; None keeps the image size); scikit-image Felzenszwalb
at each scale (sigma 0.8, min_size 150); labels resized back (nearest); one boolean mask per
label value from min to max (empty ones included, as PAIR); each mask dilated by a disk.

The dilation of all masks of one segmentation is done at once: a pixel p belongs to dilated mask
l iff some pixel p + d (d in the disk, inside the image) has label l, so one scatter per disk
offset replaces one scikit-image dilation per mask. It equals scikit-image's `dilation` (whose
"reflect" border mode never adds a label that is not already within the disk, because the disk is
symmetric and convex); the tests compare the two.

A batch of images is segmented in worker processes (a "forkserver"/"spawn" pool: JAX is not
fork-safe; the pool is reused across calls), one task per image normalization and then one per
(image, scale); `workers` <= 1 runs in this process. The workers are started without the
caller's `__main__` (a plain script without a main guard would otherwise run again in each of
them), end when the process that started them is gone, and leave Ctrl-C to it.
"""

from collections.abc import Callable, Sequence
import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time

import numpy as np
from skimage import segmentation
from skimage.morphology import disk
from skimage.transform import resize as sk_resize

from saliency_jax import processes

SCALES = (50, 100, 150, 250, 500, 1200)
SIGMA = 0.8
MIN_SIZE = 150
RESIZE = (224, 224)
DILATION_RADIUS = 5
VALUE_RANGE = (-1.0, 1.0)


def _normalize_image(im: np.ndarray, resize_shape) -> np.ndarray:
  """PAIR's `_normalize_image`: min-max to VALUE_RANGE, then a cubic anti-aliased resize."""
  im_max, im_min = np.max(im), np.min(im)
  im = (im - im_min) / (im_max - im_min)
  im = im * (VALUE_RANGE[1] - VALUE_RANGE[0]) + VALUE_RANGE[0]
  if resize_shape is not None:
    im = sk_resize(
      im, resize_shape, order=3, mode="constant", preserve_range=True, anti_aliasing=True
    )
  return im


def dilate_label_masks(seg: np.ndarray, radius: int) -> np.ndarray:
  """Masks of labels seg.min()..seg.max(), each dilated by disk(radius): bool [L, H, W]."""
  h, w = seg.shape
  lo = int(seg.min())
  labels = (seg - lo).astype(np.int64)
  n = int(labels.max()) + 1
  out = np.zeros((n, h, w), bool)
  if not radius:
    out[labels, np.arange(h)[:, None], np.arange(w)[None, :]] = True
    return out
  footprint = disk(radius)
  r = radius
  for dy, dx in zip(*np.nonzero(footprint)):
    dy, dx = dy - r, dx - r
    # Pixels p whose neighbour p + (dy, dx) is inside the image.
    y0, y1 = max(0, -dy), min(h, h - dy)
    x0, x1 = max(0, -dx), min(w, w - dx)
    if y0 >= y1 or x0 >= x1:
      continue
    neighbour = labels[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    ys = np.arange(y0, y1)[:, None]
    xs = np.arange(x0, x1)[None, :]
    out[neighbour, ys, xs] = True
  return out


def _felzenszwalb(im: np.ndarray, scale: float, sigma: float, min_size: int) -> np.ndarray:
  return segmentation.felzenszwalb(im, scale=scale, sigma=sigma, min_size=min_size)


def _masks_from_labels(
  segs: Sequence[np.ndarray], original_shape, resized: bool, dilation_radius: int
) -> np.ndarray:
  masks = []
  for seg in segs:
    if resized:
      seg = sk_resize(
        seg, original_shape, order=0, preserve_range=True, mode="constant", anti_aliasing=False
      ).astype(int)
    masks.append(dilate_label_masks(seg, dilation_radius))
  return np.concatenate(masks, axis=0)


def _check_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"image must be [H,W,C], got shape {image.shape}")
  return image


def felzenszwalb_segments(
  image: np.ndarray,
  *,
  scales: Sequence[float] = SCALES,
  sigma: float = SIGMA,
  min_size: int = MIN_SIZE,
  resize: tuple[int, int] | None = RESIZE,
  dilation_radius: int = DILATION_RADIUS,
) -> np.ndarray:
  """One image's XRAI segments as PAIR computes them: bool [M, H, W] in PAIR's order."""
  image = _check_image(image)
  resize = None if resize is None else tuple(resize)
  im = _normalize_image(image, resize)
  segs = [_felzenszwalb(im, scale, sigma, min_size) for scale in scales]
  return _masks_from_labels(segs, image.shape[:2], resize is not None, dilation_radius)


_POOL: concurrent.futures.ProcessPoolExecutor | None = None
_POOL_WORKERS = 0


def _watch_parent(pid: int) -> None:
  while processes.pid_alive(pid):
    time.sleep(0.5)
  os._exit(1)


def _worker_init(parent: int) -> None:
  """Runs first in every worker: the parent handles Ctrl-C, and the worker ends when the
  parent is gone (killed: a forkserver's workers are not its children, so no pool shutdown
  and no parent-death signal would reach them)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


@contextlib.contextmanager
def _caller_main_hidden():
  """Processes started inside do not import the caller's `__main__` (multiprocessing would run
  its script or module again to find functions defined there; the workers need none)."""
  main = sys.modules.get("__main__")
  if main is None:
    yield
    return
  saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
  main.__dict__.pop("__file__", None)
  main.__spec__ = None
  try:
    yield
  finally:
    main.__dict__.pop("__spec__", None)
    main.__dict__.update(saved)


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  global _POOL, _POOL_WORKERS
  if _POOL is None or _POOL_WORKERS != workers:
    if _POOL is not None:
      _POOL.shutdown(wait=False, cancel_futures=True)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    _POOL = concurrent.futures.ProcessPoolExecutor(
      max_workers=workers, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)
    )
    _POOL_WORKERS = workers
  return _POOL


def _submit(pool: concurrent.futures.ProcessPoolExecutor, fn, *args):
  with _caller_main_hidden():  # the pool starts its workers on demand, in submit
    return pool.submit(fn, *args)


def default_workers() -> int:
  return max(1, min(os.cpu_count() or 1, 8))


def segment_batch_async(
  images: np.ndarray,
  *,
  workers: int | None = None,
  scales: Sequence[float] = SCALES,
  sigma: float = SIGMA,
  min_size: int = MIN_SIZE,
  resize: tuple[int, int] | None = RESIZE,
  dilation_radius: int = DILATION_RADIUS,
) -> Callable[[], list[np.ndarray]]:
  """Starts `segment_batch` in the worker pool and returns a function that waits for it.

  The work is split into one normalization task per image, then one Felzenszwalb task per
  (image, scale), so even a single image uses every worker; label maps are turned into
  dilated masks here. The caller can run the model (IG) meanwhile.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [B,H,W,C], got shape {images.shape}")
  workers = default_workers() if workers is None else int(workers)
  resize = None if resize is None else tuple(resize)
  scales = tuple(scales)
  if workers <= 1 or len(images) * len(scales) <= 1:
    return lambda: [
      felzenszwalb_segments(
        im,
        scales=scales,
        sigma=sigma,
        min_size=min_size,
        resize=resize,
        dilation_radius=dilation_radius,
      )
      for im in images
    ]
  pool = _pool(workers)
  normalized = [_submit(pool, _normalize_image, im, resize) for im in images]

  def result():
    labels = []
    for fut in normalized:
      im = fut.result()
      labels.append([_submit(pool, _felzenszwalb, im, scale, sigma, min_size) for scale in scales])
    return [
      _masks_from_labels(
        [f.result() for f in futs], image.shape[:2], resize is not None, dilation_radius
      )
      for image, futs in zip(images, labels)
    ]

  return result


def segment_batch(images: np.ndarray, *, workers: int | None = None, **kwargs) -> list[np.ndarray]:
  """`felzenszwalb_segments` of every image of [B,H,W,C], in parallel worker processes.

  Args:
    images: [B,H,W,C].
    workers: processes to use (default: the CPU count, at most 8); <= 1 runs serially.
    **kwargs: `felzenszwalb_segments` settings.

  Returns:
    A list of B bool arrays [M_i, H, W].
  """
  return segment_batch_async(images, workers=workers, **kwargs)()
