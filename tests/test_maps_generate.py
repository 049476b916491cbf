"""Tests of generate_maps: devices, hosts and chunking do not change the maps; resuming."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import maps
from saliency_jax.maps import demo

# Different devices run different batch sizes through XLA's convolutions, which may sum in
# another order; a map is allowed to differ by float32 rounding and no more.
_ATOL = 1e-6
# The study's SmoothGrad with few samples, and a gradient cap that splits the work unevenly.
_SG_SETTINGS = {"samples": 3, "max_grads_in_flight": 4}


@pytest.fixture(scope="module")
def problem():
  # Non-square images, 2 channels, and N=21 not a multiple of the chunk or device counts.
  return demo.tiny_problem(seed=3, num_images=21, height=9, width=13, channels=2)


def _reference_gradient_maps(model_fns, images, targets):
  """|d logit_target / d x| summed over channels, / per-image max: one image at a time."""
  out = []
  for x, t in zip(images, targets):
    g = np.asarray(jax.grad(lambda v: model_fns.logits_fn(v[None])[0, t])(jnp.asarray(x)))
    gray = np.abs(g).sum(-1)
    out.append(gray / gray.max())
  return np.stack(out)


def _run(
  path, method, model_fns, images, targets, indices=None, ids=None, *, key, settings=None, **plan
):
  """generate_maps with the inputs and the plan's fields as arguments."""
  return maps.generate_maps(
    path,
    method,
    model_fns,
    maps.MapInputs(images, targets, indices, ids),
    key=key,
    settings=settings,
    plan=maps.MapPlan(**plan),
  )


def _generate(path, method, problem, **kwargs):
  model_fns, images, targets, indices, ids = problem
  kwargs.setdefault("chunk_size", 8)
  return _run(
    str(path),
    method,
    model_fns,
    images,
    targets,
    indices,
    ids,
    key=jax.random.key(7),
    progress=False,
    **kwargs,
  )


def test_eight_devices_give_the_maps_of_one_device(tmp_path, problem):
  method = demo.DemoGradient()
  one = _generate(
    tmp_path / "one", method, problem, mesh=maps.batch_mesh(jax.devices()[:1])
  ).read_all()
  eight = _generate(
    tmp_path / "eight", method, problem, mesh=maps.batch_mesh(jax.devices()[:8])
  ).read_all()
  np.testing.assert_allclose(eight, one, rtol=0, atol=_ATOL)
  np.testing.assert_array_equal(eight, one)  # In fact bit-identical here (XLA CPU).
  model_fns, images, targets, _, _ = problem
  np.testing.assert_allclose(
    one, _reference_gradient_maps(model_fns, images, targets), rtol=0, atol=_ATOL
  )
  store = maps.MapStore.open(str(tmp_path / "eight"))
  np.testing.assert_array_equal(store.ids, problem[4])
  assert store.metadata["method"] == "DEMO_GRAD"


def _sg():
  from saliency_jax.attributions import METHODS  # pylint: disable=g-import-not-at-top

  return METHODS["SG"]


def test_a_noisy_method_gives_the_same_maps_whatever_the_chunks_and_devices(tmp_path, problem):
  method = _sg()
  ref = _generate(
    tmp_path / "c21",
    method,
    problem,
    chunk_size=21,
    settings=_SG_SETTINGS,
    mesh=maps.batch_mesh(jax.devices()[:1]),
  ).read_all()
  for chunk_size, num_devices in ((5, 1), (6, 4)):
    got = _generate(
      tmp_path / f"c{chunk_size}d{num_devices}",
      method,
      problem,
      chunk_size=chunk_size,
      settings=_SG_SETTINGS,
      mesh=maps.batch_mesh(jax.devices()[:num_devices]),
    ).read_all()
    np.testing.assert_allclose(got, ref, rtol=0, atol=_ATOL)
  model_fns, images, targets, indices, _ = problem
  direct = method.compute(
    model_fns,
    images[::-1],
    targets[::-1],
    indices=indices[::-1],
    key=jax.random.key(7),
    settings=_SG_SETTINGS,
  )
  np.testing.assert_allclose(ref, np.asarray(direct)[::-1], rtol=0, atol=_ATOL)
  # The noise really is per image: another key gives other maps.
  other = _run(
    str(tmp_path / "other"),
    method,
    *problem,
    key=jax.random.key(8),
    chunk_size=21,
    settings=_SG_SETTINGS,
    progress=False,
  ).read_all()
  assert np.abs(other - ref).max() > 1e-3


def test_hosts_write_disjoint_chunks_that_make_up_the_whole_store(tmp_path, problem):
  method = _sg()
  ref = _generate(
    tmp_path / "ref", method, problem, chunk_size=21, settings=_SG_SETTINGS
  ).read_all()
  written = []
  for host in (1, 0):
    store = _generate(
      tmp_path / "hosts",
      method,
      problem,
      chunk_size=4,
      process_index=host,
      settings=_SG_SETTINGS,
      process_count=2,
      on_chunk=lambda i, s: written.append(i),
    )
    if host == 1:
      assert not store.complete
      assert store.missing_chunks() == [0, 2, 4]
  assert written == [1, 3, 5, 0, 2, 4]
  np.testing.assert_allclose(store.read_all(), ref, rtol=0, atol=_ATOL)


def test_a_rerun_computes_only_the_missing_chunks(tmp_path, problem):
  method = demo.DemoGradient()
  ref = _generate(tmp_path / "ref", method, problem).read_all()
  partial = maps.MapStore.open(str(tmp_path / "ref"))
  store = _generate(tmp_path / "s", method, problem, process_index=0, process_count=3)
  assert store.missing_chunks() == [1, 2]
  stamp = store.chunk_path(0), os.stat(store.chunk_path(0)).st_mtime_ns
  written = []
  store = _generate(tmp_path / "s", method, problem, on_chunk=lambda i, s: written.append(i))
  assert written == [1, 2]
  assert os.stat(stamp[0]).st_mtime_ns == stamp[1]
  np.testing.assert_allclose(store.read_all(), ref, rtol=0, atol=_ATOL)
  assert partial.complete
  # A rerun of a complete store computes nothing; other settings are refused.
  written.clear()
  _generate(tmp_path / "s", method, problem, on_chunk=lambda i, s: written.append(i))
  assert not written
  with pytest.raises(ValueError, match="other maps"):
    _generate(tmp_path / "s", method, problem, settings={"other": 1})
  # The gradient cap changes memory use, not maps: a resume may use another value.
  _generate(tmp_path / "s", method, problem, settings={"max_grads_in_flight": 2})


def test_images_from_a_sequence_source_are_loaded_one_chunk_at_a_time(tmp_path, problem):
  model_fns, images, targets, indices, ids = problem

  class Source:
    """A random-access source of single images that records what was read."""

    def __init__(self):
      self.reads = []

    def __len__(self):
      return len(images)

    def __getitem__(self, i):
      self.reads.append(i)
      return images[i]

  source = Source()
  loaded = []
  store = _run(
    str(tmp_path / "s"),
    demo.DemoGradient(),
    model_fns,
    source,
    targets,
    indices,
    ids,
    key=jax.random.key(0),
    chunk_size=8,
    progress=False,
    on_chunk=lambda i, s: loaded.append(len(source.reads)),
  )
  # One peek at image 0 for the shape, then one chunk per step: chunk i is written once
  # chunk i+1 is loaded and in flight, never later.
  assert loaded == [1 + 16, 1 + 21, 1 + 21]
  ref = _generate(tmp_path / "ref", demo.DemoGradient(), problem).read_all()
  np.testing.assert_allclose(store.read_all(), ref, rtol=0, atol=_ATOL)


@dataclasses.dataclass
class _HostSideMethod:
  """A method with model-independent prepared data and a NumPy step that cannot be traced.

  Map = |gradient| gray, times a per-image mask built in `prepare` (like XRAI's segments).
  """

  prepare_calls: list = dataclasses.field(default_factory=list)
  name: str = "HOST_SIDE"
  default_settings: dict = dataclasses.field(default_factory=lambda: {"threshold": 0.0})

  def prepare(self, images, settings):
    self.prepare_calls.append(images.shape[0])
    return [np.asarray(x[..., 0] > settings["threshold"]) for x in images]  # bool [H, W] each

  def compute(self, model_fns, images, targets, *, indices, key, settings, prepared=None):
    del indices, key, settings
    grads = np.asarray(_jitted_gradient_maps(model_fns, images, targets))
    return grads * np.stack(prepared)


@jax.jit
def _jitted_gradient_maps(model_fns, images, targets):
  return demo.DemoGradient().compute(
    model_fns, images, targets, indices=None, key=None, settings={}
  )


def test_prepared_data_is_cached_per_chunk_and_reused_across_model_states(tmp_path, problem):
  model_fns, images, targets, indices, ids = problem
  other_fns = demo.tiny_problem(seed=4, num_images=1, height=9, width=13, channels=2)[0]
  method = _HostSideMethod()
  cache = str(tmp_path / "prepared")
  results = []
  for name, fns in (("state0", model_fns), ("state1", other_fns)):
    store = _run(
      str(tmp_path / name),
      method,
      fns,
      images,
      targets,
      indices,
      ids,
      key=jax.random.key(0),
      chunk_size=8,
      prepared_dir=cache,
      progress=False,
      mesh=maps.batch_mesh(jax.devices()[:8]),
    )
    results.append(store.read_all())
  assert method.prepare_calls == [8, 8, 5]  # Once per chunk, for the first model state only.
  # Other images (e.g. preprocessed for another architecture) are other cache entries.
  shifted = images + 0.5
  store = _run(
    str(tmp_path / "shifted"),
    method,
    model_fns,
    shifted,
    targets,
    indices,
    ids,
    key=jax.random.key(0),
    chunk_size=8,
    prepared_dir=cache,
    progress=False,
  )
  assert method.prepare_calls == [8, 8, 5] * 2
  np.testing.assert_allclose(
    store.read_all(),
    _reference_gradient_maps(model_fns, shifted, targets) * (shifted[..., 0] > 0),
    rtol=0,
    atol=_ATOL,
  )
  for fns, got in zip((model_fns, other_fns), results):
    expected = _reference_gradient_maps(fns, images, targets) * (images[..., 0] > 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=_ATOL)
  # A caller-provided function replaces `prepare`.
  seen = []
  store = _run(
    str(tmp_path / "given"),
    method,
    model_fns,
    images,
    targets,
    indices,
    ids,
    key=jax.random.key(0),
    chunk_size=8,
    progress=False,
    prepared=lambda start, stop, x: (
      seen.append((start, stop)) or [np.ones(x.shape[1:3], bool)] * len(x)
    ),
  )
  assert seen == [(0, 8), (8, 16), (16, 21)]
  np.testing.assert_allclose(
    store.read_all(), _reference_gradient_maps(model_fns, images, targets), atol=_ATOL
  )


class _PixelSpaceMethod:
  """Breaks the contract: returns [B,H,W,C] instead of the 2-D map."""

  default_settings = {}
  prepare = None

  def compute(self, model_fns, images, targets, *, indices, key, settings, prepared=None):
    del model_fns, targets, indices, key, settings, prepared
    return images


def test_bad_inputs_are_refused(tmp_path, problem):
  model_fns, images, targets, indices, ids = problem
  method = demo.DemoGradient()
  with pytest.raises(ValueError, match="targets"):
    _run(
      str(tmp_path / "a"),
      method,
      model_fns,
      images,
      targets[:-1],
      key=jax.random.key(0),
      chunk_size=4,
      progress=False,
    )
  with pytest.raises(ValueError, match=r"\[N,H,W,C\]"):
    _run(
      str(tmp_path / "b"),
      method,
      model_fns,
      images[..., 0],
      targets,
      key=jax.random.key(0),
      chunk_size=4,
      progress=False,
    )
  with pytest.raises(ValueError, match=r"returned maps of shape \(4, 9, 13, 2\)"):
    _run(
      str(tmp_path / "d"),
      _PixelSpaceMethod(),
      model_fns,
      images,
      targets,
      key=jax.random.key(0),
      chunk_size=4,
      progress=False,
    )
  assert maps.MapStore.open(str(tmp_path / "d")).missing_chunks() == list(range(6))
  with pytest.raises(ValueError, match="1-D"):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("a", "b"))
    _run(
      str(tmp_path / "c"),
      method,
      model_fns,
      images,
      targets,
      key=jax.random.key(0),
      chunk_size=4,
      progress=False,
      mesh=mesh,
    )


@pytest.mark.parametrize("name", ["GRAD", "GCAM"])
def test_study_methods_give_the_same_maps_on_eight_devices(tmp_path, problem, name):
  from saliency_jax.attributions import METHODS  # pylint: disable=g-import-not-at-top

  method = METHODS[name]
  one = _generate(
    tmp_path / "one", method, problem, mesh=maps.batch_mesh(jax.devices()[:1])
  ).read_all()
  eight = _generate(
    tmp_path / "eight", method, problem, mesh=maps.batch_mesh(jax.devices()[:8])
  ).read_all()
  model_fns, images, targets, indices, _ = problem
  direct = np.asarray(
    method.compute(
      model_fns, images, targets, indices=indices, key=jax.random.key(7), settings=None
    )
  )
  assert not np.isnan(one).any()
  np.testing.assert_allclose(one, direct, rtol=0, atol=_ATOL)
  np.testing.assert_allclose(eight, one, rtol=0, atol=_ATOL)


def test_xrai_segments_are_computed_once_for_all_model_states(tmp_path, problem):
  from saliency_jax.attributions import METHODS  # pylint: disable=g-import-not-at-top

  model_fns, images, targets, indices, ids = problem
  other_fns = demo.tiny_problem(seed=4, num_images=1, height=9, width=13, channels=2)[0]
  calls = []
  xrai = METHODS["XRAI"]
  method = dataclasses.replace(
    xrai, prepare=lambda x, s: calls.append(len(x)) or xrai.prepare(x, s)
  )
  settings = {
    **xrai.default_settings,
    "steps": 4,
    "segmentation_size": None,
    "scales": [50, 100],
    "min_size": 10,
    "workers": 1,
  }
  for fns, state in ((model_fns, "state0"), (other_fns, "state1")):
    got = _run(
      str(tmp_path / state),
      method,
      fns,
      images,
      targets,
      indices,
      ids,
      key=jax.random.key(0),
      settings=settings,
      chunk_size=8,
      progress=False,
      prepared_dir=str(tmp_path / "prepared"),
      mesh=maps.batch_mesh(jax.devices()[:8]),
    ).read_all()
    direct = np.asarray(
      xrai.compute(fns, images, targets, indices=indices, key=jax.random.key(0), settings=settings)
    )
    np.testing.assert_allclose(got, direct, rtol=0, atol=_ATOL)
  assert calls == [8, 8, 5]  # Segments of each chunk once, for the first model state only.


def test_a_rerun_recomputes_a_corrupt_or_replaced_chunk_and_only_it(tmp_path, problem):
  method = demo.DemoGradient()
  store = _generate(tmp_path / "s", method, problem)
  expected = store.read_all()
  with open(store.chunk_path(0), "rb") as f:
    chunk0 = f.read()
  with open(store.chunk_path(1), "wb") as f:
    f.write(chunk0)  # Chunks 0 and 1 both hold 8 maps: a valid file of the wrong maps.
  path2 = store.chunk_path(2)
  with open(path2, "r+b") as f:
    f.truncate(os.path.getsize(path2) // 2)
  untouched = os.stat(store.chunk_path(0))
  written = []
  again = _generate(tmp_path / "s", method, problem, on_chunk=lambda i, s: written.append(i))
  assert written == [1, 2]
  np.testing.assert_array_equal(again.read_all(), expected)
  after = os.stat(store.chunk_path(0))
  assert (after.st_ino, after.st_mtime_ns) == (untouched.st_ino, untouched.st_mtime_ns)


def test_replace_recomputes_the_maps_of_another_model(tmp_path, problem):
  method = demo.DemoGradient()
  first = _generate(tmp_path / "s", method, problem, metadata={"model": "a"}).read_all()
  with pytest.raises(ValueError, match="other maps"):
    _generate(tmp_path / "s", method, problem, metadata={"model": "b"})
  written = []
  again = _generate(
    tmp_path / "s",
    method,
    problem,
    metadata={"model": "b"},
    replace=True,
    on_chunk=lambda i, s: written.append(i),
  )
  assert written == [0, 1, 2] and again.metadata["model"] == "b"
  np.testing.assert_array_equal(again.read_all(), first)  # Same model really: same maps.
