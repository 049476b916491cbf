"""The paper's study on the RSNA Pneumonia Detection Challenge.

  python -m launch.run_all --config=configs/paper_rsna.py --workdir=/runs/rsna \
      --config.data.data_dir=/data/tfds --config.data.name=rsna_pneumonia/<config> \
      --config.weights.inception_v3=... --config.weights.densenet121=... \
      --config.weights.resnet50=/weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

The authors' split (prepared with --split_csv=pneumonia_splits.csv) keeps only the "Lung
Opacity" and "Normal" images; without it the run refuses to start (protocol.cohort).

The localization baseline is the authors' for RSNA: two RetinaNets (ResNet-50 backbone, FPN
P3-P7, the paper's anchors) trained with different seeds on the boxes; each one's per-pixel
score map is the utility baseline, and their agreement the repeatability baseline. ImageNet
initialization of the backbone: the Keras ResNet50 notop weight file (config.weights.resnet50).
The U-Net on rasterized boxes stays available: --config.localization.arch=unet with the
U-Net settings of configs/default.py.
"""

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "rsna_pneumonia"
  config.workdir = "runs/rsna_pneumonia"
  config.weights.resnet50 = ""
  loc = ml_collections.ConfigDict()
  loc.arch = "retinanet"
  loc.seeds = (1, 2)
  loc.kwargs = dict()  # ResNet-50, 256-wide FPN and subnets, anchors 32-512
  loc.train = ml_collections.ConfigDict(config.train.to_dict())
  loc.train.batch_size = 16
  loc.train.learning_rate = 1e-4  # Adam
  loc.train.num_steps = 20000
  loc.train.max_boxes = 4  # RSNA images hold at most 4 boxes
  loc.train.box_loss = "smooth_l1"
  config.localization = loc
  config.study.num_utility_images = 0  # every positive test image, as the authors' RSNA
  config.protocol.localization_agreement = "probability"  # their RetinaNets' score maps
  return config
