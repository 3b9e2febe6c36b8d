import numpy as np
import pytest

from selfcompress import packing


def _unpack_slowly(data, widths):
  """The reference: the stream read bit by bit."""
  stream = np.unpackbits(data)
  codes, at = [], 0
  for w in widths:
    value = int("".join(map(str, stream[at:at + w])) or "0", 2)
    codes.append(value - (1 << w) if w and value >= 1 << (w - 1) else value)
    at += w
  return np.array(codes, np.int64)


@pytest.mark.parametrize("shape", [(7, 5), (3, 3, 4, 6), (1, 1, 3), (0, 4)])
def test_round_trip_is_exact_at_every_bit_depth(shape):
  rng = np.random.default_rng(0)
  bits = rng.integers(0, packing.MAX_BITS + 1, shape[-1])
  bits[0] = 1
  bits[-1] = packing.MAX_BITS
  low, high = -(1 << (bits - 1).clip(0)), (1 << (bits - 1).clip(0)) - 1
  codes = rng.integers(low, high + 1, size=shape)
  codes[..., bits == 0] = 0
  codes[..., -1] = np.where(np.arange(codes[..., -1].size).reshape(
      codes[..., -1].shape) % 2, high[-1], low[-1])  # both extremes
  widths = np.broadcast_to(bits, shape)
  data = packing.pack(codes, bits)
  # One stream, no padding but the last byte's.
  assert data.dtype == np.uint8 and data.size == -(-int(widths.sum()) // 8)
  np.testing.assert_array_equal(_unpack_slowly(data, widths.reshape(-1)),
                                codes.reshape(-1))
  unpacked = np.asarray(packing.unpack(data, widths.reshape(-1)))
  assert unpacked.dtype == np.int32
  np.testing.assert_array_equal(unpacked, codes.reshape(-1))


def test_codes_straddle_bytes_and_trailing_zero_widths_read_zero():
  widths = np.array([3, 16, 7, 1, 0, 16, 0, 0])
  codes = np.array([-4, -32768, 63, -1, 0, 32767, 0, 0])
  data = packing.pack(codes, widths)
  assert data.size == 6
  np.testing.assert_array_equal(packing.unpack(data, widths), codes)
  # A custom gather (the SavedModel passes TensorFlow's) reads the same.
  np.testing.assert_array_equal(
      packing.unpack(data, widths, take=lambda x, i: np.take(x, i)), codes)


def test_out_of_range_codes_and_live_dead_channels_are_rejected():
  with pytest.raises(ValueError, match="outside"):
    packing.pack(np.array([[2]]), [2])
  with pytest.raises(ValueError, match="outside"):
    packing.pack(np.array([[-3]]), [2])
  with pytest.raises(ValueError, match="dead"):
    packing.pack(np.array([[1]]), [0])
  with pytest.raises(ValueError, match="Bit depths"):
    packing.pack(np.array([[1]]), [packing.MAX_BITS + 1])


def test_the_module_docstring_names_what_exists():
  """The functions the docstring sends readers to, "(`name`)", exist."""
  import importlib
  import re
  names = re.findall(r"\(`([\w.]+)`\)", packing.__doc__)
  assert len(names) >= 2, names
  for name in names:
    parts = name.split(".")
    if len(parts) == 1:
      assert callable(getattr(packing, name)), name
      continue
    for i in range(len(parts) - 1, 0, -1):  # the longest importable module
      try:
        obj = importlib.import_module(".".join(parts[:i]))
        break
      except ImportError:
        continue
    for attr in parts[i:]:
      obj = getattr(obj, attr)
    assert callable(obj), name
