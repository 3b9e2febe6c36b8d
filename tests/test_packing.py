import numpy as np
import pytest

from selfcompress import packing


@pytest.mark.parametrize("shape", [(7, 5), (3, 3, 4, 6), (1, 1, 3)])
def test_round_trip_is_exact_at_every_bit_depth(shape):
  rng = np.random.default_rng(0)
  bits = rng.integers(0, 9, shape[-1])
  bits[0] = 1
  low, high = -(1 << (bits - 1).clip(0)), (1 << (bits - 1).clip(0)) - 1
  codes = rng.integers(low, high + 1, size=shape)
  codes[..., bits == 0] = 0
  packed = packing.pack(codes, bits)
  np.testing.assert_array_equal(packing.unpack(packed), codes)
  per_channel = int(np.prod(shape[:-1]))
  assert packed.nbytes == sum(
      -(-int((bits == b).sum()) * per_channel * b // 8)
      for b in set(bits.tolist()) if b)


def test_out_of_range_codes_and_live_dead_channels_are_rejected():
  with pytest.raises(ValueError, match="outside"):
    packing.pack(np.array([[2]]), [2])
  with pytest.raises(ValueError, match="dead"):
    packing.pack(np.array([[1]]), [0])


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
