"""Faults of a study's workdir: what a user sees when stores, configs or runs go wrong."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import tiny
from saliency_jax import maps as maps_lib
from saliency_jax import trust
from saliency_jax.trust import map_reader
from saliency_jax.trust import report as report_lib
from saliency_jax.trust import workdir_lock
from saliency_jax.trust.manifest import Manifest


def _study(workdir, **study_overrides):
  config = tiny.get_config()
  for key, value in study_overrides.items():
    config.study[key] = value
  return trust.Study(config, str(workdir))


def _store(path, ids, chunk_size=2, complete=True):
  store = maps_lib.MapStore.create_or_open(
    path, num_maps=len(ids), map_shape=(4, 4), chunk_size=chunk_size, ids=ids
  )
  for i in range(store.num_chunks if complete else 1):
    start, stop = store.chunk_bounds(i)
    store.write_chunk(i, np.zeros((stop - start, 4, 4), np.float32))
  return store


def test_an_incomplete_store_names_the_redo_flag(tmp_path):
  path = map_reader.store_path(str(tmp_path), "eval", "A1", "original", "GRAD")
  _store(path, ["a", "b", "c"], complete=False)
  with pytest.raises(RuntimeError, match=f"{path} is incomplete.*--redo=maps"):
    map_reader.MapReader(str(tmp_path), ["GRAD"]).read("eval", "A1", "original", "GRAD")


def test_maps_of_other_images_than_the_set_are_an_error(tmp_path):
  # E.g. maps left by a run with another num_eval_images: values would pair with wrong ids.
  workdir = str(tmp_path)
  raw = np.zeros((3, 4, 4, 1), np.uint8)
  map_reader.write_ground_truth(
    workdir, "eval", ["a", "b", "c"], raw, np.zeros((3, 4, 4), bool), [np.zeros((0, 4))] * 3
  )
  reader = map_reader.MapReader(workdir, ["GRAD", "SG"])
  _store(map_reader.store_path(workdir, "eval", "A1", "original", "GRAD"), ["a", "b", "c"])
  assert reader.read("eval", "A1", "original", "GRAD").shape == (3, 4, 4)
  path = map_reader.store_path(workdir, "eval", "A1", "original", "SG")
  _store(path, ["a", "c"])
  with pytest.raises(ValueError, match=f"{path} holds maps of other images.*--redo=maps"):
    reader.read("eval", "A1", "original", "SG")


def _finished(workdir, config_study):
  """A workdir whose every stage is done with `config_study`'s config (nothing computed)."""
  done = _study(workdir, **config_study)
  manifest = Manifest.load(str(workdir))
  for stage in trust.STAGES:
    manifest.record_stage(stage, done.stage_config(stage))
    done.progress.record(stage, 1.0)
  manifest.save()


def _calls(study, monkeypatch):
  ran = []
  for stage in trust.STAGES:
    monkeypatch.setattr(study, f"stage_{stage}", lambda stage=stage: ran.append(stage))
  return ran


def test_a_changed_config_reruns_the_stages_that_depend_on_it(tmp_path, monkeypatch, capsys):
  _finished(tmp_path, {"num_eval_images": 6})
  same = _study(tmp_path, num_eval_images=6)
  assert _calls(same, monkeypatch) == [] and same.run() and capsys.readouterr()
  changed = _study(tmp_path, num_eval_images=4)
  ran = _calls(changed, monkeypatch)
  changed.run()
  assert ran == ["maps", "criteria", "report"]
  assert "study.num_eval_images: 6 -> 4" in capsys.readouterr().out
  with open(tmp_path / "run_manifest.json") as f:
    assert json.load(f)["stages"]["maps"]["study"]["num_eval_images"] == 4


def test_a_changed_config_refuses_a_run_that_leaves_out_the_stage_it_changes(tmp_path, monkeypatch):
  _finished(tmp_path, {"num_eval_images": 6})
  changed = _study(tmp_path, num_eval_images=4)
  ran = _calls(changed, monkeypatch)
  with pytest.raises(
    ValueError,
    match=r"maps stage ran with another config "
    r"\(study.num_eval_images: 6 -> 4\).*--stages",
  ):
    changed.run(("criteria", "report"))
  assert ran == []


def test_a_changed_learning_rate_reruns_training_which_refuses_it(tmp_path, monkeypatch):
  _finished(tmp_path, {})
  changed = _study(tmp_path)
  changed.config.train.learning_rate *= 10
  ran = _calls(changed, monkeypatch)
  changed.run()
  assert ran == ["train", "maps", "criteria", "report"]  # training then refuses (tested there)


def test_the_report_prints_the_config_the_numbers_came_from(tmp_path, monkeypatch):
  _finished(tmp_path, {"random_pairs": 3})
  study = _study(tmp_path, random_pairs=5)
  got = {}
  monkeypatch.setattr(
    report_lib, "write_report", lambda manifest, reader, config, workdir: got.update(config=config)
  )
  monkeypatch.setattr(study, "reader", lambda: None)
  study.stage_report()
  assert got["config"].study.random_pairs == 3  # the criteria stage's config


def test_maps_of_retrained_weights_replace_the_old_ones(tmp_path):
  # E.g. a rerun with more training steps: same method, images and settings, other weights.
  import jax

  from saliency_jax.maps import demo
  from saliency_jax.trust.maps_stage import MapsStage
  from saliency_jax.trust.study_data import ImageSet

  study = _study(tmp_path / "work")
  fns, _, _, _, _ = demo.tiny_problem(seed=1, num_images=3, height=8, width=8, channels=1)
  retrained = jax.tree.map(lambda v: v * 1.5, fns)
  raw = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1)).astype(np.uint8)
  image_set = ImageSet(
    "eval",
    np.array(["a", "b", "c"]),
    np.arange(3),
    raw,
    np.zeros((3, 8, 8), bool),
    [np.zeros((0, 4))] * 3,
  )
  stage = MapsStage(study.config, study.workdir, study.data, study.models)
  path = stage.store_path("eval", "A1", "original", "DEMO_GRAD")
  images = study.data.inputs(image_set, "inception")
  targets = np.ones(3, np.int32)

  def maps(model_fns, at=path):
    return stage.fill_store(
      at, demo.DemoGradient(), model_fns, image_set, images, targets, {}, model_fns
    ).read_all()

  before = maps(fns)
  after = maps(retrained)
  np.testing.assert_array_equal(after, maps(retrained, at=str(tmp_path / "fresh")))
  assert not np.array_equal(after, before)


def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdir_lock.FILENAME)
  with open(path, "w") as f:
    json.dump({"started": "earlier", **holder}, f)
  return path


def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_first(tmp_path):
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path / "work", pid=other.pid, host=socket.gethostname())
    study = _study(tmp_path / "work")
    with pytest.raises(
      workdir_lock.WorkdirBusy,
      match=f"in use by another run: pid {other.pid} on host {socket.gethostname()}",
    ):
      study.run(())
  finally:
    other.kill()
    other.wait()
  study.run(())  # Its process is gone: the lock is stale and taken over.
  assert not os.path.exists(tmp_path / "work" / workdir_lock.FILENAME)  # Released.


def test_a_lock_of_another_host_is_stale_only_without_heartbeat(tmp_path):
  path = _write_lock(tmp_path / "work", pid=123, host="elsewhere")
  study = _study(tmp_path / "work")
  with pytest.raises(workdir_lock.WorkdirBusy, match="pid 123 on host elsewhere"):
    study.run(())
  old = time.time() - workdir_lock.STALE_AFTER_S - 5
  os.utime(path, (old, old))
  study.run(())


def test_ctrl_c_prints_one_line_and_releases_the_workdir(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
  }
  workdir = tmp_path / "work"
  job = subprocess.Popen(
    [sys.executable, "-m", "launch.run_all", "--config=configs/tiny.py", f"--workdir={workdir}"],
    cwd=root,
    env=env,
    text=True,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    start_new_session=True,
  )
  try:
    seen = []
    for line in job.stdout:  # Ctrl-C once training has started, to the whole process group.
      seen.append(line)
      if line.startswith("[train] ..."):
        time.sleep(2)
        os.killpg(job.pid, signal.SIGINT)
        break
    out = "".join(seen) + job.communicate(timeout=120)[0]
  finally:
    if job.poll() is None:
      job.kill()
  assert job.returncode == 130, out[-3000:]
  assert out.count("interrupted: rerun to resume") == 1 and "Traceback" not in out, out[-3000:]
  assert not os.path.exists(workdir / workdir_lock.FILENAME)
