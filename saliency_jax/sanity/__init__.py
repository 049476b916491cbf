"""Sanity checks beyond the paper's four criteria, as pure computations on maps and models.

data randomization (labels.PermutedLabels), sMPRT (smoothing) and eMPRT (complexity), the
random-logit test (logits), input invariance (invariance) and faithfulness (deletion,
insertion, ROAD, PIC). `saliency_jax.trust.sanity` runs them inside the study.
"""
