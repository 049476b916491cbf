"""Runs the whole study: data -> training -> maps -> trust criteria -> report.

  python -m launch.run_all                                       # synthetic, runs/synthetic
  python -m launch.run_all --config=configs/paper_siim.py --workdir=/data/runs/siim
  python -m launch.run_all --config=configs/synthetic.py --config.study.num_eval_images=50

Rerunning with the same workdir skips finished stages and resumes an interrupted one.

Several hosts: the same command on every host with --distributed (under SLURM, MPI, a TPU pod
or Kubernetes, JAX finds the others itself); anywhere else name them:

  python -m launch.run_all --workdir=/shared/run --coordinator_address=host0:1234 \
      --num_processes=2 --process_id=0        # and --process_id=1 on the other host
"""

import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from saliency_jax import api
from saliency_jax import compilation_cache
from saliency_jax import multihost
from saliency_jax import trust
from saliency_jax.trust import config_check

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py"),
  "The study's ml_collections config file.",
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where every stage writes; default: the config's workdir."
)
_STAGES = flags.DEFINE_list("stages", list(trust.STAGES), "Stages to run, in order.")
_REDO = flags.DEFINE_list("redo", [], "Stages to run again even if done (e.g. report).")
_COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache",
  "workdir",
  "JAX's persistent compilation cache: workdir (<workdir>/compilation_cache), user "
  "(~/.cache/saliency_jax/compilation_cache, shared by every workdir), off, or a directory.",
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Run as one of several hosts (jax.distributed.initialize; the "
  "three flags below, or the cluster's environment when they are unset).",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (implies --distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of hosts.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This host's index.")


def _host_failure(error: Exception) -> str:
  """One line for a failed host of a multi-host run: which hosts are gone, how to resume."""
  me, count = jax.process_index(), jax.process_count()
  gone = []
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top

    live = distributed.global_state.client.get_live_nodes(list(range(count)))
    gone = sorted(set(range(count)) - set(live))
  except Exception:  # pylint: disable=broad-except
    pass  # an older JAX or a coordinator that is gone itself: say what is known
  who = (
    f"host(s) {', '.join(map(str, gone))} of {count} stopped"
    if gone
    else f"host {me} of {count} failed ({type(error).__name__})"
  )
  return (
    f"host {me}: {who}; restart every host with the same command: the run resumes where it stopped."
  )


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    # Checkpointing libraries log every save at INFO; progress bars and prints tell the story.
    logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  workdir = _WORKDIR.value or config.workdir
  config_check.validate(config)  # the whole config, before anything is written
  compilation_cache.enable(_COMPILATION_CACHE.value, workdir)
  logging.info("workdir: %s", os.path.abspath(workdir))
  try:
    # The Python API's entry point, with the config's dataset and models.
    report = api.evaluate(
      config=config, workdir=workdir, stages=_STAGES.value, redo=_REDO.value, load_records=False
    ).report
  except KeyboardInterrupt:
    print("interrupted: rerun to resume", file=sys.stderr, flush=True)
    os._exit(130)  # at once: library threads and pools would print their own tracebacks
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    # A host that stopped leaves the others in a collective or a barrier: say which host
    # failed and how to go on, and exit without JAX's shutdown barrier (minutes of waiting).
    traceback.print_exc()
    print(_host_failure(e), file=sys.stderr, flush=True)
    os._exit(1)
  if not multihost.is_writer():
    print(f"host {jax.process_index()}: done (host 0 writes the scores and the report).")
  elif os.path.exists(report):
    print(
      f"\nReport: {os.path.abspath(report)}"
      f"\n  (also {os.path.abspath(os.path.join(workdir, 'report.md'))})"
    )
  else:
    print(f"\nStages {', '.join(_STAGES.value)} done in {os.path.abspath(workdir)}.")


if __name__ == "__main__":
  app.run(main)
