"""The four trust criteria of the study, their baselines and verdicts, and the report."""
from saliency_jax.trust.study import STAGES
from saliency_jax.trust.study import Study

__all__ = ["STAGES", "Study"]
