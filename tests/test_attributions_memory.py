"""max_grads_in_flight="auto": gradients in flight chosen from the device's free memory.

The CPU reports no memory statistics, so a small device is simulated by replacing
`_memory.free_bytes`; the check that a chunk fits is XLA's compiled memory of that chunk's
gradients, compiled apart from the estimate (which extrapolates from batches of 1 and 2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import attributions
from saliency_jax import maps
from saliency_jax.attributions import _engine
from saliency_jax.attributions import _execution
from saliency_jax.attributions import _memory
from saliency_jax.maps import demo

_SHAPE = (12, 32, 32, 3)


@pytest.fixture(scope="module")
def problem():
  return demo.tiny_problem(seed=5, num_images=_SHAPE[0], height=32, width=32, channels=3)


def _gradient_batch_bytes(model_fns, batch):
  """XLA's memory of the target gradients of `batch` images at once (one chunk in flight)."""
  grad = jax.jit(lambda f, x, t: _engine.target_gradients(f.logits_fn)(x, t))
  stats = (
    grad.lower(
      _memory._abstract(model_fns),
      jax.ShapeDtypeStruct((batch,) + _SHAPE[1:], jnp.float32),
      jax.ShapeDtypeStruct((batch,), jnp.int32),
    )
    .compile()
    .memory_analysis()
  )
  return stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes


def _budget_for(model_fns, gradients):
  """A free memory in which about `gradients` gradients fit (by the estimate, with margin)."""
  per, once = _memory.gradient_memory(model_fns, _SHAPE[1:])
  chunk = _memory.CHUNK_COPIES * 4 * int(np.prod(_SHAPE))
  return int((once + chunk + (gradients + 0.5) * per) / _memory.MEMORY_MARGIN)


def _chunks_used(monkeypatch):
  """Records every chunk size the methods' loops plan."""
  used = []
  plan = _execution.plan_chunks

  def recording(total, max_grads_in_flight):
    n, c = plan(total, max_grads_in_flight)
    used.append(c)
    return n, c

  monkeypatch.setattr(_execution, "plan_chunks", recording)
  return used


def test_cpu_without_statistics_keeps_the_default(problem):
  model_fns = problem[0]
  assert jax.devices()[0].memory_stats() is None
  assert _memory.free_bytes() is None
  assert _memory.grads_in_flight("auto", model_fns, _SHAPE) == 64
  assert _memory.grads_in_flight(None, model_fns, _SHAPE) == 64
  assert attributions.METHODS["SG"].default_settings["max_grads_in_flight"] == "auto"


@pytest.mark.parametrize("name", ["GRAD", "SG"])
def test_a_small_device_gets_chunks_that_fit_and_the_same_maps(monkeypatch, problem, name):
  model_fns, images, targets, indices, _ = problem
  settings = {"samples": 3} if name == "SG" else {}
  method = attributions.METHODS[name]
  reference = np.asarray(
    method.compute(
      model_fns, images, targets, indices=indices, settings={**settings, "max_grads_in_flight": 64}
    )
  )
  budget = _budget_for(model_fns, 5)
  monkeypatch.setattr(_memory, "free_bytes", lambda: budget)
  assert _memory.grads_in_flight("auto", model_fns, _SHAPE) == 4  # the power of two below 5
  assert _memory.grads_in_flight(0, model_fns, _SHAPE) == 4  # the config's spelling of auto
  used = _chunks_used(monkeypatch)
  out = np.asarray(method.compute(model_fns, images, targets, indices=indices, settings=settings))
  assert used and max(used) <= 4
  # The chosen chunk fits, by XLA's memory of exactly that chunk; the default's would not.
  assert _gradient_batch_bytes(model_fns, max(used)) <= budget
  assert _gradient_batch_bytes(model_fns, 64) > budget
  if name == "GRAD":  # chunks of images: the same computation per image
    np.testing.assert_array_equal(out, reference)
  else:  # SmoothGrad sums samples in other groups: float32 rounding of the sums only
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)


def test_generate_maps_on_a_small_device_gives_the_unchunked_maps(tmp_path, monkeypatch, problem):
  model_fns, images, targets, indices, ids = problem
  method = attributions.METHODS["GRAD"]

  def run(path, settings):
    return maps.generate_maps(
      str(tmp_path / path),
      method,
      model_fns,
      maps.MapInputs(images, targets, indices, ids),
      key=jax.random.key(0),
      settings={**method.default_settings, **settings},
      plan=maps.MapPlan(chunk_size=_SHAPE[0], progress=False),
    ).read_all()

  reference = run("whole", {"max_grads_in_flight": 64})
  monkeypatch.setattr(_memory, "free_bytes", lambda: _budget_for(model_fns, 2))
  used = _chunks_used(monkeypatch)
  np.testing.assert_array_equal(run("auto", {}), reference)
  assert used and max(used) == 2


def test_an_explicit_setting_wins_and_too_little_memory_is_a_clear_error(monkeypatch, problem):
  model_fns, images, targets, _, _ = problem
  monkeypatch.setattr(_memory, "free_bytes", lambda: 1000)
  assert _memory.grads_in_flight(16, model_fns, _SHAPE) == 16
  method = attributions.METHODS["GRAD"]
  out = method.compute(model_fns, images, targets, settings={"max_grads_in_flight": 16})
  assert out.shape == _SHAPE[:3]
  with pytest.raises(MemoryError, match="not even one model gradient fits.*study.chunk_size"):
    method.compute(model_fns, images, targets)
