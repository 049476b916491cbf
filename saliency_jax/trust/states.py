"""The model states whose maps the study computes: the trained model, each step of the
cascading randomization (one block more re-initialized per step, logits first), the fully
randomized model and, where configured, each block randomized alone."""

from collections.abc import Sequence
from typing import Any
import zlib

import jax
import jax.numpy as jnp
import ml_collections

from saliency_jax import randomization
from saliency_jax.trust import evaluation
from saliency_jax.trust.names import cascade_state
from saliency_jax.trust.names import independent_state
from saliency_jax.trust.names import SetName
from saliency_jax.trust.names import State


def cascade_steps(blocks: Sequence[str], cascade_keep: int) -> list[str]:
  """The cascade's states of a classifier with `blocks` (logits first): the trained model,
  then one block more randomized per step, stopping `cascade_keep` (protocol.cascade_keep)
  blocks above the bottom (the authors kept mixed0 and the stem of InceptionV3 trained)."""
  blocks = list(blocks)
  blocks = blocks[: max(len(blocks) - cascade_keep, 1)]
  return [State.ORIGINAL] + [cascade_state(b) for b in blocks]


def state_names(
  config: ml_collections.ConfigDict, name: str, blocks: Sequence[str]
) -> list[tuple[str, str]]:
  """(set, state) of every map store of the classifier `name`, whose blocks (logits first)
  are `blocks` (none: only the trained model's maps)."""
  study = config.study
  utility = name in study.utility_models
  # Where repeatability and reproducibility are scored on the utility set, it needs the maps.
  agreement_on_utility = evaluation.agreement_set(config.protocol) == SetName.UTILITY
  if not blocks:
    result = [(SetName.EVAL, State.ORIGINAL)]
    if utility or agreement_on_utility:
      result.append((SetName.UTILITY, State.ORIGINAL))
    return result
  result = [(SetName.EVAL, state) for state in cascade_steps(blocks, config.protocol.cascade_keep)]
  if name in study.independent_randomization:
    result += [(SetName.EVAL, independent_state(block)) for block in blocks]
  if utility:
    result += [(SetName.UTILITY, State.ORIGINAL), (SetName.UTILITY, State.UNTRAINED)]
  elif agreement_on_utility:
    result.append((SetName.UTILITY, State.ORIGINAL))
  return result


def state_variables(
  config: ml_collections.ConfigDict, model, blocks: Sequence[str], image_shape
) -> dict[str, Any]:
  """{state: variables} of the study TrainedModel `model` with `blocks`: the trained model,
  every cascading step down to the stem, the fully randomized model (UNTRAINED) and, if
  configured, the independent states."""
  if not blocks:  # nothing to randomize (the report says so)
    return {State.ORIGINAL: model.variables}
  key = jax.random.fold_in(jax.random.key(config.seed), _stable_hash(model.name))
  sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  cascade = randomization.cascading_randomization(
    model.module, model.variables, key, sample, blocks
  )
  variables = {
    State.ORIGINAL: model.variables,
    State.UNTRAINED: cascade[-1][1],  # every block randomized
  }
  variables.update({cascade_state(step): v for step, v in cascade[1:]})
  if model.name in config.study.independent_randomization:
    variables.update(
      {
        independent_state(block): v
        for block, v in randomization.independent_randomization(
          model.module, model.variables, key, sample, blocks
        )
      }
    )
  return variables


def _stable_hash(text: str) -> int:
  """A hash of a model name that is the same in every process (unlike hash())."""
  return zlib.crc32(text.encode()) & 0x7FFFFFFF
