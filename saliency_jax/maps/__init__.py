"""Saliency maps for whole datasets: a chunked, resumable on-disk store and a sharded generator."""

from saliency_jax.maps.generate import generate_maps
from saliency_jax.maps.generate import MapInputs
from saliency_jax.maps.generate import MapPlan
from saliency_jax.maps.prepared import PreparedCache
from saliency_jax.maps.runner import batch_mesh
from saliency_jax.maps.runner import map_mesh
from saliency_jax.maps.store import iter_aligned
from saliency_jax.maps.store import MapChunk
from saliency_jax.maps.store import MapStore
