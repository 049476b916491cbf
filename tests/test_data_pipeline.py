"""Tests of the model preprocessing and of the Grain input pipeline."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax.data import make_dataset
from saliency_jax.data import pipeline
from saliency_jax.data import preprocess


def test_inception_scaling_hand_values():
  x = np.array([0, 51, 255], np.uint8).reshape(1, 3, 1)
  np.testing.assert_allclose(preprocess(x)[..., 0], [[-1.0, -0.6, 1.0]], atol=1e-7)
  x16 = np.array([0, 13107, 65535], np.uint16).reshape(3, 1, 1)
  np.testing.assert_allclose(preprocess(x16)[:, 0, 0], [-1.0, -0.6, 1.0], atol=1e-7)
  three = preprocess(x, channels=3)
  assert three.shape == (1, 3, 3) and three.dtype == np.float32
  for c in range(3):
    np.testing.assert_array_equal(three[..., c], preprocess(x)[..., 0])


def test_imagenet_normalization_hand_values():
  x = np.array([0, 255], np.uint8).reshape(2, 1, 1)
  out = preprocess(x, style="imagenet", channels=3)
  want = np.array(
    [
      [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
      [0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225],
    ]
  )
  np.testing.assert_allclose(out[:, 0], want, rtol=1e-6)
  one = preprocess(x, style="imagenet", channels=1)
  np.testing.assert_allclose(one[:, 0, 0], want[:, 0], rtol=1e-6)
  x16 = np.array([65535], np.uint16).reshape(1, 1, 1)
  np.testing.assert_allclose(
    preprocess(x16, style="imagenet", channels=3)[0, 0], want[1], rtol=1e-6
  )


def test_preprocess_jax_matches_numpy_and_traces():
  x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 1)).astype(np.uint8)
  for style, channels in (("inception", 1), ("inception", 3), ("imagenet", 3)):
    ref = preprocess(x, style=style, channels=channels)
    got = jax.jit(lambda a: preprocess(a, style=style, channels=channels))(jnp.asarray(x))
    assert isinstance(got, jax.Array) and got.shape == (2, 5, 7, channels)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=1e-6)


def test_preprocess_rejects_bad_input():
  with pytest.raises(TypeError, match="uint8 or uint16"):
    preprocess(np.zeros((4, 4, 1), np.float32))
  with pytest.raises(ValueError, match="grayscale"):
    preprocess(np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match="channels"):
    preprocess(np.zeros((4, 4, 1), np.uint8), style="imagenet", channels=2)
  with pytest.raises(ValueError, match="style"):
    preprocess(np.zeros((4, 4, 1), np.uint8), style="vgg")


def _source(n, size=6):
  """Examples whose image value and mask encode their index, so batches can be traced back."""
  examples = []
  for i in range(n):
    mask = np.zeros((size, size, 1), np.uint8)
    mask[i % size, 0] = 1
    examples.append(
      {
        "id": f"ex{i}".encode(),
        "image": np.full((size, size, 1), i, np.uint8),
        "label": i % 2,
        "mask": mask,
        "boxes": np.zeros((0, 4), np.float32),
      }
    )
  return examples


def _indices(ds, num_batches=None):
  batches = ds if num_batches is None else itertools.islice(iter(ds), num_batches)
  return [b["index"].tolist() for b in batches]


def test_batches_are_preprocessed_examples():
  ds = make_dataset(
    _source(10), batch_size=4, seed=0, channels=3, num_epochs=1, drop_remainder=False
  )
  batches = list(ds)
  assert [len(b["index"]) for b in batches] == [4, 4, 2]
  seen = np.concatenate([b["index"] for b in batches])
  assert sorted(seen.tolist()) == list(range(10))  # one epoch: every example once
  for b in batches:
    assert b["image"].shape == (len(b["index"]), 6, 6, 3) and b["image"].dtype == np.float32
    assert b["index"].dtype == np.int64 and b["label"].dtype == np.int32
    np.testing.assert_allclose(b["image"][:, 0, 0, 0], b["index"] / 127.5 - 1, rtol=1e-6)
    np.testing.assert_array_equal(b["label"], b["index"] % 2)
    assert b["mask"].dtype == bool and b["mask"].shape == (len(b["index"]), 6, 6)
    np.testing.assert_array_equal(np.argwhere(b["mask"])[:, 1], b["index"] % 6)
  dropped = list(make_dataset(_source(10), batch_size=4, seed=0, num_epochs=1))
  assert [len(b["index"]) for b in dropped] == [4, 4]


def test_seeded_shuffle_is_reproducible_and_reshuffles_each_epoch():
  a = _indices(make_dataset(_source(12), batch_size=12, seed=3), 3)
  b = _indices(make_dataset(_source(12), batch_size=12, seed=3), 3)
  c = _indices(make_dataset(_source(12), batch_size=12, seed=4), 1)
  assert a == b
  assert a[0] != c[0]
  assert a[0] != list(range(12))
  assert sorted(a[1]) == list(range(12)) and a[1] != a[0]  # epoch 2: same set, new order
  unshuffled = _indices(make_dataset(_source(5), batch_size=5, shuffle=False), 2)
  assert unshuffled == [list(range(5))] * 2


def test_iterator_state_resumes_at_the_same_batch():
  def fresh():
    return make_dataset(_source(11), batch_size=3, seed=7)

  it = iter(fresh())
  for _ in range(5):  # crosses an epoch boundary (11 examples, batches of 3)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = iter(fresh())
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["index"], want["index"])
    np.testing.assert_array_equal(got["image"], want["image"])


def test_shards_are_disjoint_and_cover_the_data():
  n = 14
  shards = [
    np.concatenate(
      _indices(
        make_dataset(
          _source(n),
          batch_size=1,
          seed=1,
          num_epochs=1,
          drop_remainder=False,
          shard_index=k,
          shard_count=3,
        )
      )
    )
    for k in range(3)
  ]
  assert sorted(np.concatenate(shards).tolist()) == list(range(n))
  assert [len(s) for s in shards] == [5, 5, 4]
  # drop_remainder: equal shards, so every process runs the same number of steps.
  equal = [
    np.concatenate(
      _indices(
        make_dataset(_source(n), batch_size=2, seed=1, num_epochs=1, shard_index=k, shard_count=3)
      )
    )
    for k in range(3)
  ]
  assert [len(s) for s in equal] == [4, 4, 4]
  assert len(set(np.concatenate(equal).tolist())) == 12
  # One process (this test): shard_by_process reads everything.
  assert jax.process_count() == 1
  alone = np.concatenate(_indices(make_dataset(_source(n), batch_size=1, num_epochs=1)))
  assert sorted(alone.tolist()) == list(range(n))


def test_shard_indices_and_bad_arguments():
  assert pipeline.shard_indices(10, 1, 4, equal_sizes=True) == slice(1, 8, 4)
  assert list(range(10)[pipeline.shard_indices(10, 1, 4, equal_sizes=False)]) == [1, 5, 9]
  with pytest.raises(ValueError):
    pipeline.shard_indices(10, 4, 4, equal_sizes=True)
  with pytest.raises(ValueError, match="both"):
    make_dataset(_source(4), batch_size=2, shard_index=0)
  with pytest.raises(ValueError, match="empty"):
    make_dataset(_source(2), batch_size=1, shard_index=0, shard_count=3)
  with pytest.raises(ValueError, match="batch_size"):
    make_dataset(_source(4), batch_size=0)


@pytest.mark.parametrize("hosts", [2, 3])
def test_hosts_together_read_the_global_batches_of_one_process(hosts):
  # Global batch k of one process, split in host order: what hosts' batches k make together
  # (the mesh puts host 0's rows first), over several epochs (11 examples, not a multiple).
  local = 2
  one = _indices(
    make_dataset(_source(11), batch_size=local * hosts, seed=5, shard_by_process=False), 9
  )
  parts = [
    _indices(
      make_dataset(_source(11), batch_size=local, seed=5, shard_index=h, shard_count=hosts), 9
    )
    for h in range(hosts)
  ]
  together = [sum((parts[h][k] for h in range(hosts)), []) for k in range(9)]
  assert together == one
  # A host resumes its part from a checkpointed iterator state, as training does.
  it = iter(make_dataset(_source(11), batch_size=local, seed=5, shard_index=1, shard_count=hosts))
  for _ in range(4):
    next(it)
  resumed = iter(
    make_dataset(_source(11), batch_size=local, seed=5, shard_index=1, shard_count=hosts)
  )
  resumed.set_state(it.get_state())
  assert [next(resumed)["index"].tolist() for _ in range(3)] == parts[1][4:7]
