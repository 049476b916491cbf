"""The paper's study on SIIM-ACR Pneumothorax: InceptionV3 x3 + DenseNet121 at 320x320.

Prepare the data once (see README, "Run the study on RSNA / SIIM"), then on a GPU/TPU host:

  python -m launch.run_all --config=configs/paper_siim.py --workdir=/runs/siim \
      --config.data.data_dir=/data/tfds --config.data.name=siim_acr_pneumothorax/<config>

ImageNet initialization (the paper's): download the Keras applications' notop weight files
yourself and pass them, e.g. --config.weights.inception_v3=/weights/inception_v3_notop.h5.
Methods keep the authors' settings (each method's defaults).
"""
import ml_collections

from saliency_jax.trust import verdicts


def get_config(dataset: str = "siim_acr_pneumothorax") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.workdir = f"runs/{dataset}"

  config.data = ml_collections.ConfigDict()
  config.data.name = dataset
  config.data.data_dir = "data/tfds"
  config.data.image_size = 320
  config.data.style = "inception"   # InceptionV3: x / 127.5 - 1; DenseNet overrides below
  config.data.channels = 3          # grayscale replicated, as the authors did
  # Synthetic-only settings, unused for real data, kept so configs share one schema.
  config.data.num_train = config.data.num_val = config.data.num_test = 0
  config.data.positive_fraction = 0.5
  config.data.difficulty = 1.0

  config.models = [
      dict(name="A1", arch="inception_v3", seed=1),
      dict(name="A2", arch="inception_v3", seed=2),
      dict(name="A3", arch="inception_v3", seed=3),
      dict(name="B1", arch="densenet121", seed=1, style="imagenet"),
  ]
  # Keras ImageNet weight files per architecture (*_notop.h5 or .weights.h5); empty: random.
  config.weights = ml_collections.ConfigDict(dict(inception_v3="", densenet121=""))

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32
  config.train.num_steps = 15000
  config.train.learning_rate = 7e-5    # Adam, as the authors' RSNA script
  config.train.weight_decay = 0.0
  config.train.eval_every = 1000
  config.train.log_every = 100
  config.train.dtype = "float32"       # "bfloat16" for mixed precision

  config.localization = ml_collections.ConfigDict()
  config.localization.arch = "unet"
  config.localization.seeds = (1, 2)
  config.localization.kwargs = dict(depth=4, base_width=32)
  config.localization.train = ml_collections.ConfigDict(config.train.to_dict())
  config.localization.train.learning_rate = 1e-4
  config.localization.train.num_steps = 10000

  config.methods = ml_collections.ConfigDict()
  config.methods.names = ("GRAD", "SG", "IG", "SIG", "GCAM", "XRAI", "GBP", "GGCAM")
  config.methods.settings = ml_collections.ConfigDict()  # the authors' settings: defaults
  config.methods.max_grads_in_flight = 32               # fits InceptionV3 at 320 on a 16 GB GPU

  config.study = ml_collections.ConfigDict()
  config.study.target = "predicted"
  config.study.num_eval_images = 100
  config.study.num_utility_images = 0
  config.study.random_pairs = 50
  config.study.ssim_data_range = 2.0      # reproduces the paper (2020 scikit-image)
  config.study.alpha = 0.05
  config.study.correction = "holm"
  config.study.rules = ml_collections.ConfigDict(verdicts.DEFAULT_RULES)
  config.study.bootstrap_resamples = 2000
  config.study.utility_models = ("A1",)
  config.study.independent_randomization = ("A1",)
  config.study.num_example_images = 6
  config.study.chunk_size = 64
  config.study.map_dtype = "float16"
  config.study.external_maps = ""
  return config
