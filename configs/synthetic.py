"""The whole study on the built-in synthetic chest X-ray dataset, sized for a 2-core CPU.

  python -m launch.run_all                                  # this config, runs/synthetic/
  python -m launch.run_all --config=configs/synthetic.py --workdir=runs/synthetic
  python -m launch.run_all --config=configs/synthetic.py:retinanet   # RetinaNet baseline

Method settings are reduced from the paper's (fewer SmoothGrad samples, IG steps, XRAI
segmentation at the image size) so the whole study fits in about ten minutes on a CPU;
configs/paper_*.py keep the authors' settings.
"""
import ml_collections

from saliency_jax.metrics import chexlocalize
from saliency_jax.trust import verdicts


def detector_localization(train: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The RetinaNet localization baseline sized for 64-pixel images on a CPU: a narrow, shallow
  Keras-style ResNet, anchors from 8 pixels (P3) up, two replicates."""
  loc = ml_collections.ConfigDict()
  loc.arch = "retinanet"
  loc.seeds = (1, 2)
  loc.kwargs = dict(stem_width=16, widths=(16, 16, 32, 32), blocks=(1, 1, 1, 1),
                    fpn_width=32, head_depth=2, anchor_sizes=(8, 16, 32, 64, 128))
  loc.train = ml_collections.ConfigDict(train.to_dict())
  loc.train.num_steps = 800
  loc.train.batch_size = 16
  loc.train.learning_rate = 1e-3
  loc.train.eval_every = 200
  loc.train.max_boxes = 4        # synthetic images hold at most 3 lesions
  loc.train.box_loss = "smooth_l1"
  return loc


def get_config(localization: str = "unet") -> ml_collections.ConfigDict:
  """localization: "unet" (default) or "retinanet" (`--config=configs/synthetic.py:retinanet`)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.workdir = "runs/synthetic"

  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic_cxr"
  config.data.data_dir = ""            # empty: <workdir>/data
  config.data.image_size = 64
  config.data.num_train = 1200
  config.data.num_val = 300
  config.data.num_test = 300
  config.data.positive_fraction = 0.5
  config.data.difficulty = 1.0
  config.data.style = "inception"     # pixel scaling fed to the models
  config.data.channels = 1

  # Classifier replicates: three of architecture A (repeatability) and one of B
  # (reproducibility), as the paper's three InceptionV3s and one DenseNet121.
  config.models = [
      dict(name="A1", arch="small_vgg", seed=1),
      dict(name="A2", arch="small_vgg", seed=2),
      dict(name="A3", arch="small_vgg", seed=3),
      dict(name="B1", arch="small_densenet", seed=1),
  ]
  # Keras ImageNet weight files per architecture (paper configs); empty: random init.
  config.weights = ml_collections.ConfigDict()
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32
  config.train.num_steps = 200
  config.train.learning_rate = 2e-3
  config.train.weight_decay = 1e-4
  config.train.eval_every = 100
  config.train.log_every = 50
  config.train.dtype = "float32"

  # The localization-network baseline (the paper's U-Net / RetinaNet).
  config.localization = ml_collections.ConfigDict()
  config.localization.arch = "unet"
  config.localization.seeds = (1, 2)
  config.localization.kwargs = dict(depth=3, base_width=8)
  config.localization.train = ml_collections.ConfigDict(config.train.to_dict())
  config.localization.train.num_steps = 150
  config.localization.train.batch_size = 16
  config.localization.train.learning_rate = 2e-3
  if localization == "retinanet":
    config.localization = detector_localization(config.train)
  elif localization != "unet":
    raise ValueError(f"localization must be 'unet' or 'retinanet', got {localization!r}.")

  config.methods = ml_collections.ConfigDict()
  config.methods.names = ("GRAD", "SG", "IG", "SIG", "GCAM", "XRAI", "GBP", "GGCAM")
  # Overrides of each method's default (paper) settings.
  config.methods.settings = ml_collections.ConfigDict(dict(
      SG=dict(samples=10),
      SIG=dict(samples=5, steps=5),
      XRAI=dict(steps=20, segmentation_size=64),
  ))
  config.methods.max_grads_in_flight = 64

  config.study = ml_collections.ConfigDict()
  config.study.target = "predicted"       # or "label": the class each map explains
  config.study.num_eval_images = 24       # SSIM criteria (the paper: 100 positive test images)
  config.study.num_utility_images = 0     # 0: all positive test images (the paper)
  config.study.random_pairs = 50          # random-pair baseline: pairs per image
  config.study.ssim_data_range = 1.0      # the paper's 2020 scikit-image used 2.0
  config.study.alpha = 0.05
  config.study.correction = "holm"        # across methods, per criterion ("holm" or "bh")
  # Pass/fail rules, printed in the report: metric, baseline, direction and paired test.
  config.study.rules = ml_collections.ConfigDict(verdicts.DEFAULT_RULES)
  config.study.bootstrap_resamples = 1000
  config.study.utility_models = ("A1",)   # models whose maps are scored against masks
  config.study.independent_randomization = ("A1",)
  config.study.num_example_images = 4
  config.study.chunk_size = 32
  config.study.map_dtype = "float32"
  config.study.external_maps = ""         # directory of maps from another framework
  # Checks beyond the paper's four criteria (criteria stage; README "Checks beyond the paper").
  # Control maps scored by every criterion like a method (Binder et al. 2023).
  config.study.controls = ml_collections.ConfigDict(dict(
      enabled=True, names=("NOISE", "SOBEL", "BLOB", "AVERAGE_MASK"),
      blob_sigma=0.25))                   # BLOB's sigma, a fraction of the shorter side
  # CheXlocalize's localization metrics (Saporta et al. 2022).
  config.study.chexlocalize = ml_collections.ConfigDict(dict(
      enabled=True, validation_images=0,  # positive validation images for tuning; 0: all
      thresholds=chexlocalize.TUNING_THRESHOLDS))  # CheXlocalize's arange(0.2, 0.8, 0.1)
  # The verdict rules re-run over a grid of protocol choices.
  config.study.robustness = ml_collections.ConfigDict(dict(
      enabled=True, grayscale=("configured", "no_clip", "diverging"),
      similarity=("ssim", "spearman_abs", "spearman", "hog", "top_k_iou"),
      ssim_data_ranges=(1.0, 2.0), top_k_fraction=0.1))

  # Sanity checks beyond the paper (saliency_jax.trust.sanity), each switchable.
  config.sanity = ml_collections.ConfigDict()
  # Each listed model's architecture trained again on permuted labels (same recipe, steps).
  config.sanity.data_randomization = dict(enabled=True, models=("A1", "B1"), label_seed=0)
  # Maps averaged over noisy copies (Quantus: samples=50, noise=0.1 of the range);
  # methods: () = all of config.methods.names.
  config.sanity.smooth_mprt = dict(enabled=True, models=("A1",), samples=8, noise=0.1,
                                   methods=("GRAD", "SG", "IG", "GCAM", "GBP", "GGCAM"))
  config.sanity.efficient_mprt = dict(enabled=True, bins=100)   # every classifier
  config.sanity.random_logit = dict(enabled=True, models=("A1", "B1"), seed=0)
  # Input shift in model-input units, and the SSIM tolerance of the rule.
  config.sanity.input_invariance = dict(enabled=True, models=("A1", "B1"), shift=1.0,
                                        tolerance=0.01)
  config.sanity.faithfulness = dict(
      enabled=True, models=("A1",), steps=16, baseline="blur", blur_sigma=5.0,
      road_percentages=(0.1, 0.3, 0.5, 0.7, 0.9), road_noise=0.01,
      pic_thresholds=(0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5,
                      0.75),
      pic_min_pred_value=0.5, pic_random_fraction=0.01)
  config.sanity = ml_collections.ConfigDict(config.sanity.to_dict())
  return config
