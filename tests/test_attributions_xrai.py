"""XRAI vs PAIR saliency.core: segments, "full" and "fast" selection, the whole method."""

import os
import signal
import subprocess
import sys
import tempfile
import time

from attribution_models import full_float32_precision  # noqa: F401 (autouse)
from attribution_models import pair_call_model_function
from attribution_models import random_images
from attribution_models import tiny_model
import jax
import numpy as np
import pytest
from saliency import core as pair
from saliency.core import xrai as pair_xrai

from saliency_jax import attributions
from saliency_jax.attributions import xrai_method
from saliency_jax.attributions import xrai_segments
from saliency_jax.attributions import xrai_selection
from saliency_jax.attributions import xrai_selection_jax
from saliency_jax.maps.prepared import PreparedCache


def _image(h, w, c, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  img = (np.sin(yy / 4.0) + np.cos(xx / 3.0))[..., None] + 0.3 * rng.normal(size=(h, w, c))
  return img.astype(np.float32)


def test_segments_equal_pair_defaults():
  """PAIR's own defaults (224x224 resize, six scales, dilation 5) on a small non-square image."""
  img = _image(30, 23, 3)
  ours = xrai_segments.felzenszwalb_segments(img)
  ref = np.asarray(pair_xrai._get_segments_felzenszwalb(img))
  assert ours.shape == ref.shape and ours.dtype == bool
  np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_label_dilation_equals_skimage(radius):
  from skimage.morphology import dilation
  from skimage.morphology import disk

  rng = np.random.default_rng(radius)
  seg = rng.integers(2, 7, size=(9, 13))
  seg[seg == 4] = 5  # a missing label gives an empty mask, kept as PAIR does
  ours = xrai_segments.dilate_label_masks(seg, radius)
  ref = [seg == l for l in range(seg.min(), seg.max() + 1)]
  if radius:
    ref = [dilation(m, footprint=disk(radius)) for m in ref]
  np.testing.assert_array_equal(ours, np.asarray(ref))


def _segments_small(img):
  return xrai_segments.felzenszwalb_segments(
    img, scales=(20, 80), min_size=10, resize=None, dilation_radius=2
  )


def _attrs(shape, rng):
  yield rng.normal(size=shape).astype(np.float32)
  yield rng.integers(-2, 3, size=shape).astype(np.float32)  # many exactly tied gains
  yield np.zeros(shape, np.float32)  # every gain tied
  yield (rng.normal(size=shape) ** 3 * 1e-3).astype(np.float32)


def _mask_sets():
  """(h, w, masks) the selections are checked on, per image size: the segments; with
  duplicates and an empty mask added; masks that do not cover the image (an uncomputed
  remainder)."""
  for h, w in [(31, 22), (24, 24)]:
    masks = _segments_small(_image(h, w, 1, seed=h))
    user = np.concatenate([masks, masks[:3], np.zeros((1, h, w), bool)])
    partial = masks[:4].copy()
    partial[:, :5] = False
    for segs in (masks, user, partial):
      yield h, w, segs


@pytest.mark.parametrize("algorithm,area", [("full", 1.0), ("full", 0.3), ("fast", 1.0)])
def test_selection_identical_to_pair(algorithm, area):
  rng = np.random.default_rng(1)
  for h, w, segs in _mask_sets():
    for attr in _attrs((h, w, 2), rng):
      for min_diff in (50, 1):
        ours = xrai_selection.select(
          attr, segs, algorithm=algorithm, area_threshold=area, min_pixel_diff=min_diff
        )
        ref = xrai_selection.pair_xrai_reference(
          attr, segs, algorithm=algorithm, area_threshold=area, min_pixel_diff=min_diff
        )
        np.testing.assert_array_equal(ours, ref)


def test_xrai_equals_pair_getmask():
  """The whole method: our IG base attribution equals PAIR's (float32 tolerance); with the same
  base attribution and segments the maps are identical, batched or not."""
  _, _, fns = tiny_model(channels=3, size=(18, 14))
  images = random_images((2, 18, 14, 3), seed=2)
  targets = np.array([1, 0])
  base = np.asarray(
    attributions.xrai_base_attribution(
      fns.logits_fn, images, targets, steps=6, max_grads_in_flight=5
    )
  )
  segments = [_segments_small(im) for im in images]
  ours = attributions.xrai(
    fns.logits_fn, images, targets, steps=6, segments=segments, max_grads_in_flight=5
  )
  ours_given = attributions.xrai(None, images, attributions=base, segments=segments)
  np.testing.assert_array_equal(ours, ours_given)
  cmf = pair_call_model_function(fns)
  xr = pair.XRAI()
  for i, t in enumerate(targets):
    params = pair.XRAIParameters(steps=6, return_ig_attributions=True)
    out = xr.GetMaskWithDetails(
      images[i],
      cmf,
      {"target": int(t)},
      segments=list(segments[i]),
      batch_size=6,
      extra_parameters=params,
    )
    np.testing.assert_allclose(base[i], np.mean(out.ig_attribution, axis=0), rtol=1e-4, atol=1e-6)
    for algorithm in ("full", "fast"):
      params = pair.XRAIParameters(algorithm=algorithm)
      ref = xr.GetMask(
        images[i],
        cmf,
        segments=list(segments[i]),
        base_attribution=base[i],
        extra_parameters=params,
      )
      mine = attributions.xrai(
        None,
        images[i : i + 1],
        attributions=base[i : i + 1],
        segments=segments[i : i + 1],
        algorithm=algorithm,
      )
      np.testing.assert_array_equal(mine[0], ref)


def test_registry_xrai_prepare_and_parallel_segments():
  _, _, fns = tiny_model(channels=1, size=(20, 20))
  images = random_images((3, 20, 20, 1), seed=4)
  targets = np.array([0, 1, 2])
  settings = {
    "steps": 3,
    "scales": (30, 100),
    "min_size": 8,
    "segmentation_size": None,
    "dilation_radius": 2,
    "workers": 2,
  }
  method = attributions.METHODS["XRAI"]
  assert not method.wrap_in_jit
  prepared = method.prepare(images, settings)  # 3 images on 2 worker processes
  serial = xrai_segments.segment_batch(
    images, workers=1, scales=(30, 100), min_size=8, resize=None, dilation_radius=2
  )
  for a, b in zip(prepared, serial):  # the segments with their atoms
    np.testing.assert_array_equal(a.masks.reshape(b.shape), b)
  maps = np.asarray(method.compute(fns, images, targets, settings=settings, prepared=prepared))
  again = np.asarray(method.compute(fns, images, targets, settings=settings))
  np.testing.assert_array_equal(maps, again)
  # The regions go through the study's prepared cache (pickled, bit-packed) unchanged.
  with tempfile.TemporaryDirectory() as tmp:
    cache = PreparedCache(tmp, "XRAI", settings)
    ids = ["a", "b", "c"]
    cache.get(0, 3, ids, images, lambda x: prepared)
    loaded = cache.get(0, 3, ids, images, lambda x: pytest.fail("a hit expected"))
  assert cache.hits == 1 and all(isinstance(r, xrai_selection_jax.Regions) for r in loaded)
  for a, b in zip(loaded, prepared):
    assert a.shape == b.shape
    for x, y in zip(jax.tree.leaves(a[1:]), jax.tree.leaves(b[1:])):
      np.testing.assert_array_equal(x, y)
  from_cache = method.compute(fns, images, targets, settings=settings, prepared=loaded)
  np.testing.assert_array_equal(np.asarray(from_cache), maps)
  base = attributions.xrai_base_attribution(fns.logits_fn, images, targets, steps=3)
  raw = attributions.xrai(None, images, attributions=base, segments=serial)
  np.testing.assert_allclose(maps, np.asarray(attributions.to_grayscale(raw)), atol=1e-6)
  assert maps.shape == (3, 20, 20) and maps.dtype == np.float32


def test_xrai_ig_cpu_plan_windows_equal_one_program():
  """XRAI's model part runs on the CPU plan as windows of (image, step) items, some spanning
  images and splitting one image's two baselines; it equals the one-program attributions."""
  _, _, fns = tiny_model(channels=3, size=(18, 14))
  images = random_images((3, 18, 14, 3), seed=5)
  targets = np.array([1, 0, 2])
  settings = {"steps": 7, "max_grads_in_flight": 5}  # 14 items per image, windows of 5
  eager = np.asarray(xrai_method.IG_COMPUTE(fns, images, targets, settings=settings))
  whole = np.asarray(attributions.xrai_base_attribution(fns.logits_fn, images, targets, steps=7))
  assert eager.shape == images.shape
  np.testing.assert_allclose(eager, whole, rtol=1e-5, atol=1e-7 * np.abs(whole).max())


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PLAIN_SCRIPT = """
import sys
import numpy as np
from saliency_jax import attributions
print("script body ran", flush=True)
rng = np.random.default_rng(0)
images = rng.uniform(-1, 1, (2, 20, 18, 1)).astype(np.float32)
base = rng.normal(size=(2, 20, 18)).astype(np.float32)
maps = attributions.xrai(None, images, attributions=base, workers=2, segmentation_size=None)
np.save(sys.argv[1], maps)
"""


def _script_env():
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")]),
  }


def test_xrai_from_a_plain_script_without_a_main_guard(tmp_path):
  # As PAIR users write scripts: worker processes must not run the caller's script again.
  script = tmp_path / "plain.py"
  script.write_text(_PLAIN_SCRIPT)
  out = subprocess.run(
    [sys.executable, str(script), str(tmp_path / "maps.npy")],
    capture_output=True,
    text=True,
    timeout=300,
    env=_script_env(),
    cwd=str(tmp_path),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count("script body ran") == 1, out.stdout
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 20, 18, 1)).astype(np.float32)
  base = rng.normal(size=(2, 20, 18)).astype(np.float32)
  serial = attributions.xrai(None, images, attributions=base, workers=1, segmentation_size=None)
  np.testing.assert_array_equal(np.load(tmp_path / "maps.npy"), serial)


_POOL_SCRIPT = """
import time
import numpy as np
from saliency_jax.attributions import xrai_segments
if __name__ == "__main__":
  xrai_segments.segment_batch(np.zeros((2, 16, 16, 1), np.float32) + np.arange(16)[:, None],
                              workers=2, resize=None)
  print("workers", *sorted(xrai_segments._POOL._processes), flush=True)
  time.sleep(600)
"""


def _alive(pid):
  try:
    with open(f"/proc/{pid}/status") as f:
      return "\\nState:\\tZ" not in f.read()
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_segmentation_workers_die_with_a_killed_parent(tmp_path):
  script = tmp_path / "pool.py"
  script.write_text(_POOL_SCRIPT)
  job = subprocess.Popen(
    [sys.executable, str(script)],
    stdout=subprocess.PIPE,
    text=True,
    env=_script_env(),
    cwd=str(tmp_path),
  )
  try:
    line = job.stdout.readline()
    assert line.startswith("workers"), line
    workers = [int(p) for p in line.split()[1:]]
    assert workers and all(_alive(p) for p in workers)
  finally:
    job.kill()
    job.wait()
  deadline = time.monotonic() + 20
  while any(_alive(p) for p in workers) and time.monotonic() < deadline:
    time.sleep(0.1)
  orphans = [p for p in workers if _alive(p)]
  for p in orphans:
    os.kill(p, signal.SIGKILL)
  assert not orphans, f"segmentation workers {orphans} outlived their parent"


@pytest.mark.parametrize("area", [1.0, 0.3])
def test_device_selection_identical_to_pair(area):
  """The batched JAX "full" selection equals PAIR's on the NumPy selection's cases, all
  attributions of one mask set in one call: exact ties (integer and zero attributions), masks
  that add the same pixels, duplicates, an empty mask, an uncovered remainder."""
  rng = np.random.default_rng(1)
  decisions = 0
  for h, w, segs in _mask_sets():
    attrs = list(_attrs((h, w, 2), rng))
    for min_diff in (50, 1):
      got = xrai_selection_jax.select_full_batch_details(
        attrs, [segs] * len(attrs), area_threshold=area, min_pixel_diff=min_diff
      )
      assert got.on_device == len(attrs)
      decisions += got.host_decisions
      for attr, ours in zip(attrs, got.maps):
        ref = xrai_selection.pair_xrai_reference(
          attr, segs, area_threshold=area, min_pixel_diff=min_diff
        )
        np.testing.assert_array_equal(ours, ref)
  assert decisions > 0 or area < 1  # the host's near-tie path ran (integer attributions)


def test_device_selection_320_many_masks():
  """320x320 images with about 500 Felzenszwalb masks, attributions smooth, rounded to a few
  values (many exact ties) and zero, in one call, equal to the NumPy selection (itself tested
  equal to PAIR above); NaN attributions are refused."""
  from scipy import ndimage

  rng = np.random.default_rng(7)
  yy, xx = np.mgrid[:320, :320]
  img = (
    (np.sin(yy / 14.0) + np.cos(xx / 11.0))[..., None]
    + ndimage.gaussian_filter(rng.normal(size=(320, 320, 1)), 1.5)
  ).astype(np.float32)
  masks = xrai_segments.felzenszwalb_segments(img, min_size=40)
  assert 450 <= len(masks) <= 650
  smooth = ndimage.gaussian_filter(rng.normal(size=(320, 320)), 2).astype(np.float32)
  rounded = np.round(smooth * 20).astype(np.float32)
  attrs = [smooth, rounded, np.zeros_like(smooth)]
  regions = xrai_selection_jax.prepare(masks)
  got = xrai_selection_jax.select_full_batch_details(attrs, [regions, masks, regions])
  assert got.on_device == 3 and got.host_decisions > 0
  for attr, ours in zip(attrs, got.maps):
    np.testing.assert_array_equal(ours, xrai_selection.select_full(attr, masks))
  broken = smooth.copy()
  broken[3, 4] = np.nan
  with pytest.raises(ValueError, match="image 1 contain NaN"):
    xrai_selection_jax.select_full_batch([smooth, broken], [regions] * 2)
