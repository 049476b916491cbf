"""Accounting of the examples a dataset build skipped, and why.

A build of a real dataset goes on past bad input (a corrupt DICOM, a missing
file, a CSV row that does not parse, an RLE past the image, a box outside the
image) and records each skipped example here. The report counts skips per
reason and keeps the first few ids and messages per reason; it is written as
JSON next to the dataset (`skip_report.json` in the dataset's version
directory) and printed at the end of the build.

Notes are counted like skips but the example was kept (e.g. a mask that
vanished when resized and was re-drawn from the pixels it overlaps).
"""

import collections
import json
import os
from typing import Any

REPORT_FILENAME = "skip_report.json"


class BuildReport:
  """Counts of skipped examples per reason, with the first few examples each.

  Attributes:
    dataset: the dataset (and config) name the report is about.
    max_examples: how many (id, detail) pairs to keep per reason.
  """

  def __init__(self, dataset: str, max_examples: int = 5):
    self.dataset = dataset
    self.max_examples = max_examples
    self.skipped: collections.Counter[str] = collections.Counter()
    self.notes: collections.Counter[str] = collections.Counter()
    self.written: collections.Counter[str] = collections.Counter()
    self.skipped_ids: set[str] = set()
    self._skip_examples: dict[str, list[dict[str, str]]] = {}
    self._note_examples: dict[str, list[dict[str, str]]] = {}
    self.info: dict[str, Any] = {}

  def skip(self, reason: str, example_id: str, detail: str = "") -> None:
    """Records that `example_id` was left out of the dataset for `reason`."""
    self.skipped[reason] += 1
    self.skipped_ids.add(example_id)
    examples = self._skip_examples.setdefault(reason, [])
    if len(examples) < self.max_examples:
      examples.append({"id": example_id, "detail": detail})

  def note(self, name: str, example_id: str = "", detail: str = "") -> None:
    """Records something worth knowing about a kept example."""
    self.notes[name] += 1
    examples = self._note_examples.setdefault(name, [])
    if len(examples) < self.max_examples:
      examples.append({"id": example_id, "detail": detail})

  def wrote(self, split: str, count: int = 1) -> None:
    self.written[split] += count

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  def to_dict(self) -> dict[str, Any]:
    return {
      "dataset": self.dataset,
      "written": dict(sorted(self.written.items())),
      "num_written": sum(self.written.values()),
      "num_skipped": self.num_skipped,
      "skipped": {
        reason: {"count": count, "examples": self._skip_examples[reason]}
        for reason, count in sorted(self.skipped.items())
      },
      "notes": {
        name: {"count": count, "examples": self._note_examples[name]}
        for name, count in sorted(self.notes.items())
      },
      "info": self.info,
    }

  def write(self, directory: str | os.PathLike[str]) -> str:
    """Writes the report as JSON into `directory`; returns the file path."""
    path = os.path.join(os.fspath(directory), REPORT_FILENAME)
    with open(path, "w") as f:
      json.dump(self.to_dict(), f, indent=2, sort_keys=False)
      f.write("\n")
    return path

  def format(self) -> str:
    return format_report(self.to_dict())


def format_report(report: dict[str, Any]) -> str:
  """Human-readable summary of a report dict (as written to JSON)."""
  lines = [f"Build report for {report['dataset']}:"]
  written = ", ".join(f"{k}={v}" for k, v in report["written"].items())
  lines.append(f"  written: {report['num_written']} examples ({written or 'none'})")
  lines.append(f"  skipped: {report['num_skipped']} examples")
  for reason, entry in report["skipped"].items():
    lines.append(f"    {reason}: {entry['count']}")
    for example in entry["examples"]:
      lines.append(f"      e.g. {example['id']}: {example['detail']}")
  if report["notes"]:
    lines.append("  notes (examples kept):")
    for name, entry in report["notes"].items():
      lines.append(f"    {name}: {entry['count']}")
      for example in entry["examples"]:
        lines.append(f"      e.g. {example['id']}: {example['detail']}")
  return "\n".join(lines)


def load_report(dataset_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """Reads the report written into a built dataset's version directory."""
  with open(os.path.join(os.fspath(dataset_dir), REPORT_FILENAME)) as f:
    return json.load(f)
