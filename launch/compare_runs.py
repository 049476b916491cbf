"""Compares two study workdirs bit for bit: the records and every map store.

  python -m launch.compare_runs /tmp/run_before /tmp/run_after

Equal when results.json, results.csv and summary.json are byte-identical and every map store
under maps/ exists in both with byte-identical maps, ids, indices and checksums. A store's
description (manifest.json: shape, dtype, the method's recorded settings) that differs is
printed as a note, not a difference: a renamed setting changes it, not the maps. Prints each
difference; exits 1 when there is one. Used to show that a refactoring changed no number.
"""

import filecmp
import json
import os
import sys

RECORD_FILES = ("results.json", "results.csv", "summary.json")


def _stores(workdir: str) -> dict[str, list[str]]:
  """{store path relative to maps/: its file names} for every map store under workdir/maps."""
  root = os.path.join(workdir, "maps")
  out = {}
  for directory, _, files in os.walk(root):
    if "manifest.json" in files and any(f.startswith("chunk_") for f in files):
      out[os.path.relpath(directory, root)] = sorted(f for f in files if not f.startswith("."))
  return out


def compare(before: str, after: str) -> list[str]:
  problems = []
  for name in RECORD_FILES:
    a, b = os.path.join(before, name), os.path.join(after, name)
    if not (os.path.exists(a) and os.path.exists(b)):
      problems.append(f"{name}: missing in {'before' if not os.path.exists(a) else 'after'}")
    elif not filecmp.cmp(a, b, shallow=False):
      problems.append(f"{name}: differs")
  stores_a, stores_b = _stores(before), _stores(after)
  if not stores_a:
    problems.append(f"no map stores under {before}/maps")
  for store in sorted(set(stores_a) ^ set(stores_b)):
    problems.append(f"maps/{store}: only in {'before' if store in stores_a else 'after'}")
  for store in sorted(set(stores_a) & set(stores_b)):
    if stores_a[store] != stores_b[store]:
      problems.append(f"maps/{store}: files differ: {stores_a[store]} vs {stores_b[store]}")
      continue
    for f in stores_a[store]:
      a, b = (os.path.join(root, "maps", store, f) for root in (before, after))
      if filecmp.cmp(a, b, shallow=False):
        continue
      if f == "manifest.json":
        print(f"note: maps/{store}/manifest.json: {_json_difference(a, b)}")
      else:
        problems.append(f"maps/{store}/{f}: differs")
  print(f"compared {len(RECORD_FILES)} record files and {len(stores_a)} map stores")
  return problems


def _json_difference(a: str, b: str) -> str:
  """The keys (dotted paths) in which two JSON files differ."""
  with open(a) as f:
    x = json.load(f)
  with open(b) as f:
    y = json.load(f)

  def walk(x, y, path):
    if isinstance(x, dict) and isinstance(y, dict):
      for k in sorted(set(x) | set(y)):
        yield from walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
    elif x != y:
      yield f"{path}: {x!r} -> {y!r}"

  return "; ".join(walk(x, y, ""))


def main(argv) -> int:
  if len(argv) != 3:
    print(__doc__)
    return 2
  problems = compare(argv[1], argv[2])
  for p in problems:
    print("DIFFERENT:", p)
  print("bit-identical" if not problems else f"{len(problems)} differences")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
