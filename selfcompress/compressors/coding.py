"""How many bits a layer's codes take entropy-coded, as tensors in the step.

A compressor with `storage="entropy"` stores its layer's integer codes with
a per-layer static model (frequency table) and an entropy coder
(`selfcompress.entropy`). The exact coded size comes from running the coder
(`selfcompress.size()`); the training step needs it as tensors, every step:
`bits` gives the codes' ideal length under their own histogram,
`sum_k n_k * -log2(n_k / N)` (or under 8-bit frequencies, if those with
their smaller table cost less, as the coder chooses), plus the stream's
header, frequency table and lane states as `selfcompress.entropy` writes
them. The coder writes within a few bytes of it (its quantised frequencies
and final state).

Codes are binned on a fixed grid of `2 * HALF_RANGE` integers centred on
zero (a static shape inside the compiled step); codes beyond it (bit depths
above `log2(HALF_RANGE) + 1`) are counted at its edge.
"""

import math

from keras import ops

from selfcompress import entropy

#: Codes from -HALF_RANGE to HALF_RANGE - 1 are binned exactly.
HALF_RANGE = 2048
#: The stream's fixed part: the alphabet's start and range and the
#: frequency precision (`selfcompress.entropy`'s header).
HEADER_BITS = 5 * 8
#: Bits per entry of the frequency table, one per code of the alphabet's
#: range: `selfcompress.entropy` writes 8-bit frequencies (total 2^8) or,
#: when that costs less overall (many distinct codes, or many codes), 16-bit
#: ones.
ENTRY_BITS = 8
WIDE_ENTRY_BITS = 16

_LN2 = math.log(2.0)


def bits(values, weight):
  """The ideal coded length in bits of a layer's codes, table included, as
  a scalar tensor without gradient.

  Args:
    values: the codes, or their values before rounding (rounded here), any
      shape.
    weight: how much each code counts, broadcastable to `values`: 1 for a
      stored code, 0 for one that is not stored (dead channel or input),
      fractions where the accounting counts a channel's codes by its share
      of alive inputs.
  """
  n_bins = 2 * HALF_RANGE
  x = ops.clip(ops.reshape(ops.stop_gradient(values), (-1,)), -HALF_RANGE,
               HALF_RANGE - 1)
  w = ops.stop_gradient(ops.reshape(
      ops.broadcast_to(weight, ops.shape(values)), (-1,)))
  total = ops.maximum(ops.sum(w), 1.0)
  codes = ops.cast(ops.round(x), "int32") + HALF_RANGE
  counts = ops.segment_sum(w, codes, num_segments=n_bins)
  used = ops.greater(counts, 0.0)
  index = ops.arange(n_bins, dtype="float32")
  lo = ops.min(ops.where(used, index, float(n_bins)))
  hi = ops.max(ops.where(used, index, -1.0))
  lanes = ops.ceil(ops.sum(ops.cast(ops.greater(w, 0.0), "float32"))
                   / entropy.LANE_SYMBOLS)
  fixed = HEADER_BITS + 8 * entropy.STATE_BYTES * lanes
  # The coder takes the cheaper of 8-bit frequencies and 16-bit ones
  # (about the histogram's own, at twice the table). 8-bit ones are
  # integers summing to 2^8, at least 1 for each code that occurs: about
  # `max(lam * count, 1)`, with `lam` found by water-filling (the codes at
  # 1 leave the rest fewer slots). More than 2^8 codes do not fit.
  slots = 2.0 ** ENTRY_BITS
  lam = slots / total
  for _ in range(4):
    big = ops.logical_and(used, ops.greater_equal(counts * lam, 1.0))
    ones = ops.sum(ops.cast(ops.logical_and(used, ops.logical_not(big)),
                            "float32"))
    lam = ops.maximum(slots - ones, 1.0) / ops.maximum(
        ops.sum(ops.where(big, counts, 0.0)), 1.0)
  narrow = ops.where(used, ops.maximum(counts * lam, 1.0) / slots, 0.0)
  fits = ops.less_equal(ops.sum(ops.cast(used, "float32")), slots)
  span = hi - lo + 1.0
  wide = (ops.sum(counts * _information(counts, total))
          + WIDE_ENTRY_BITS * span)
  coded = ops.where(fits, ops.minimum(
      ops.sum(counts * _information(narrow, 1.0)) + ENTRY_BITS * span,
      wide), wide)
  return ops.where(ops.greater(hi, -1.0), coded + fixed, 0.0)


def _information(counts, total):
  """`-log2(counts / total)` where counts > 0, else 0."""
  p = counts / total
  return ops.where(ops.greater(counts, 0.0),
                   -ops.log(ops.maximum(p, 1e-30)) / _LN2, 0.0)
