"""The four trust criteria of the study, their baselines and verdicts, and the report.

`Study` (trust/study.py) runs the stages; scoring (`evaluation`, `verdicts`) and reporting
(`figures`, `report`) read the run manifest (`manifest`), the records and the maps through a
`map_reader.MapReader`, and import no training code: importing them does not import `Study`.
"""

__all__ = ["STAGES", "Study"]


def __getattr__(name):
  # Lazy, so that `from saliency_jax.trust import evaluation` does not import training code.
  if name in __all__:
    from saliency_jax.trust import study  # pylint: disable=g-import-not-at-top

    return getattr(study, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
