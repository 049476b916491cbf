"""GRAD, GCAM, GBP, GGCAM, to_grayscale and the registry vs PAIR saliency.core."""

from attribution_models import full_float32_precision  # noqa: F401 (autouse)
from attribution_models import pair_call_model_function
from attribution_models import random_images
from attribution_models import tiny_model
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from saliency import core as pair

from saliency_jax import attributions
from saliency_jax.attributions import _execution
from saliency_jax.attributions import guided_relu
from saliency_jax.models.functions import model_functions
from saliency_jax.models.functions import ModelFunctions

SHAPES = [(2, 12, 10, 3), (1, 9, 9, 1)]  # non-square RGB and square grayscale


@pytest.fixture(scope="module", params=SHAPES, ids=["12x10x3", "9x9x1"])
def setup(request):
  b, h, w, c = request.param
  _, _, fns = tiny_model(channels=c, size=(h, w))
  images = random_images((b, h, w, c), seed=h)
  targets = np.arange(b) % 3
  return fns, images, targets


def test_gradient_equals_pair(setup):
  fns, images, targets = setup
  ours = np.asarray(attributions.gradient(fns.logits_fn, images, targets, max_grads_in_flight=1))
  cmf = pair_call_model_function(fns)
  for i, t in enumerate(targets):
    ref = pair.GradientSaliency().GetMask(images[i], cmf, {"target": int(t)})
    np.testing.assert_allclose(ours[i], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, None])
def test_gradcam_equals_pair(setup, chunk):
  fns, images, targets = setup
  ours = np.asarray(
    attributions.gradcam(
      fns.features_fn,
      fns.head_fn,
      images,
      targets,
      resize="skimage_bilinear",
      max_grads_in_flight=chunk,
    )
  )
  raw = np.asarray(attributions.gradcam(fns.features_fn, fns.head_fn, images, targets, resize=None))
  cmf = pair_call_model_function(fns)
  for i, t in enumerate(targets):
    ref = pair.GradCam().GetMask(images[i], cmf, {"target": int(t)}, three_dims=False)
    np.testing.assert_allclose(ours[i], ref, rtol=1e-5, atol=1e-6)
    ref_raw = pair.GradCam().GetMask(
      images[i], cmf, {"target": int(t)}, should_resize=False, three_dims=False
    )
    np.testing.assert_allclose(raw[i], ref_raw, rtol=1e-5, atol=1e-6)


def _tf1_resize_bilinear_reference(g, out_h, out_w):
  """TF1 tf.image.resize_bilinear (align_corners=False, half_pixel_centers=False), by loops."""
  in_h, in_w = g.shape
  out = np.zeros((out_h, out_w))
  for y in range(out_h):
    sy = y * (in_h / out_h)
    y0 = int(np.floor(sy))
    y1 = min(y0 + 1, in_h - 1)
    ty = sy - y0
    for x in range(out_w):
      sx = x * (in_w / out_w)
      x0 = int(np.floor(sx))
      x1 = min(x0 + 1, in_w - 1)
      tx = sx - x0
      top = g[y0, x0] + (g[y0, x1] - g[y0, x0]) * tx
      bottom = g[y1, x0] + (g[y1, x1] - g[y1, x0]) * tx
      out[y, x] = top + (bottom - top) * ty
  return out


def test_gradcam_tf1_resize(setup):
  fns, images, targets = setup
  ours = np.asarray(attributions.gradcam(fns.features_fn, fns.head_fn, images, targets))
  raw = np.asarray(attributions.gradcam(fns.features_fn, fns.head_fn, images, targets, resize=None))
  for i in range(len(targets)):
    g = raw[i] / raw[i].max() if raw[i].max() > 0 else raw[i]
    ref = _tf1_resize_bilinear_reference(g, *images.shape[1:3])
    np.testing.assert_allclose(ours[i], ref, rtol=1e-5, atol=1e-6)


def test_gradcam_all_zero_map_is_zero():
  zero_feats = lambda x: jnp.zeros(x.shape[:1] + (4, 4, 6))
  head = lambda f: f.mean(axis=(1, 2)) @ jnp.ones((6, 2))
  out = attributions.gradcam(zero_feats, head, np.zeros((2, 8, 8, 1)), np.array([0, 1]))
  np.testing.assert_array_equal(np.asarray(out), 0.0)


class _HandNet(nn.Module):
  """y = w2 . act(W1 x): two hidden ReLU units, hand-checkable guided backprop."""

  activation: object = nn.relu
  num_classes: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(
      2, use_bias=False, name="hidden", kernel_init=lambda *_: jnp.array([[1.0, -1.0], [2.0, 1.0]])
    )(x.reshape(x.shape[0], -1))
    return nn.Dense(
      1, use_bias=False, name="out", kernel_init=lambda *_: jnp.array([[1.0], [-3.0]])
    )(self.activation(h))


def test_guided_backprop_hand_checked():
  module = _HandNet()
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 2, 1)))
  guided_fn = module.clone(activation=guided_relu).apply
  # x = (1, 1): h = (1*1 + 2*1, -1*1 + 1*1) = (3, 0). Unit 1 active, unit 2 at 0 (inactive).
  # plain: dy/dx = 1 * W1[:,0] = (1, 2).
  # x = (2, -0.5): h = (2 - 1, -2 - 0.5) -> (1, -2.5): unit 1 active, gradient into it is +1.
  # x = (-1, 3): h = (-1 + 6, 1 + 3) = (5, 4): both active; incoming grads (1, -3): guided keeps
  #   only unit 1 -> (1, 2); plain would be 1*(1,2) - 3*(-1,1) = (4, -1).
  x = np.array([[1.0, 1.0], [2.0, -0.5], [-1.0, 3.0]], np.float32).reshape(3, 1, 2, 1)
  guided = attributions.guided_backprop(lambda z: guided_fn(variables, z), x, np.zeros(3, int))
  plain = attributions.gradient(lambda z: module.apply(variables, z), x, np.zeros(3, int))
  np.testing.assert_allclose(np.asarray(guided).reshape(3, 2), [[1, 2], [1, 2], [1, 2]])
  np.testing.assert_allclose(np.asarray(plain).reshape(3, 2), [[1, 2], [1, 2], [4, -1]])
  # Guided backprop also drops negative gradients at the input side of a ReLU stack:
  # the negative output weight on unit 2 never reaches the input.


def test_guided_relu_rule():
  x = jnp.array([-1.0, 0.0, 2.0, 3.0])
  _, vjp = jax.vjp(guided_relu, x)
  (g,) = vjp(jnp.array([1.0, 1.0, -1.0, 2.0]))
  np.testing.assert_array_equal(np.asarray(g), [0.0, 0.0, 0.0, 2.0])


def _maps_for_grayscale():
  rng = np.random.default_rng(3)
  yield rng.normal(size=(2, 13, 7, 3)).astype(np.float32)  # odd, non-square
  yield rng.integers(-2, 3, size=(2, 10, 10, 1)).astype(np.float32)  # many ties
  const = np.zeros((2, 6, 5, 3), np.float32)
  const[1] = 0.5
  yield const  # constant maps -> NaN
  spiky = np.zeros((1, 20, 20, 1), np.float32)
  spiky[0, 0, 0] = 5.0
  yield spiky  # p99 == min: NaN and 1
  yield rng.normal(size=(3, 31, 17, 2)).astype(np.float32) ** 3


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("percentile", [99, 50, 10])
def test_to_grayscale_equals_pair(index, percentile):
  maps = list(_maps_for_grayscale())[index]
  ours = np.asarray(attributions.to_grayscale(maps, percentile))
  with np.errstate(divide="ignore", invalid="ignore"):
    ref = np.stack([pair.VisualizeImageGrayscale(m, percentile) for m in maps])
  np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_percentile_of_rows_equals_numpy():
  """Both top_k ends (large and small q), ties, +-0, inf and NaN rows, odd lengths."""
  from saliency_jax.attributions.grayscale import percentile_of_rows

  rng = np.random.default_rng(0)
  for n in (97, 4096, 1):
    rows = np.concatenate(
      [
        rng.normal(size=(3, n)),
        rng.integers(0, 3, size=(2, n)),
        rng.choice([-0.0, 0.0, 1.0], size=(1, n)),
      ]
    ).astype(np.float32)
    if n > 1:
      rows[1, 5] = np.inf
      rows[2, :3] = -np.inf
    rows = np.concatenate([rows, rows[:1]])
    rows[-1, 0] = np.nan
    for q in (99, 50, 10, 0, 100, 37.5, 99.9):
      ours = np.asarray(jax.jit(lambda v: percentile_of_rows(v, q))(rows))
      with np.errstate(invalid="ignore"):
        ref = np.array([np.percentile(r, q) for r in rows], np.float32)
      np.testing.assert_array_equal(ours, ref, err_msg=f"n={n} q={q}")


@pytest.mark.parametrize("index", [0, 1, 4])
def test_to_diverging_equals_pair(index):
  maps = list(_maps_for_grayscale())[index]
  ours = np.asarray(attributions.to_diverging(maps))
  ref = np.stack([pair.VisualizeImageDiverging(m) for m in maps])
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_to_grayscale_nan_to():
  maps = np.ones((1, 4, 4, 1), np.float32)
  out = np.asarray(attributions.to_grayscale(maps, nan_to=0.0))
  np.testing.assert_array_equal(out, 0.0)


def test_registry_grad_gcam_gbp_ggcam(setup):
  fns, images, targets = setup
  cmf = pair_call_model_function(fns)
  m = attributions.METHODS
  grad = np.asarray(m["GRAD"].compute(fns, images, targets, settings={"max_grads_in_flight": 1}))
  gcam = np.asarray(
    m["GCAM"].compute(fns, images, targets, settings={"resize": "skimage_bilinear"})
  )
  gbp = np.asarray(m["GBP"].compute(fns, images, targets))
  ggcam = np.asarray(
    m["GGCAM"].compute(fns, images, targets, settings={"resize": "skimage_bilinear"})
  )
  guided_cmf = pair_call_model_function(
    ModelFunctions(fns.guided_logits_fn, fns.features_fn, fns.head_fn)
  )
  for i, t in enumerate(targets):
    args = {"target": int(t)}
    with np.errstate(divide="ignore", invalid="ignore"):
      ref_grad = pair.VisualizeImageGrayscale(pair.GradientSaliency().GetMask(images[i], cmf, args))
      ref_gcam = pair.VisualizeImageGrayscale(pair.GradCam().GetMask(images[i], cmf, args))
      ref_gbp = pair.VisualizeImageGrayscale(
        pair.GradientSaliency().GetMask(images[i], guided_cmf, args)
      )
    np.testing.assert_allclose(grad[i], ref_grad, atol=2e-5)
    np.testing.assert_allclose(gcam[i], ref_gcam, atol=2e-5)
    np.testing.assert_allclose(gbp[i], ref_gbp, atol=2e-5)
    np.testing.assert_allclose(ggcam[i], ref_gbp * ref_gcam, atol=4e-5)
  assert grad.dtype == np.float32 and grad.shape == images.shape[:3]


def test_registry_diverging_visualization_equals_pair(setup):
  """visualization="diverging": PAIR's VisualizeImageDiverging of the raw map; GGCAM is the
  signed guided backprop times the Grad-CAM grayscale, then diverging."""
  fns, images, targets = setup
  cmf = pair_call_model_function(fns)
  guided_cmf = pair_call_model_function(
    ModelFunctions(fns.guided_logits_fn, fns.features_fn, fns.head_fn)
  )
  m = attributions.METHODS
  settings = {"visualization": "diverging", "resize": "skimage_bilinear"}
  grad = np.asarray(
    m["GRAD"].compute(fns, images, targets, settings={"visualization": "diverging"})
  )
  ggcam = np.asarray(m["GGCAM"].compute(fns, images, targets, settings=settings))
  for i, t in enumerate(targets):
    args = {"target": int(t)}
    raw_grad = pair.GradientSaliency().GetMask(images[i], cmf, args)
    raw_gbp = pair.GradientSaliency().GetMask(images[i], guided_cmf, args)
    with np.errstate(divide="ignore", invalid="ignore"):
      ref_gcam = pair.VisualizeImageGrayscale(pair.GradCam().GetMask(images[i], cmf, args))
    np.testing.assert_allclose(grad[i], pair.VisualizeImageDiverging(raw_grad), atol=2e-5)
    np.testing.assert_allclose(
      ggcam[i], pair.VisualizeImageDiverging(raw_gbp * ref_gcam[..., None]), atol=4e-5
    )
  assert (grad < 0.5).any() and (grad > 0.5).any()  # the sign is kept
  with pytest.raises(ValueError, match="visualization must be one of"):
    m["GRAD"].compute(fns, images, targets, settings={"visualization": "signed"})


def test_registry_rejects_unknown_settings(setup):
  fns, images, targets = setup
  with pytest.raises(ValueError, match="unknown settings"):
    attributions.METHODS["GRAD"].compute(fns, images, targets, settings={"samples": 3})


def test_registry_compiles_once_per_architecture():
  """ModelFunctions carry a Flax model's variables as pytree leaves: one compilation serves
  every model state (and the maps still follow the variables)."""
  module, variables, fns = tiny_model(channels=1, size=(8, 8))
  images = random_images((2, 8, 8, 1))
  targets = np.array([0, 1])
  v2 = jax.tree.map(lambda p: -p, variables)
  settings = {"max_grads_in_flight": 3}
  compute = attributions.METHODS["GRAD"].compute
  out1 = np.asarray(compute(fns, images, targets, settings=settings))
  out2 = np.asarray(compute(model_functions(module, v2), images, targets, settings=settings))
  ref2 = np.asarray(
    attributions.to_grayscale(attributions.gradient(lambda x: module.apply(v2, x), images, targets))
  )
  np.testing.assert_allclose(out2, ref2, atol=1e-6)
  assert not np.allclose(out1, out2)
  cache = _execution._CACHE  # pylint: disable=protected-access
  key = next(
    k
    for k in cache
    if k[:2] == ("method", "GRAD") and k[3] == "pytree" and dict(k[2])["max_grads_in_flight"] == 3
  )
  assert cache[key][1]._cache_size() == 1
