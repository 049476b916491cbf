"""The whole study on the built-in synthetic chest X-ray dataset, sized for a 2-core CPU.

  python -m launch.run_all                                  # this config, runs/synthetic/
  python -m launch.run_all --config=configs/synthetic.py --workdir=runs/synthetic
  python -m launch.run_all --config=configs/synthetic.py:retinanet   # RetinaNet baseline

Overrides of configs/default.py (the paper's study): small models at 64 px, fewer SmoothGrad
samples, IG steps and XRAI segmentation at the image size, fewer images, so the whole study with
every check runs in about 9 minutes on 2 idle cores (measured: data 3 s, training 133 s, maps
274 s, criteria 134 s, report 6 s; 783 CPU-seconds). Protocol choices it changes, and why, are
listed in the README ("Protocol").
"""

import ml_collections

from configs import default


def detector_localization(train: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The RetinaNet localization baseline sized for 64-pixel images on a CPU: a narrow, shallow
  Keras-style ResNet, anchors from 8 pixels (P3) up, two replicates."""
  loc = ml_collections.ConfigDict()
  loc.arch = "retinanet"
  loc.seeds = (1, 2)
  loc.kwargs = dict(
    stem_width=16,
    widths=(16, 16, 32, 32),
    blocks=(1, 1, 1, 1),
    fpn_width=32,
    head_depth=2,
    anchor_sizes=(8, 16, 32, 64, 128),
  )
  loc.train = ml_collections.ConfigDict(train.to_dict())
  loc.train.num_steps = 800
  loc.train.batch_size = 16
  loc.train.learning_rate = 1e-3
  loc.train.eval_every = 200
  loc.train.max_boxes = 4  # synthetic images hold at most 3 lesions
  loc.train.box_loss = "smooth_l1"
  return loc


def get_config(localization: str = "unet") -> ml_collections.ConfigDict:
  """localization: "unet" (default) or "retinanet" (`--config=configs/synthetic.py:retinanet`)."""
  config = default.get_config()
  config.workdir = "runs/synthetic"

  d = config.data
  d.name = "synthetic_cxr"
  d.data_dir = ""  # empty: <workdir>/data
  d.image_size = 64
  d.channels = 1
  # Only the synthetic dataset has these (it is built by the run).
  d.num_train = 1200
  d.num_val = 300
  d.num_test = 300
  d.positive_fraction = 0.5
  d.difficulty = 1.0

  config.models = [
    dict(name="A1", arch="small_vgg", seed=1),
    dict(name="A2", arch="small_vgg", seed=2),
    dict(name="A3", arch="small_vgg", seed=3),
    dict(name="B1", arch="small_densenet", seed=1),
  ]
  config.weights = ml_collections.ConfigDict()  # no ImageNet weights for these models

  t = config.train
  t.num_steps = 200
  t.learning_rate = 2e-3
  t.weight_decay = 1e-4
  t.eval_every = 100
  t.log_every = 50

  loc = config.localization
  loc.kwargs = dict(depth=3, base_width=8)
  loc.train = ml_collections.ConfigDict(t.to_dict())
  loc.train.num_steps = 150
  loc.train.batch_size = 16
  if localization == "retinanet":
    config.localization = detector_localization(t)
    config.protocol.localization_agreement = "probability"  # score maps, as the authors' RSNA
  elif localization != "unet":
    raise ValueError(f"localization must be 'unet' or 'retinanet', got {localization!r}.")

  config.methods.settings = ml_collections.ConfigDict(
    dict(
      SG=dict(samples=10),
      SIG=dict(samples=5, steps=5),
      XRAI=dict(steps=20, segmentation_size=64),
    )
  )
  config.methods.max_grads_in_flight = 64

  s = config.study
  # Every image set a multiple of chunk_size: each chunk of maps has one shape, so each method
  # compiles once per architecture (and grayscale variant), not once per set.
  s.chunk_size = 24
  s.num_eval_images = 24
  s.num_utility_images = 96  # the first 96 positive test images (the paper's SIIM: 100)
  s.chexlocalize.validation_images = 48  # CheXlocalize's threshold tuning
  s.ssim_data_range = 1.0  # the textbook value for [0, 1] maps
  s.bootstrap_resamples = 1000
  s.num_example_images = 4

  # A synthetic dataset has no authors' split, and small models have no ImageNet weights.
  config.protocol.cohort = "any"
  config.protocol.init = "random"

  # Sanity checks beyond the paper (saliency_jax.trust.sanity), each switchable.
  config.sanity = ml_collections.ConfigDict()
  # Each listed model's architecture trained again on permuted labels (same recipe, steps).
  config.sanity.data_randomization = dict(enabled=True, models=("A1", "B1"), label_seed=0)
  # Maps averaged over noisy copies (Quantus: samples=50, noise=0.1 of the range);
  # methods: () = all of config.methods.names.
  config.sanity.smooth_mprt = dict(
    enabled=True,
    models=("A1",),
    samples=8,
    noise=0.1,
    methods=("GRAD", "SG", "IG", "GCAM", "GBP", "GGCAM"),
  )
  config.sanity.efficient_mprt = dict(enabled=True, bins=100)  # every classifier
  config.sanity.random_logit = dict(enabled=True, models=("A1", "B1"), seed=0)
  # Input shift in model-input units, and the SSIM tolerance of the rule.
  config.sanity.input_invariance = dict(
    enabled=True, models=("A1", "B1"), shift=1.0, tolerance=0.01
  )
  config.sanity.faithfulness = dict(
    enabled=True,
    models=("A1",),
    steps=16,
    baseline="blur",
    blur_sigma=5.0,
    road_percentages=(0.1, 0.3, 0.5, 0.7, 0.9),
    road_noise=0.01,
    # PIC's blurred images are most of the check's time: 5 of PAIR's 13 thresholds.
    pic_thresholds=(0.005, 0.02, 0.07, 0.21, 0.5),
    pic_min_pred_value=0.5,
    pic_random_fraction=0.01,
  )
  config.sanity = ml_collections.ConfigDict(config.sanity.to_dict())
  return config
