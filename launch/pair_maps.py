"""The study's maps computed with PAIR `saliency.core`, as a PAIR user would (for the benchmarks).

`pair_map(name, settings, image, target, call_model_function)` gives one [0, 1] map of the
method `name`: PAIR's mask, then `VisualizeImageGrayscale` (Guided Grad-CAM: the product of
the two grayscale maps). IG-type methods run with batch_size = their step count.
"""

import numpy as np
from saliency import core as pair


def patch_pair_quantile():
  """PAIR 0.2.1's Guided IG calls np.quantile(interpolation=...), which NumPy 2.4 removed."""
  import types  # pylint: disable=g-import-not-at-top

  from saliency.core import guided_ig  # pylint: disable=g-import-not-at-top

  def quantile(a, q, interpolation="linear", **kwargs):
    return np.quantile(a, q, method=interpolation, **kwargs)

  shim = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
  shim.quantile = quantile
  guided_ig.np = shim


def pair_map(name, s, image, target, cmf):
  """One study map with PAIR core, as the study's code computes it."""
  gray = pair.VisualizeImageGrayscale
  args = {"target": int(target)}
  with np.errstate(divide="ignore", invalid="ignore"):
    if name == "GRAD":
      return gray(pair.GradientSaliency().GetMask(image, cmf, args))
    if name == "SG":
      return gray(
        pair.GradientSaliency().GetSmoothedMask(
          image, cmf, args, stdev_spread=s["spread"], nsamples=s["samples"], magnitude=s["squared"]
        )
      )
    base = np.full(image.shape, s.get("baseline", 0.0), np.float32)
    if name == "IG":
      return gray(
        pair.IntegratedGradients().GetMask(
          image, cmf, args, x_baseline=base, x_steps=s["steps"], batch_size=s["steps"]
        )
      )
    if name == "SIG":
      return gray(
        pair.IntegratedGradients().GetSmoothedMask(
          image,
          cmf,
          args,
          stdev_spread=s["spread"],
          nsamples=s["samples"],
          magnitude=s["squared"],
          x_baseline=base,
          x_steps=s["steps"],
          batch_size=s["steps"],
        )
      )
    if name in ("GCAM", "GGCAM"):
      gcam = gray(pair.GradCam().GetMask(image, cmf, args))
      if name == "GCAM":
        return gcam
      gbp = gray(pair.GradientSaliency().GetMask(image, cmf, {**args, "guided": True}))
      return gbp * gcam
    if name == "GBP":
      return gray(pair.GradientSaliency().GetMask(image, cmf, {**args, "guided": True}))
    if name == "XRAI":
      params = pair.XRAIParameters(
        steps=s["steps"], algorithm=s["algorithm"], area_threshold=s["area_threshold"]
      )
      out = pair.XRAI().GetMask(image, cmf, args, batch_size=s["steps"], extra_parameters=params)
      return gray(out[..., None])
    if name == "BLUR_IG":
      return gray(
        pair.BlurIG().GetMask(
          image,
          cmf,
          args,
          max_sigma=s["max_sigma"],
          steps=s["steps"],
          grad_step=s["grad_step"],
          sqrt=s["sqrt"],
          batch_size=s["steps"],
        )
      )
    if name == "GUIDED_IG":
      return gray(
        pair.GuidedIG().GetMask(
          image,
          cmf,
          args,
          x_baseline=base,
          x_steps=s["steps"],
          fraction=s["fraction"],
          max_dist=s["max_dist"],
        )
      )
    if name == "OCCLUSION":
      return gray(pair.Occlusion().GetMask(image, cmf, args, size=s["size"], value=s["value"]))
  raise ValueError(name)
