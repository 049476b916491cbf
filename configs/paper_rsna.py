"""The paper's study on the RSNA Pneumonia Detection Challenge (boxes rasterized as masks).

  python -m launch.run_all --config=configs/paper_rsna.py --workdir=/runs/rsna \
      --config.data.data_dir=/data/tfds --config.data.name=rsna_pneumonia/<config>
"""
from configs import paper_siim


def get_config():
  return paper_siim.get_config("rsna_pneumonia")
