"""Packing integer weight codes at each channel's bit depth.

All of a model's codes go in one bit stream: every weight, in the order it is
stored, takes the bit depth `b` of its output channel (two's complement, most
significant bit first, no padding between weights or kernels); dead
channels' weights take 0 bits. One stream for the whole model keeps the
SavedModel's fixed cost from growing with the layers: its codes are one
variable, decoded by one subgraph.

Unpacking is vectorised over every weight at once: a weight's first bit is
the running sum of the widths before it, and its `b <= MAX_BITS` bits lie
within three bytes, so it is a gather, a shift and a mask. NumPy writes the
stream (`pack`) and Keras ops read it (`unpack`): one function decodes
arrays here and, traced, the exported SavedModel's weights once at load
(`selfcompress.exporting.serving_models`).
"""

import numpy as np
from keras import ops

MAX_BITS = 16  # what `unpack` reads: a code within three bytes


def pack(codes, widths):
  """Packs integer `codes` at `widths` bits each (same shape, or a
  broadcastable one). A 0-bit code must be 0 and takes no space.

  Returns:
    The stream, as `ceil(sum(widths) / 8)` uint8 bytes.

  Raises:
    ValueError: a width is outside [0, MAX_BITS], or a code does not fit its
      width.
  """
  codes = np.asarray(codes, np.int64)
  widths = np.broadcast_to(np.asarray(widths, np.int64), codes.shape)
  codes, widths = codes.reshape(-1), widths.reshape(-1)
  if widths.size and (widths.min() < 0 or widths.max() > MAX_BITS):
    raise ValueError(f"Bit depths must lie in [0, {MAX_BITS}]; received "
                     f"[{widths.min()}, {widths.max()}].")
  if np.any(codes[widths == 0]):
    raise ValueError("A 0-bit (dead) channel has non-zero codes.")
  half = np.left_shift(1, widths) >> 1  # 2^(b-1), and 0 for b = 0
  outside = ((codes < -half) | (codes >= np.maximum(half, 1))) & (widths > 0)
  if np.any(outside):
    i = np.flatnonzero(outside)[0]
    raise ValueError(f"Code {codes[i]} falls outside the range of {widths[i]}-"
                     f"bit codes, [{-half[i]}, {half[i] - 1}].")
  ends = np.cumsum(widths)
  starts = ends - widths
  stream = np.zeros(int(ends[-1]) if ends.size else 0, np.uint8)
  for j in range(int(widths.max(initial=0))):  # bit j of every code
    has = widths > j
    stream[starts[has] + j] = (codes[has] >> (widths[has] - 1 - j)) & 1
  return np.packbits(stream)


def unpack(data, widths, take=ops.take):
  """The codes `pack` wrote into the stream `data` at `widths` bits each.

  Keras ops, so it runs on arrays and, traced, in a graph.

  Args:
    data: the uint8 stream, a 1-D array or tensor.
    widths: each code's width (0 to MAX_BITS), a 1-D integer array or tensor.
    take: `take(params, indices)`, a gather along axis 0 (given non-negative
      indices). The SavedModel passes TensorFlow's: Keras' also wraps
      negative indices, a dozen more nodes stored in the graph.

  Returns:
    The codes, an int32 tensor shaped like `widths`.
  """
  # Positions in bits need int64 beyond 2^31 bits (256 MB of codes).
  size = int(data.shape[0])
  index = "int64" if 8 * (size + 3) >= 2 ** 31 else "int32"
  widths = ops.cast(widths, "int32")
  wide = ops.cast(widths, index)
  starts = ops.cumsum(wide, axis=0) - wide
  # Each byte with the two after it (zeros past the end, where a code's
  # last bytes, and the start of trailing 0-bit codes, may lie): a code's
  # bits are within the 24 from its first byte on.
  data = ops.pad(ops.cast(data, "int32"), [(0, 3)])
  words = (ops.slice(data, [0], [size + 1]) * 65536
           + ops.slice(data, [1], [size + 1]) * 256
           + ops.slice(data, [2], [size + 1]))
  word = take(words, ops.right_shift(starts, 3))
  skip = ops.cast(ops.bitwise_and(starts, 7), "int32")
  top = ops.left_shift(ops.ones_like(widths), widths)  # 2^b
  values = ops.bitwise_and(ops.right_shift(word, 24 - skip - widths), top - 1)
  # Two's complement: subtract 2^b where the top one of the b bits is set.
  return values - ops.bitwise_and(values * 2, top)
