"""The data randomization test's training set (Adebayo et al. 2018): labels permuted.

`PermutedLabels(source, seed)` is a random-access view of a training source whose "label"
entries are a seeded permutation of the source's labels (the class balance is kept, the link
between image and label is gone); every other field is the source's. A model trained on it
with the study's recipe can only memorize, and a method whose maps of that model look like the
trained model's maps does not depend on what the model learned.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np


class PermutedLabels(Sequence):
  def __init__(self, source: Sequence[dict], seed: int):
    self.source = source
    labels = np.array([int(source[i]["label"]) for i in range(len(source))])
    self.labels = labels[np.random.default_rng(seed).permutation(len(labels))]

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: Any) -> dict:
    if not isinstance(index, (int, np.integer)):
      raise TypeError(f"PermutedLabels takes one integer index, got {type(index).__name__}")
    example = dict(self.source[index])
    example["label"] = np.asarray(self.labels[index]).astype(np.asarray(example["label"]).dtype)
    return example
