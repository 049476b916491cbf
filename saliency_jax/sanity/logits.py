"""The random-logit test's other class (Sixt et al. 2020).

The map for the explained class is compared with the map for another class drawn at random
(seeded) among the rest. With two classes the other class is the only choice: the map of the
negative logit. A class-sensitive method gives dissimilar maps; methods whose maps mostly
reconstruct the image (guided backprop) give nearly the same map for every class.
"""

import numpy as np


def other_classes(targets: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
  """A uniformly drawn class != target for each image: int32 [N]."""
  targets = np.asarray(targets, np.int64)
  if num_classes < 2:
    raise ValueError(f"the random-logit test needs >= 2 classes, got {num_classes}")
  if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
    raise ValueError(
      f"targets must be in [0, {num_classes}), got {targets.min()}...{targets.max()}"
    )
  offsets = np.random.default_rng(seed).integers(1, num_classes, size=targets.shape)
  return ((targets + offsets) % num_classes).astype(np.int32)
