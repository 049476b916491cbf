"""The paper's study on the RSNA Pneumonia Detection Challenge (boxes rasterized as masks).

  python -m launch.run_all --config=configs/paper_rsna.py --workdir=/runs/rsna \
      --config.data.data_dir=/data/tfds --config.data.name=rsna_pneumonia/<config> \
      --config.weights.inception_v3=... --config.weights.densenet121=...

The authors' split (prepared with --split_csv=pneumonia_splits.csv) keeps only the "Lung
Opacity" and "Normal" images; without it the run refuses to start (protocol.cohort).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "rsna_pneumonia"
  config.workdir = "runs/rsna_pneumonia"
  return config
