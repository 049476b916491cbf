"""Which finished stages ran with another config (trust/config_changes.py)."""

import ml_collections
import pytest

from saliency_jax.trust import config_changes


def test_changed_fields_name_each_changed_leaf_and_ignore_the_workdir():
  recorded = {"seed": 0, "workdir": "/a", "study": {"num_eval_images": 6, "models": ["A1", "A2"]}}
  now = {"seed": 0, "workdir": "/b", "study": {"num_eval_images": 4, "models": ("A1", "A2")}}
  # A tuple now equals the list JSON recorded; the workdir says where, not what.
  assert config_changes.changed_fields(recorded, now) == ["study.num_eval_images: 6 -> 4"]
  assert config_changes.changed_fields(None, now) == []  # nothing recorded: nothing to compare
  added = config_changes.changed_fields({"seed": 0}, {"seed": 0, "data": {"name": "x"}})
  assert added == ["data: None -> {'name': 'x'}"]


def test_stage_config_holds_the_sections_the_stage_reads():
  config = ml_collections.ConfigDict(dict(seed=1, data=dict(name="x"), study=dict(alpha=0.05)))
  assert config_changes.stage_config(config, "data") == {"seed": 1, "data": {"name": "x"}}
  assert config_changes.stage_config(config, "criteria") == {"seed": 1, "study": {"alpha": 0.05}}
  assert config_changes.stage_config(config, "report") == config.to_dict()


def test_the_first_changed_done_stage_is_redone():
  changed = {"train": ["train.steps: 5 -> 6"], "criteria": ["study.alpha: 0.05 -> 0.1"]}
  done = {"data", "train", "maps", "criteria"}
  redo = config_changes.stage_to_redo(
    config_changes.STAGES, done.__contains__, lambda s: changed.get(s, [])
  )
  assert redo == ("train", ["train.steps: 5 -> 6"])
  # A changed stage not done yet runs anyway: nothing to redo.
  assert (
    config_changes.stage_to_redo(config_changes.STAGES, {"data"}.__contains__, changed.get) is None
  )
  with pytest.raises(ValueError, match=r"the train stage ran with another config \(train.steps"):
    config_changes.stage_to_redo(
      ("maps", "criteria"), done.__contains__, lambda s: changed.get(s, [])
    )


def test_the_summary_names_the_first_five_fields():
  assert config_changes.summary(["a: 1 -> 2"]) == "a: 1 -> 2"
  assert config_changes.summary([str(i) for i in range(7)]) == "0; 1; 2; 3; 4 ..."
