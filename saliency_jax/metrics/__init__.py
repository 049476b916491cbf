"""Map metrics and statistics, batched over a leading axis, equal to their references.

Localization (map vs binary mask), similarity (map vs map) and aggregation / tests. Every metric
returns float64 [N], one value per map; undefined cases are NaN under one policy, stated in
`saliency_jax.metrics.policy` (`POLICY_TEXT`), and the aggregation helpers count what they
exclude. `*_jax` variants are pure JAX (float32) and can be used inside `jax.jit`.
"""

from saliency_jax.metrics.chexlocalize import iou
from saliency_jax.metrics.localization import auprc
from saliency_jax.metrics.localization import auprc_jax
from saliency_jax.metrics.localization import average_precision
from saliency_jax.metrics.localization import average_precision_jax
from saliency_jax.metrics.localization import energy_pointing
from saliency_jax.metrics.localization import energy_pointing_jax
from saliency_jax.metrics.localization import pointing_game
from saliency_jax.metrics.localization import pointing_game_jax
from saliency_jax.metrics.localization import rank_metrics
from saliency_jax.metrics.localization import relevance_mass_accuracy
from saliency_jax.metrics.localization import relevance_mass_accuracy_jax
from saliency_jax.metrics.localization import relevance_rank_accuracy
from saliency_jax.metrics.localization import relevance_rank_accuracy_jax
from saliency_jax.metrics.localization import roc_auc
from saliency_jax.metrics.localization import roc_auc_jax
from saliency_jax.metrics.localization import top_k_intersection
from saliency_jax.metrics.localization import top_k_intersection_jax
from saliency_jax.metrics.policy import POLICY_TEXT
from saliency_jax.metrics.similarity import average_ranks
from saliency_jax.metrics.similarity import hog_features
from saliency_jax.metrics.similarity import hog_pearson
from saliency_jax.metrics.similarity import hog_similarity
from saliency_jax.metrics.similarity import l1
from saliency_jax.metrics.similarity import l1_jax
from saliency_jax.metrics.similarity import mse
from saliency_jax.metrics.similarity import mse_jax
from saliency_jax.metrics.similarity import pearson
from saliency_jax.metrics.similarity import pearson_jax
from saliency_jax.metrics.similarity import spearman
from saliency_jax.metrics.similarity import spearman_jax
from saliency_jax.metrics.similarity import top_k_iou
from saliency_jax.metrics.statistics import benjamini_hochberg
from saliency_jax.metrics.statistics import bootstrap_ci
from saliency_jax.metrics.statistics import correct
from saliency_jax.metrics.statistics import holm
from saliency_jax.metrics.statistics import paired_t
from saliency_jax.metrics.statistics import summarize
from saliency_jax.metrics.statistics import TestResult
from saliency_jax.metrics.statistics import wilcoxon
from saliency_jax.metrics.structural_similarity import ssim
from saliency_jax.metrics.structural_similarity import ssim_jax
