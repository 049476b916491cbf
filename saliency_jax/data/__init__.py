"""Datasets (TFDS builders, array_record, no TensorFlow) and the Grain input pipeline.

Importing this package registers the TFDS builders, so `tfds.data_source(name, data_dir=...)`
works afterwards. To add a dataset, import its builder module in the block below (one line
each, e.g. `from saliency_jax.data import rsna_pneumonia  # noqa: F401`).
"""

# Builders: importing a module registers its tfds.core.GeneratorBasedBuilder.
from saliency_jax.data import synthetic_cxr  # noqa: F401
from saliency_jax.data.arrays import load_arrays
from saliency_jax.data.pipeline import make_dataset
from saliency_jax.data.pipeline import preprocess
from saliency_jax.data.synthetic_cxr import build_synthetic

__all__ = ["build_synthetic", "load_arrays", "make_dataset", "preprocess"]

# Real chest X-ray builders: registers rsna_pneumonia and
# siim_acr_pneumothorax for tfds.data_source.
from saliency_jax.data import image_mask_folder  # noqa: F401,E402
from saliency_jax.data import rsna_pneumonia  # noqa: F401,E402
from saliency_jax.data import siim_acr_pneumothorax  # noqa: F401,E402
