"""A tiny study for the end-to-end test: every stage, every method, seconds per stage.

python -m launch.run_all --config=configs/tiny.py --workdir=/tmp/tiny
python -m launch.run_all --config=configs/tiny.py:retinanet --workdir=/tmp/tiny_detector
"""

from configs import synthetic


def get_config(localization: str = "unet"):
  """localization: "unet" (default) or "retinanet" (the detector baseline, every stage)."""
  config = synthetic.get_config(localization)
  config.workdir = "runs/tiny"
  d = config.data
  d.image_size, d.num_train, d.num_val, d.num_test = 32, 96, 32, 24
  # Narrow, shallow models: the test pays mostly for compiling them.
  config.models = [
    dict(name="A1", arch="small_vgg", seed=1, kwargs=dict(stem_width=4, widths=(8, 16))),
    dict(name="A2", arch="small_vgg", seed=2, kwargs=dict(stem_width=4, widths=(8, 16))),
    dict(
      name="B1",
      arch="small_densenet",
      seed=1,
      kwargs=dict(stem_width=4, growth_rate=4, layers_per_block=(2, 2)),
    ),
  ]
  if localization == "retinanet":
    config.localization.kwargs = dict(
      stem_width=4,
      widths=(4, 4, 8, 8),
      blocks=(1, 1, 1, 1),
      fpn_width=8,
      head_depth=1,
      anchor_sizes=(8, 16, 32, 64, 128),
    )
  else:
    config.localization.kwargs = dict(depth=2, base_width=8)
  config.train.num_steps = 6
  config.train.batch_size = 16
  config.train.eval_every = 6
  config.train.log_every = 3
  config.localization.train.num_steps = 4
  config.localization.train.batch_size = 16
  config.localization.train.eval_every = 4
  config.methods.settings.SG.samples = 2
  config.methods.settings.SIG.samples = 2
  config.methods.settings.SIG.steps = 2
  config.methods.settings.IG = dict(steps=3)
  config.methods.settings.XRAI.steps = 3
  config.methods.settings.XRAI.segmentation_size = 32
  config.study.num_eval_images = 6
  config.study.num_utility_images = 8
  config.study.random_pairs = 3
  config.study.bootstrap_resamples = 100
  config.study.chunk_size = 8
  config.study.num_example_images = 2
  # One extra grayscale variant (its maps are the checks' main cost), few validation images.
  config.study.robustness.grayscale = ("configured", "diverging")
  config.study.chexlocalize.validation_images = 8
  sanity = config.sanity
  sanity.data_randomization.models = ("A1",)
  sanity.smooth_mprt.samples = 2
  sanity.smooth_mprt.methods = ("GRAD", "SG", "GBP")
  sanity.random_logit.models = ("A1",)
  sanity.input_invariance.models = ("B1",)
  sanity.faithfulness.steps = 4
  sanity.faithfulness.road_percentages = (0.25, 0.75)
  sanity.faithfulness.pic_thresholds = (0.05, 0.25, 0.5)
  sanity.faithfulness.pic_min_pred_value = 0.0
  return config
