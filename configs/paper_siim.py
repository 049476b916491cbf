"""The paper's study on SIIM-ACR Pneumothorax: InceptionV3 x3 + DenseNet121 at 320x320.

Prepare the data once with the authors' split (see README, "Run the study on RSNA / SIIM"),
then on a GPU/TPU host:

  python -m launch.run_all --config=configs/paper_siim.py --workdir=/runs/siim \
      --config.data.data_dir=/data/tfds --config.data.name=siim_acr_pneumothorax/<config> \
      --config.weights.inception_v3=/weights/inception_v3_notop.h5 \
      --config.weights.densenet121=/weights/densenet121_notop.h5

Every setting is configs/default.py's (the authors' protocol and method settings).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "siim_acr_pneumothorax"
  config.workdir = "runs/siim_acr_pneumothorax"
  return config
