"""Timing helpers of the benchmark scripts."""

import time

import jax


def best_times(fns, repeats, min_seconds=1.0):
  """Best time of each of `fns`, called in turn (so that a change of the shared CPU's speed
  affects all alike) at least `repeats` times and until the first has run `min_seconds` in all
  (one call of 40 ms varies by 10%). Returns (best times, results of the last calls)."""
  best, results = [float("inf")] * len(fns), [None] * len(fns)
  spent, done = 0.0, 0
  while done < repeats or spent < min_seconds:
    for i, fn in enumerate(fns):
      start = time.perf_counter()
      results[i] = fn()
      elapsed = time.perf_counter() - start
      best[i] = min(best[i], elapsed)
      spent += elapsed if i == 0 else 0.0
    done += 1
  return best, results


def best_of(fn, repeats):
  (best,), (result,) = best_times([fn], repeats)
  return best, result


def block(x):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)
