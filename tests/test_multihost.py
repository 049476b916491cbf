"""Several JAX processes on one machine (jax.distributed on localhost): files that every host
reads are written by one host and read after a barrier; a study's results do not depend on the
number of hosts."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env():
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")]),
  }


def _run_hosts(argv_of_host, timeout=600):
  """Runs one process per host (argv_of_host(host, port)); returns their outputs.

  A host that fails ends the others (they would wait for it in a barrier) and the test.
  """
  port = _free_port()
  logs = [tempfile.TemporaryFile("w+") for _ in (0, 1)]
  jobs = [
    subprocess.Popen(
      argv_of_host(host, port),
      cwd=_ROOT,
      env=_env(),
      stdout=log,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for host, log in zip((0, 1), logs)
  ]
  deadline = time.monotonic() + timeout
  try:
    while any(job.poll() is None for job in jobs):
      failed = [job for job in jobs if job.poll() not in (None, 0)]
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    for job in jobs:
      if job.poll() is None:
        job.kill()
        job.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  failures = [
    f"host {host} (rc {job.returncode}):\n{output[-2500:]}"
    for host, (job, output) in enumerate(zip(jobs, outputs))
    if job.returncode
  ]
  assert not failures, "\n".join(failures)
  return outputs


_SETTINGS_SCRIPT = textwrap.dedent("""
    import os, sys, traceback
    import jax
    from jax.experimental import multihost_utils
    import ml_collections
    from saliency_jax import multihost
    from saliency_jax.train import workdir as train_workdir
    root, port, host = sys.argv[1], sys.argv[2], int(sys.argv[3])
    multihost.initialize(f"localhost:{port}", 2, host)
    config = ml_collections.ConfigDict(dict(batch_size=4, num_steps=2, learning_rate=1e-3,
                                            eval_every=1, log_every=1, style="inception",
                                            channels=1))
    try:
      for i in range(300):
        workdir = os.path.join(root, str(i))
        os.makedirs(workdir, exist_ok=True)
        multihost_utils.sync_global_devices("lockstep")  # both hosts start each check at once
        train_workdir.check_same_settings(workdir, config, seed=i)
    except Exception:
      traceback.print_exc()
      sys.stdout.flush()
      os._exit(1)  # at once: JAX's shutdown would wait minutes for the other host
    print("checked", i + 1)
""")


def test_fresh_training_settings_are_read_only_once_written(tmp_path):
  # Host 0 writes train_settings.json on a fresh start while host 1 checks it: host 1 must
  # never read a half-written file (it did, about one fresh start in four: JSONDecodeError).
  script = tmp_path / "settings.py"
  script.write_text(_SETTINGS_SCRIPT)
  outputs = _run_hosts(
    lambda host, port: [sys.executable, str(script), str(tmp_path / "w"), str(port), str(host)],
    timeout=300,
  )
  assert all("checked 300" in out for out in outputs), outputs


def _study_command(workdir, *flags):
  # The tiny study with three methods (XRAI for its worker pool), to keep the test short.
  return [
    sys.executable,
    "-m",
    "launch.run_all",
    "--config=configs/tiny.py",
    "--config.methods.names=('GRAD', 'SG', 'XRAI')",
    "--config.sanity.smooth_mprt.methods=('GRAD', 'SG')",
    f"--workdir={workdir}",
    *flags,
  ]


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    records = json.load(f)
  with open(os.path.join(workdir, "summary.json")) as f:
    scorecard = json.load(f)["scorecard"]
  with open(os.path.join(workdir, "models", "summary.json")) as f:
    models = json.load(f)
  return records, scorecard, models


def test_two_hosts_give_the_results_of_one_process(tmp_path):
  # The reference is one process with two CPU devices, the mesh that two hosts of one device
  # each make: the same per-device work and the same two-term reductions, so the results are
  # equal exactly (a different device count would change float summation orders). Validation
  # losses and Dice are means over examples gathered in another order: equal to rounding.
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  reference = subprocess.Popen(
    _study_command(one),
    cwd=_ROOT,
    env={**_env(), "JAX_NUM_CPU_DEVICES": "2"},
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    hosts = _run_hosts(
      lambda host, port: _study_command(
        two, f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={host}"
      ),
      timeout=1200,
    )
    out = reference.communicate(timeout=1200)[0]
  finally:
    if reference.poll() is None:
      reference.kill()
  assert reference.returncode == 0, out[-3000:]
  records_one, scorecard_one, models_one = _results(one)
  records_two, scorecard_two, models_two = _results(two)
  assert models_two.keys() == models_one.keys()
  for name, entry in models_one.items():
    assert models_two[name] == {
      k: pytest.approx(v, rel=1e-6) if isinstance(v, float) else v for k, v in entry.items()
    }, name
  assert scorecard_two == scorecard_one
  assert records_two == records_one
  # One host tells the story: the other one neither scores, reports nor draws bars.
  assert "[criteria] done" in hosts[0] and "Report:" in hosts[0] and "maps A1" in hosts[0]
  for text in ("[criteria]", "[report]", "Report:", "maps A1", "train A1", "[train]"):
    assert text not in hosts[1], (text, hosts[1][-2000:])
  assert "host 1: done" in hosts[1]


_DEAD_HOST_SCRIPT = textwrap.dedent("""
    import os, sys
    from jax.experimental import multihost_utils
    from launch import run_all
    from saliency_jax import multihost
    port, host = sys.argv[1], int(sys.argv[2])
    multihost.initialize(f"localhost:{port}", 2, host)
    multihost_utils.sync_global_devices("started")
    if host == 1:
      os._exit(1)  # as a killed host
    try:
      multihost_utils.sync_global_devices("host 1 never comes")
    except Exception as e:
      print(run_all._host_failure(e), flush=True)
      os._exit(1)
""")


def test_the_surviving_host_names_the_dead_one(tmp_path):
  script = tmp_path / "dead.py"
  script.write_text(_DEAD_HOST_SCRIPT)
  port = _free_port()
  jobs = [
    subprocess.Popen(
      [sys.executable, str(script), str(port), str(host)],
      cwd=_ROOT,
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for host in (0, 1)
  ]
  try:
    out = jobs[0].communicate(timeout=240)[0]
  finally:
    for job in jobs:
      job.kill()
      job.wait()
  assert (
    "host 0: host(s) 1 of 2 stopped; restart every host with the same command: the "
    "run resumes where it stopped."
  ) in out, out[-3000:]
