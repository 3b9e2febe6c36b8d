"""Storage size of a pruned float model, and its uniform quantisation.

A pruned kernel is stored sparsely as (value, index) pairs with relative
indexing (Han, Mao & Dally, "Deep Compression", ICLR 2016): each kept weight
stores the gap to the previous kept weight (in row-major order) in `g` bits;
a gap of more than `2**g` positions needs zero-valued filler entries, each
costing a value and an index. `g` is chosen per kernel to minimise its size,
and a kernel is stored dense (no index) when that is smaller.
Values take `value_bits` (32 for float32, fewer after `quantize_uniform`,
which adds one float32 scale per kernel). Every other parameter (biases,
normalisation) counts 32 bits. 1 KB = 1000 bytes, as in `accounting`.

This is a different storage rule from the self-compressing layers' (which
store whole channels at learnt bit depths, see `selfcompress.accounting`),
so it has its own function; both count every stored bit.
"""

import dataclasses

import numpy as np
from keras import ops

from selfcompress.pruning import masking

FLOAT_BITS = 32
MAX_GAP_BITS = 16


@dataclasses.dataclass(frozen=True)
class SparseSize:
  """Bits of a pruned model: kept values, their indices, everything else;
  `float_bits` is the dense float32 model's size."""
  value_bits: int
  weights_kept: int
  weights_total: int
  values: int
  index: int
  other: int
  float_bits: int

  @property
  def bits(self):
    return self.values + self.index + self.other

  @property
  def kb(self):
    return self.bits / 8000

  @property
  def compression_ratio(self):
    return self.float_bits / self.bits


def relative_index_bits(keep, value_bits):
  """(value bits, index bits) of one kernel's kept entries, best gap width.

  Returns `(entries * value_bits, entries * gap_bits)` for the gap width that
  minimises their sum, where entries = kept weights + fillers, or
  `(size * value_bits, 0)` if storing the kernel dense is smaller.
  """
  keep = np.asarray(keep).ravel()
  positions = np.flatnonzero(keep)
  if positions.size == 0:
    return 0, 0
  gaps = np.diff(positions, prepend=-1)  # >= 1
  best = (keep.size * value_bits, 0)
  for g in range(1, MAX_GAP_BITS + 1):
    fillers = int(np.sum((gaps - 1) // (1 << g)))
    entries = positions.size + fillers
    cost = (entries * value_bits, entries * g)
    if sum(cost) < sum(best):
      best = cost
  return best


def sparse_size(model, value_bits=FLOAT_BITS, mask=None):
  """The `SparseSize` of `model` (with attached masks) at `value_bits`, or
  the size it would have with `mask` instead of its own."""
  if mask is None:
    mask = masking.mask_of(model)
  kernel_ids = {id(l.kernel) for l in masking.prunable(model)}
  mask_ids = {id(getattr(l, masking.MASK_NAME)) for l in masking.prunable(model)}
  values = index = 0
  for _, keep in mask.items():
    v, i = relative_index_bits(keep, value_bits)
    values, index = values + v, index + i
  params = sum(FLOAT_BITS * int(np.prod(v.shape)) for v in model.weights
               if id(v) not in kernel_ids | mask_ids)
  scales = FLOAT_BITS * len(mask) if value_bits != FLOAT_BITS else 0
  return SparseSize(value_bits=value_bits, weights_kept=mask.num_remaining,
                    weights_total=mask.num_total, values=values, index=index,
                    other=params + scales,
                    float_bits=FLOAT_BITS * mask.num_total + params)


def quantize_uniform(model, bits):
  """Rounds every prunable kernel to a symmetric uniform grid of `bits` bits
  (`2**(bits-1) - 1` levels each side of 0, scale `max|w|` per kernel), in
  place. Pruned weights stay 0."""
  if not isinstance(bits, int) or bits < 2:
    raise ValueError(f"bits must be an integer >= 2. Received: bits={bits!r}")
  levels = 2 ** (bits - 1) - 1
  for layer in masking.prunable(model):
    w = ops.convert_to_numpy(layer.kernel)
    scale = np.abs(w).max() / levels
    if scale > 0:
      layer.kernel.assign(np.round(w / scale) * scale)
