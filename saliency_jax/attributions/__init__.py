"""Saliency methods in JAX, batched and jit-able, equal to PAIR `saliency.core` (see tests).

Pixel-space methods return [B,H,W,C]; Grad-CAM and XRAI return [B,H,W]. `METHODS` maps the
study's method names to `MapMethod`s that return its 2-D [0,1] maps.
"""

from saliency_jax.attributions.blur_ig import blur_ig
from saliency_jax.attributions.gradcam import gradcam
from saliency_jax.attributions.gradient import gradient
from saliency_jax.attributions.grayscale import to_diverging
from saliency_jax.attributions.grayscale import to_grayscale
from saliency_jax.attributions.guided_backprop import guided_backprop
from saliency_jax.attributions.guided_ig import guided_ig
from saliency_jax.attributions.guided_relu import guided_relu
from saliency_jax.attributions.integrated_gradients import completeness as ig_completeness
from saliency_jax.attributions.integrated_gradients import integrated_gradients
from saliency_jax.attributions.occlusion import occlusion
from saliency_jax.attributions.registry import MapMethod
from saliency_jax.attributions.registry import METHODS
from saliency_jax.attributions.smooth_integrated_gradients import smooth_integrated_gradients
from saliency_jax.attributions.smoothgrad import smoothgrad
from saliency_jax.attributions.xrai import xrai
from saliency_jax.attributions.xrai import xrai_base_attribution
