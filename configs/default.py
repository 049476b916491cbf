"""The default config: the paper's study (Arun et al. 2021) as the authors' scripts ran it.

Every other config overrides this one (configs/paper_*.py name a dataset, configs/synthetic.py
shrinks the study for a CPU), so each field and its paper value are stated once, here.
`config.protocol` holds the choices a verdict depends on (saliency_jax/trust/protocol.py; the
report's "Protocol" table lists them with the paper's value).

The paper's run refuses to start without the authors' split of the dataset (a data.name whose
config was prepared with --split_csv) and ImageNet weight files (config.weights): say otherwise
with --config.protocol.cohort=any or --config.protocol.init=random.
"""

import ml_collections

from saliency_jax.metrics import chexlocalize
from saliency_jax.trust import protocol
from saliency_jax.trust import verdicts


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.workdir = "runs/siim_acr_pneumothorax"

  config.data = ml_collections.ConfigDict()
  config.data.name = "siim_acr_pneumothorax"  # <builder>/<config> of launch.prepare_data
  config.data.data_dir = "data/tfds"
  config.data.image_size = 320
  config.data.style = "inception"  # InceptionV3: x / 127.5 - 1; DenseNet overrides below
  config.data.channels = 3  # grayscale replicated, as the authors did

  # Three replicates of one architecture (repeatability), one of another (reproducibility).
  config.models = [
    dict(name="A1", arch="inception_v3", seed=1),
    dict(name="A2", arch="inception_v3", seed=2),
    dict(name="A3", arch="inception_v3", seed=3),
    dict(name="B1", arch="densenet121", seed=1, style="imagenet"),
  ]
  # Keras ImageNet weight files per architecture (*_notop.h5 or .weights.h5), for
  # protocol.init = "imagenet".
  config.weights = ml_collections.ConfigDict(dict(inception_v3="", densenet121=""))

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32
  config.train.num_steps = 15000
  config.train.learning_rate = 7e-5  # Adam, as the authors' RSNA script
  config.train.weight_decay = 0.0
  config.train.eval_every = 1000
  config.train.log_every = 100
  config.train.dtype = "float32"  # "bfloat16" for mixed precision

  # The localization-network baseline: the paper's U-Net (SIIM); configs/paper_rsna.py sets the
  # RetinaNet (arch "retinanet", its train section adds max_boxes and box_loss).
  config.localization = ml_collections.ConfigDict()
  config.localization.arch = "unet"
  config.localization.seeds = (1, 2)
  config.localization.kwargs = dict(depth=4, base_width=32)
  config.localization.train = ml_collections.ConfigDict(config.train.to_dict())
  config.localization.train.learning_rate = 1e-4
  config.localization.train.num_steps = 10000

  config.methods = ml_collections.ConfigDict()
  config.methods.names = ("GRAD", "SG", "IG", "SIG", "GCAM", "XRAI", "GBP", "GGCAM")
  # Overrides of each method's default (the authors') settings.
  config.methods.settings = ml_collections.ConfigDict()
  # Model gradients evaluated at once; 0: as many as fit in the device's free memory (at most
  # 64; the CPU: 64).
  config.methods.max_grads_in_flight = 0
  # Methods of your own: {name: "package.module:function"} (README, "Your own method").
  config.methods.custom = ml_collections.ConfigDict()

  config.study = ml_collections.ConfigDict()
  config.study.target = "predicted"  # or "label": the class each map explains
  config.study.num_eval_images = 100  # the SSIM criteria's sample of positive test images
  config.study.num_utility_images = 100  # SIIM: the first 100 positive test images; 0: all
  config.study.random_pairs = 50  # random-pair baseline: pairs per image
  config.study.ssim_data_range = 2.0  # the paper's 2020 scikit-image took 2.0 from float
  config.study.alpha = 0.05
  config.study.correction = "holm"  # across methods, per criterion ("holm" or "bh")
  # Pass/fail rules, printed in the report: metric, baseline, direction and test.
  config.study.rules = ml_collections.ConfigDict(verdicts.DEFAULT_RULES)
  config.study.bootstrap_resamples = 2000
  config.study.utility_models = ("A1",)  # models whose maps are scored against masks
  config.study.independent_randomization = ("A1",)
  config.study.num_example_images = 6
  config.study.chunk_size = 64
  config.study.map_dtype = "float32"
  config.study.external_maps = ""  # directory of maps from another framework
  # Checks beyond the paper's four criteria (criteria stage; README "Checks beyond the paper");
  # they add to the report and change no verdict of the paper's rules.
  # Control maps scored by every criterion like a method (Binder et al. 2023).
  config.study.controls = ml_collections.ConfigDict(
    dict(enabled=True, names=("NOISE", "SOBEL", "BLOB", "AVERAGE_MASK"), blob_sigma=0.25)
  )  # BLOB's sigma, a fraction of the shorter side
  # CheXlocalize's localization metrics (Saporta et al. 2022).
  config.study.chexlocalize = ml_collections.ConfigDict(
    dict(
      enabled=True,
      validation_images=0,  # positive validation images for tuning; 0: all
      thresholds=chexlocalize.TUNING_THRESHOLDS,
    )
  )  # CheXlocalize's arange(0.2, 0.8, 0.1)
  # The verdict rules re-run over a grid of protocol choices.
  config.study.robustness = ml_collections.ConfigDict(
    dict(
      enabled=True,
      grayscale=("configured", "no_clip", "diverging"),
      similarity=("ssim", "spearman_abs", "spearman", "hog", "top_k_iou"),
      ssim_data_ranges=(1.0, 2.0),
      top_k_fraction=0.1,
    )
  )

  config.protocol = protocol.paper_protocol()
  return config
