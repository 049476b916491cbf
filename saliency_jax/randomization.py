"""Model-parameter randomization tests (Adebayo et al., 2018) over a model's named blocks.

A classifier names its top-level parameter subtrees in `module.block_names`, from the logits
layer down to the stem. Re-initializing a block means replacing its params (and its
batch_stats, so a re-initialized batch-norm layer is a fresh one: mean 0, variance 1) with
values drawn by the model's own initializers, i.e. the subtree of a fresh `module.init`.

Keys. Block number i of `module.block_names` always gets its fresh values from
`module.init(jax.random.fold_in(key, i), ...)`, whichever variant asks for it. So for the same
`key`, step k of the cascading test and the k-th independent test put the *same* fresh weights
into block k: the two variants differ only in which other blocks are randomized, not in the
draw.

`sample_input` (an image batch [B, H, W, C]) only fixes parameter shapes: its image shape is
what the fresh model is initialized with.
"""

from collections.abc import Sequence
from typing import Any

import jax

from saliency_jax.models import init_variables

Variables = dict


def _block_index(module: Any, name: str, block_names=None) -> int:
  names = tuple(module.block_names if block_names is None else block_names)
  if name not in names:
    raise ValueError(f"{name!r} is not a block of {type(module).__name__}; blocks: {names}.")
  return names.index(name)


class _FreshBlocks:
  """Draws (and caches) the fresh subtrees of each block, one `module.init` per block."""

  def __init__(
    self, module: Any, key: jax.Array, sample_input: Any, block_names: Sequence[str] | None = None
  ):
    self.module = module
    self.block_names = tuple(module.block_names if block_names is None else block_names)
    self._key = key
    self._sample = sample_input
    self._cache: dict[str, dict[str, Any]] = {}

  def __call__(self, name: str) -> dict[str, Any]:
    """{collection: fresh subtree of `name`} for every collection that holds the block."""
    if name not in self._cache:
      index = _block_index(self.module, name, self.block_names)
      # init_variables compiles once per model and input shape (then reused by every draw).
      fresh = init_variables(
        self.module, jax.random.fold_in(self._key, index), tuple(self._sample.shape[1:])
      )
      self._cache[name] = {col: tree[name] for col, tree in fresh.items() if name in tree}
    return self._cache[name]


def _replace_blocks(variables: Variables, names: Sequence[str], fresh: _FreshBlocks) -> Variables:
  out = {col: dict(tree) for col, tree in variables.items()}  # shallow copies; leaves shared
  for name in names:
    _block_index(fresh.module, name, fresh.block_names)
    if not any(name in tree for tree in variables.values()):
      raise ValueError(
        f"Block {name!r} is not in the variables (collections: "
        f"{ {c: list(t) for c, t in variables.items()} })."
      )
    for col, subtree in fresh(name).items():
      if col not in out:
        raise ValueError(f"The fresh model has collection {col!r} that the variables lack.")
      out[col][name] = subtree
  return out


def randomize_blocks(
  module: Any, variables: Variables, block_names: Sequence[str], key: jax.Array, sample_input: Any
) -> Variables:
  """Returns `variables` with the blocks `block_names` re-initialized; the rest is untouched.

  Args:
    module: a classifier with `block_names` (see saliency_jax.models.functions).
    variables: {"params": ..., "batch_stats": ...?} of `module`.
    block_names: names from `module.block_names` to re-initialize (params and batch_stats).
    key: the randomization key; block i uses fold_in(key, i) (see the module docstring).
    sample_input: an input batch for `module.init` (shapes only).
  """
  return _replace_blocks(variables, list(block_names), _FreshBlocks(module, key, sample_input))


def cascading_randomization(
  module: Any,
  variables: Variables,
  key: jax.Array,
  sample_input: Any,
  block_names: Sequence[str] | None = None,
) -> list[tuple[str, Variables]]:
  """Cumulative re-initialization from the top: [("original", v), ("logits", v1), ...].

  Step k (named after the block it adds, module.block_names[k-1]) has blocks 0..k-1 of
  `module.block_names` (or of `block_names`, for a module without that attribute) randomized;
  the last step has every block randomized.
  """
  fresh = _FreshBlocks(module, key, sample_input, block_names)
  steps = [("original", variables)]
  current = variables
  for name in fresh.block_names:
    current = _replace_blocks(current, [name], fresh)
    steps.append((name, current))
  return steps


def independent_randomization(
  module: Any,
  variables: Variables,
  key: jax.Array,
  sample_input: Any,
  block_names: Sequence[str] | None = None,
) -> list[tuple[str, Variables]]:
  """One block at a time: [(block_name, variables with only that block randomized), ...]."""
  fresh = _FreshBlocks(module, key, sample_input, block_names)
  return [(name, _replace_blocks(variables, [name], fresh)) for name in fresh.block_names]
