"""Runs the whole study: data -> training -> maps -> trust criteria -> report.

  python -m launch.run_all                                       # synthetic, runs/synthetic
  python -m launch.run_all --config=configs/paper_siim.py --workdir=/data/runs/siim
  python -m launch.run_all --config=configs/synthetic.py --config.study.num_eval_images=50

Rerunning with the same workdir skips finished stages and resumes an interrupted one.
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from saliency_jax import compilation_cache
from saliency_jax import trust

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py"),
    "The study's ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where every stage writes; default: "
                               "the config's workdir.")
_STAGES = flags.DEFINE_list("stages", list(trust.STAGES), "Stages to run, in order.")
_REDO = flags.DEFINE_list("redo", [], "Stages to run again even if done (e.g. report).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", "workdir",
    "JAX's persistent compilation cache: workdir (<workdir>/compilation_cache), user "
    "(~/.cache/saliency_jax/compilation_cache, shared by every workdir), off, or a directory.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host runs).")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    # Checkpointing libraries log every save at INFO; progress bars and prints tell the story.
    logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  config = _CONFIG.value
  workdir = _WORKDIR.value or config.workdir
  compilation_cache.enable(_COMPILATION_CACHE.value, workdir)
  study = trust.Study(config, workdir)
  for stage in _REDO.value:
    study.progress.stages.pop(stage, None)
  logging.info("workdir: %s", os.path.abspath(workdir))
  report = study.run(_STAGES.value)
  if os.path.exists(report):
    print(f"\nReport: {os.path.abspath(report)}"
          f"\n  (also {os.path.abspath(os.path.join(workdir, 'report.md'))})")
  else:
    print(f"\nStages {', '.join(_STAGES.value)} done in {os.path.abspath(workdir)}.")


if __name__ == "__main__":
  app.run(main)
