"""Cascading and independent randomization re-initialize exactly the intended blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import models
from saliency_jax import randomization

SAMPLE = jnp.zeros((1, 24, 16, 1))
KEY = jax.random.key(7)


@pytest.fixture(scope="module")
def setup():
  module = models.create("small_vgg", stem_width=4, widths=(4, 8))  # as in test_models_small
  variables = models.init_variables(module, jax.random.key(0), SAMPLE.shape[1:])
  # "Trained" variables: every leaf moved away from any initializer's value (BN biases start at
  # 0 and variances at 1 in every init, so an untouched block must be told apart from a fresh one).
  trained = jax.tree.map(lambda a: a + 1.5, variables)
  # The expected fresh values: block i of block_names comes from the model initialized with
  # fold_in(KEY, i).
  fresh = {
    name: models.init_variables(module, jax.random.fold_in(KEY, i), SAMPLE.shape[1:])
    for i, name in enumerate(module.block_names)
  }
  return module, trained, fresh


def _assert_blocks(result, trained, fresh, randomized):
  for col in trained:
    assert set(result[col]) == set(trained[col])
    for name in trained[col]:
      expected = fresh[name][col][name] if name in randomized else trained[col][name]
      jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), result[col][name], expected)
      if name in randomized:  # and really different from before
        assert all(
          not np.array_equal(a, b)
          for a, b in zip(jax.tree.leaves(result[col][name]), jax.tree.leaves(trained[col][name]))
        )


def test_randomize_blocks_changes_exactly_the_given_blocks(setup):
  module, trained, fresh = setup
  before = jax.tree.map(np.array, trained)
  out = randomization.randomize_blocks(module, trained, ["block1", "logits"], KEY, SAMPLE)
  _assert_blocks(out, trained, fresh, {"block1", "logits"})
  assert set(out) == {"params", "batch_stats"}
  # The input is not modified in place.
  jax.tree.map(np.testing.assert_array_equal, trained, before)


def test_cascading_is_cumulative_from_the_top(setup):
  module, trained, fresh = setup
  steps = randomization.cascading_randomization(module, trained, KEY, SAMPLE)
  names = [name for name, _ in steps]
  assert names == ["original", "logits", "block2", "block1", "stem"]
  assert steps[0][1] is trained
  for k, (_, variables) in enumerate(steps):
    _assert_blocks(variables, trained, fresh, set(module.block_names[:k]))
  # The last step is a fully re-initialized model: every leaf differs from the trained one.
  last = steps[-1][1]
  assert all(
    not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(last), jax.tree.leaves(trained))
  )


def test_independent_changes_one_block_with_the_cascading_draw(setup):
  module, trained, fresh = setup
  steps = randomization.independent_randomization(module, trained, KEY, SAMPLE)
  assert [name for name, _ in steps] == list(module.block_names)
  cascading = dict(randomization.cascading_randomization(module, trained, KEY, SAMPLE))
  for name, variables in steps:
    _assert_blocks(variables, trained, fresh, {name})
    for col in variables:
      if name in variables[col]:
        jax.tree.map(
          lambda a, b: np.testing.assert_array_equal(a, b),
          variables[col][name],
          cascading[name][col][name],
        )


def test_randomized_model_still_runs_and_differs(setup):
  module, trained, _ = setup
  x = jax.random.normal(jax.random.key(3), (2, 24, 16, 1))
  out = randomization.randomize_blocks(module, trained, ["logits"], KEY, SAMPLE)
  a, b = module.apply(trained, x), module.apply(out, x)
  assert a.shape == b.shape == (2, 2)
  assert not np.allclose(a, b)


def test_bad_block_name(setup):
  module, trained, _ = setup
  with pytest.raises(ValueError, match="not a block"):
    randomization.randomize_blocks(module, trained, ["block9"], KEY, SAMPLE)
  with pytest.raises(ValueError, match="not in the variables"):
    randomization.randomize_blocks(module, {"params": {}}, ["logits"], KEY, SAMPLE)
