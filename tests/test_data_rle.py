"""Tests of the SIIM relative column-major RLE (saliency_jax.data.rle)."""

import numpy as np
import pytest

from saliency_jax.data import rle


def reference_rle2mask(rle_string, width, height):
  """The SIIM competition's mask_functions.rle2mask, loop for loop.

  Returns [width, height]; the competition transposes it to get the image.
  """
  mask = np.zeros(width * height)
  array = np.asarray([int(x) for x in rle_string.split()])
  starts, lengths = array[0::2], array[1::2]
  current_position = 0
  for index, start in enumerate(starts):
    current_position += start
    mask[current_position : current_position + lengths[index]] = 255
    current_position += lengths[index]
  return mask.reshape(width, height)


def reference_mask2rle(img, width, height):
  """The competition's mask_functions.mask2rle (img indexed [x][y], 255 = in).

  Like the original it never emits a run that reaches the last pixel.
  """
  out = []
  last_color = 0
  current_pixel = 0
  run_start = -1
  run_length = 0
  for x in range(width):
    for y in range(height):
      current_color = img[x][y]
      if current_color != last_color:
        if current_color == 255:
          run_start = current_pixel
          run_length = 1
        else:
          out.append(str(run_start))
          out.append(str(run_length))
          run_start = -1
          run_length = 0
          current_pixel = 0
      elif run_start > -1:
        run_length += 1
      last_color = current_color
      current_pixel += 1
  return " ".join(out)


# A 4-row x 3-column image, worked by hand:
#   row 0: 0 1 0
#   row 1: 1 1 0
#   row 2: 1 0 0
#   row 3: 0 0 1
# Column-major pixel numbers (x * 4 + y): column 0 is 0..3, column 1 is 4..7,
# column 2 is 8..11. Inside: 1, 2 | 4, 5 | 11. Runs (start, length):
# (1, 2), (4, 2), (11, 1); relative starts: 1, 4 - 3 = 1, 11 - 6 = 5.
HAND_MASK = np.array([[0, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1]], bool)
HAND_RLE = "1 2 1 2 5 1"


def test_hand_worked_example():
  np.testing.assert_array_equal(rle.rle_decode(HAND_RLE, 4, 3), HAND_MASK)
  assert rle.rle_encode(HAND_MASK) == HAND_RLE
  np.testing.assert_array_equal(rle.rle_runs(HAND_RLE, 4, 3), [[1, 2], [4, 2], [11, 1]])


def test_competition_readme_example_lands_in_columns():
  # From the competition's description: "387620 23 996 33 ..." on 1024x1024.
  mask = rle.rle_decode("387620 23 996 33", 1024, 1024)
  # 387620 = 378 * 1024 + 548: column 378, rows 548..570.
  expected = np.zeros((1024, 1024), bool)
  expected[548:571, 378] = True
  # next start 387620 + 23 + 996 = 388639 = 379 * 1024 + 543: rows 543..575.
  expected[543:576, 379] = True
  np.testing.assert_array_equal(mask, expected)


def test_empty():
  for empty in ("-1", " -1", "", "  "):
    assert not rle.rle_decode(empty, 5, 7).any()
    assert rle.rle_decode(empty, 5, 7).shape == (5, 7)
  assert rle.rle_encode(np.zeros((5, 7))) == "-1"


@pytest.mark.parametrize(
  "shape,density", [((7, 5), 0.3), ((5, 9), 0.7), ((16, 16), 0.05), ((3, 1), 0.5)]
)
def test_roundtrip_and_reference(shape, density):
  rng = np.random.default_rng(sum(shape))
  for _ in range(20):
    mask = rng.random(shape) < density
    encoded = rle.rle_encode(mask)
    np.testing.assert_array_equal(rle.rle_decode(encoded, *shape), mask)
    height, width = shape
    if mask.any():
      # Decoder equals the competition's rle2mask(...).T.
      np.testing.assert_array_equal(reference_rle2mask(encoded, width, height).T == 255, mask)
    if not mask[-1, -1]:
      # The competition's encoder (which drops a run touching the last pixel)
      # is called on the transposed 255-mask.
      ref = reference_mask2rle((mask.T * 255).astype(int), width, height)
      assert encoded == (ref or "-1")


def test_run_touching_last_pixel_is_kept():
  mask = np.zeros((3, 4), bool)
  mask[1:, 3] = True  # pixels 3*3+1, 3*3+2 = 10, 11 (the last)
  assert rle.rle_encode(mask) == "10 2"
  np.testing.assert_array_equal(rle.rle_decode("10 2", 3, 4), mask)


def test_run_past_image():
  assert rle.rle_decode("10 2", 3, 4).sum() == 2  # exactly fits 12 pixels
  with pytest.raises(rle.RleError, match="13") as info:
    rle.rle_decode("10 3", 3, 4)
  assert info.value.reason == "past_image"
  # Relative starts accumulate: 5 + 3 + 4 + 1 = 13 > 12.
  with pytest.raises(rle.RleError) as info:
    rle.rle_decode("5 3 4 1", 3, 4)
  assert info.value.reason == "past_image"


@pytest.mark.parametrize("bad", ["1 2 3", "a 2", "1.5 2", "-2 3", "2 -1"])
def test_malformed(bad):
  with pytest.raises(rle.RleError) as info:
    rle.rle_decode(bad, 4, 4)
  assert info.value.reason == "malformed"


def test_union_of_rows():
  a = np.zeros((6, 5), bool)
  a[1:3, 1] = True
  b = np.zeros((6, 5), bool)
  b[2:5, 1] = True  # overlaps a
  b[0, 4] = True
  union = rle.rle_decode_union([rle.rle_encode(a), "-1", rle.rle_encode(b)], 6, 5)
  np.testing.assert_array_equal(union, a | b)


def test_encode_rejects_non_2d():
  with pytest.raises(ValueError):
    rle.rle_encode(np.zeros((2, 2, 1)))
